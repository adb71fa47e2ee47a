"""Read one array of an ``.npz`` file, fast and in big steps.

``np.load(f)["probabilities"]`` reads nnU-Net's compressed npz through ``zipfile`` in 4 KiB/256 KiB steps of
Python code, holding the GIL most of the time. This reader inflates the member's raw deflate stream itself in
2 MiB steps straight into the destination array (``zlib`` releases the GIL while inflating and checksumming),
so a background thread can read the next case while the current one is reduced, and checks the CRC-32 like
``zipfile``. The result is identical to ``np.load``; anything unusual (encryption, other compression, object
arrays, .npy format 3) falls back to ``np.load``.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Sequence, Tuple

import numpy as np

STEP = 2 << 20       # bytes of output per inflate call
IN_STEP = 1 << 20    # bytes of compressed input read at a time


class NpzDamaged(ValueError):
    pass


class _Stream:
    def __init__(self, f, size: int, deflated: bool):
        self.f, self.left, self.pending = f, size, b""
        self.d = zlib.decompressobj(-15) if deflated else None
        self.crc = 0

    def read_into(self, mv: memoryview) -> None:
        pos, n = 0, len(mv)
        while pos < n:
            if self.d is None:
                got = self.f.readinto(mv[pos:pos + min(n - pos, STEP)])
                if not got:
                    raise NpzDamaged("truncated file")
                self.crc = zlib.crc32(mv[pos:pos + got], self.crc)
                self.left -= got
                pos += got
                continue
            if not self.pending:
                if self.left <= 0:
                    raise NpzDamaged("compressed data ends early")
                self.pending = self.f.read(min(self.left, IN_STEP))
                if not self.pending:
                    raise NpzDamaged("truncated file")
                self.left -= len(self.pending)
            out = self.d.decompress(self.pending, min(n - pos, STEP))
            self.pending = self.d.unconsumed_tail
            if out:
                mv[pos:pos + len(out)] = out
                self.crc = zlib.crc32(out, self.crc)
                pos += len(out)
            elif not self.pending and self.left <= 0:
                raise NpzDamaged("compressed data ends early")

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        self.read_into(memoryview(buf))
        return bytes(buf)


def _read_member(path, info: zipfile.ZipInfo) -> np.ndarray:
    from numpy.lib import format as npf
    with open(path, "rb") as f:
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
        arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        if arr.nbytes:
            s.read_into(memoryview(arr.reshape(-1, order="A")).cast("B"))
        if s.d is not None and (s.pending or not s.d.eof):
            # the member must end exactly here
            rest = s.d.decompress(s.pending + f.read(max(s.left, 0)), 1)
            if rest or not s.d.eof:
                raise NpzDamaged("extra data after the array")
        if (s.crc & 0xFFFFFFFF) != info.CRC:
            raise NpzDamaged("CRC-32 mismatch")
        return arr


def read_npz_array(path, keys: Sequence[str]) -> Tuple[str, np.ndarray]:
    """``(key, array)`` of the first of ``keys`` present in the npz file; ``KeyError`` listing the members
    when none is; ``NpzDamaged``/``zipfile.BadZipFile``/``OSError`` for damaged files."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for k in keys:
            if f"{k}.npy" in names:
                info = zf.getinfo(f"{k}.npy")
                break
        else:
            raise KeyError([n[:-4] if n.endswith(".npy") else n for n in names])
    fast = (info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) and not info.flag_bits & 0x1)
    if fast:
        try:
            return k, _read_member(path, info)
        except NotImplementedError:
            pass
    with np.load(path) as z:
        return k, z[k]
