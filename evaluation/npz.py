"""Read one array of an ``.npz`` file, fast and in big steps.

``np.load(f)["probabilities"]`` reads nnU-Net's compressed npz through ``zipfile`` in 4 KiB/256 KiB steps of
Python code, holding the GIL most of the time. This reader inflates the member's raw deflate stream itself in
2 MiB steps straight into the destination array (``zlib`` releases the GIL while inflating and checksumming),
so a background thread can read the next case while the current one is reduced, and checks the CRC-32 like
``zipfile``. The result is identical to ``np.load``; anything unusual (encryption, other compression, object
arrays, .npy format 3) falls back to ``np.load``.

Inflating and checksumming use Intel's ISA-L (the ``isal`` package, a dependency on the platforms it has wheels
for) when it imports: the same deflate format and CRC-32, bit for bit, but inflate is about 1.5x and CRC-32 about
3x faster than zlib. Without it, the standard library's ``zlib`` does the same work.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np

try:
    from isal import isal_zlib as _inflater
    _INFLATE_ERRORS: Tuple[type, ...] = (zlib.error, _inflater.error)
except ImportError:  # pragma: no cover -- platforms without an isal wheel
    _inflater = zlib
    _INFLATE_ERRORS = (zlib.error,)

STEP = 2 << 20       # bytes of output per inflate call
IN_STEP = 1 << 20    # bytes of compressed input read at a time


class NpzDamaged(ValueError):
    pass


class _Stream:
    def __init__(self, f, size: int, deflated: bool):
        self.f, self.left, self.pending = f, size, b""
        self.d = _inflater.decompressobj(-15) if deflated else None
        self.crc = 0

    def read_into(self, mv: memoryview) -> None:
        pos, n = 0, len(mv)
        while pos < n:
            if self.d is None:
                got = self.f.readinto(mv[pos:pos + min(n - pos, STEP)])
                if not got:
                    raise NpzDamaged("truncated file")
                self.crc = _inflater.crc32(mv[pos:pos + got], self.crc)
                self.left -= got
                pos += got
                continue
            # inflate first, even with no new input: an inflater may hold output back from input it has already
            # taken (ISA-L keeps it internally where zlib leaves it in unconsumed_tail)
            try:
                out = self.d.decompress(self.pending, min(n - pos, STEP))
            except _INFLATE_ERRORS as e:
                raise NpzDamaged(f"invalid deflate data ({e})") from None
            self.pending = self.d.unconsumed_tail
            if out:
                mv[pos:pos + len(out)] = out
                self.crc = _inflater.crc32(out, self.crc)
                pos += len(out)
                continue
            if self.d.eof or self.pending or self.left <= 0:  # no output although the stream should go on
                raise NpzDamaged("compressed data ends early")
            self.pending = self.f.read(min(self.left, IN_STEP))
            if not self.pending:
                raise NpzDamaged("truncated file")
            self.left -= len(self.pending)

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        self.read_into(memoryview(buf))
        return bytes(buf)


def _open_member(path, info: zipfile.ZipInfo):
    """``(file, stream, empty array of the member's shape/dtype)``, positioned after the .npy header."""
    from numpy.lib import format as npf
    f = open(path, "rb")
    try:
        f.seek(info.header_offset)
        lh = f.read(30)
        if len(lh) != 30 or lh[:4] != b"PK\x03\x04":
            raise NpzDamaged("bad local file header")
        nlen, xlen = struct.unpack("<HH", lh[26:30])
        f.seek(info.header_offset + 30 + nlen + xlen)
        s = _Stream(f, info.compress_size, info.compress_type == zipfile.ZIP_DEFLATED)
        prefix = s.read(8)
        if prefix[:6] != b"\x93NUMPY":
            raise NpzDamaged("not an .npy member")
        major = prefix[6]
        if major == 1:
            hl_bytes = s.read(2)
            hlen = struct.unpack("<H", hl_bytes)[0]
            parse = npf.read_array_header_1_0
        elif major == 2:
            hl_bytes = s.read(4)
            hlen = struct.unpack("<I", hl_bytes)[0]
            parse = npf.read_array_header_2_0
        else:
            raise NotImplementedError
        header = s.read(hlen)
        shape, fortran, dtype = parse(io.BytesIO(hl_bytes + header))
        if dtype.hasobject:
            raise NotImplementedError
        return f, s, np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    except BaseException:
        f.close()
        raise


def _fill(f, s: _Stream, info: zipfile.ZipInfo, arr: np.ndarray, progress=None, cancelled=None) -> None:
    """Inflate the array data into ``arr``; ``progress(bytes done)`` after every step; checks end and CRC."""
    mv = memoryview(arr.reshape(-1, order="A")).cast("B")
    n = len(mv)
    pos = 0
    while pos < n:
        if cancelled is not None and cancelled():
            return
        step = min(STEP, n - pos)
        s.read_into(mv[pos:pos + step])
        pos += step
        if progress is not None:
            progress(pos)
    if s.d is not None and (s.pending or not s.d.eof):
        # the member must end exactly here
        try:
            rest = s.d.decompress(s.pending + f.read(max(s.left, 0)), 1)
        except _INFLATE_ERRORS as e:
            raise NpzDamaged(f"invalid deflate data ({e})") from None
        if rest or not s.d.eof:
            raise NpzDamaged("extra data after the array")
    if (s.crc & 0xFFFFFFFF) != info.CRC:
        raise NpzDamaged("CRC-32 mismatch")


def _member_info(path, keys: Sequence[str]):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for k in keys:
            if f"{k}.npy" in names:
                return k, zf.getinfo(f"{k}.npy")
    raise KeyError([n[:-4] if n.endswith(".npy") else n for n in names])


def _open_fast(path, info: zipfile.ZipInfo):
    """``_open_member``'s ``(file, stream, empty array)``, or None when the member needs ``np.load`` (encrypted,
    another compression, object arrays, .npy format 3)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
        return None
    try:
        return _open_member(path, info)
    except NotImplementedError:
        return None


class StreamedArray:
    """An npz member inflated by a background thread into ``.array`` (allocated up front).

    ``wait(c, stop)`` blocks until the elements ``[..., stop)`` of channel ``c`` (first axis) are there, and raises
    the reader's error, if any. Use as a context manager: leaving stops and joins the thread.
    """

    def __init__(self, path, keys: Sequence[str]):
        import threading
        self.key, info = _member_info(path, keys)
        self._thread = None
        self._done = 0
        self._error: Optional[BaseException] = None
        self._cancel = False
        self._cond = threading.Condition()
        opened = _open_fast(path, info)
        if opened is not None:
            f, s, arr = opened
            self.array = arr
            self._total = arr.nbytes
            self._c_order = arr.flags.c_contiguous
            self._thread = threading.Thread(target=self._run, args=(f, s, info), daemon=True)
            self._thread.start()
            return
        with np.load(path) as z:
            self.array = z[self.key]
        self._total = self._done = self.array.nbytes
        self._c_order = True

    def _run(self, f, s, info):
        def progress(done):
            with self._cond:
                self._done = done
                self._cond.notify_all()
        try:
            _fill(f, s, info, self.array, progress, lambda: self._cancel)
        except BaseException as e:  # noqa: BLE001 -- handed to the waiting thread
            with self._cond:
                self._error = e
                self._cond.notify_all()
        finally:
            f.close()

    def wait(self, c: int = -1, stop: int = -1) -> None:
        """Wait for channel ``c`` up to element ``stop`` (defaults: everything)."""
        if self._thread is None:
            return
        a = self.array
        if c < 0 or not self._c_order or a.ndim < 1:
            need = self._total
        else:
            per_channel = a.size // a.shape[0] if a.shape[0] else 0
            need = min(self._total, (c * per_channel + stop) * a.itemsize)
        with self._cond:
            while self._done < need and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._cancel = True
        if self._thread is not None:
            self._thread.join()
        return False


def read_npz_array(path, keys: Sequence[str]) -> Tuple[str, np.ndarray]:
    """``(key, array)`` of the first of ``keys`` present in the npz file; ``KeyError`` listing the members
    when none is; ``NpzDamaged``/``zipfile.BadZipFile``/``zlib.error``/``OSError`` for damaged files."""
    key, info = _member_info(path, keys)
    opened = _open_fast(path, info)
    if opened is not None:
        f, s, arr = opened
        try:
            _fill(f, s, info, arr)
        finally:
            f.close()
        return key, arr
    with np.load(path) as z:
        return key, z[key]
