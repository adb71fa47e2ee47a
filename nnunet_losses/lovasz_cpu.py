"""The Lovász extension and its gradient on CPU, one compiled (numba) pass per row after one radix sort.

The general path (:func:`nnunet_losses.functional.lovasz_extension_autograd`) is ~12 full passes over memory:
sort, gather the errors and the foreground, a cumulative sum, ~6 elementwise kernels for the Jaccard
differences, the dot product, and in backward a scatter through the permutation (plus the error map's own
forward and backward: ``abs`` / ``relu``). Here each float32 row is sorted by an LSD radix sort of its float
bits, carrying in one 64-bit word per voxel the key, the voxel index, the foreground bit and the sign, and ONE
sweep over the sorted words (chunk by chunk, vectorised but for the running count) accumulates the foreground
count, computes Berman's gradient ``g_k`` (:func:`_jaccard`, the operations of
:func:`~nnunet_losses.functional.lovasz_grad`, so the same bits), adds ``m_k g_k`` to the value and writes ``g_k``
times the error map's derivative straight to the voxel's own place: that is the whole Jacobian of the value
w.r.t. the inputs, so backward is a product.

Error maps (``mode``): ``IDENTITY`` (the values are the errors, non-negative), ``ABS`` (``|d|``, Lovász-softmax's
``|y - p|``; derivative ``sign(d)``, 0 at 0 as torch's ``abs``), ``RELU`` (``max(h, 0)``; derivative ``[h > 0]``
as torch's ``relu``), ``HINGE`` (Lovász-hinge on the logits ``x``: ``max(0, x (1 - 2y) + 1)``, the operations of
:func:`~nnunet_losses.functional.hinge_margin`; derivative ``[h > 0] (1 - 2y)``) and ``ABS_DIFF`` (Lovász-softmax on
the probabilities: ``|p - y|``, derivative ``sign(p - y)``). The last two compute their input here, so that no
full-size tensor of it is made, and in ``ABS_DIFF`` the channels before ``first`` (nnU-Net's background) are
skipped without slicing the probabilities (whose slice backward would allocate and fill their whole gradient).

Rows of float64 (tests, gradcheck), rows holding a negative error (``IDENTITY`` only; never a Lovász error) and
rows of ``MAX_ROW`` voxels or more take :func:`_extension_row_ordered` on ``torch.sort``'s order instead.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Tuple

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic
import torch
from torch import Tensor

IDENTITY, ABS, RELU, HINGE, ABS_DIFF = 0, 1, 2, 3, 4
MODES = {"identity": IDENTITY, "abs": ABS, "relu": RELU, "hinge": HINGE, "abs_diff": ABS_DIFF}

#: the radix sort: one MSD pass on key bits 20..30 (exponent and top mantissa bits: ~8 buckets per octave of
#: errors), then each bucket -- small enough to stay in cache -- by two stable LSD passes on key bits 0..19; ~1.5x
#: faster than three LSD passes of 11 bits over the whole row, which each miss the cache on every write
_TOP_SHIFT = 20
_TOP_BUCKETS = 1 << 11
_LOW_BITS = 10
#: voxels per chunk of the final sweep
_SWEEP_CHUNK = 1024
#: buckets up to this size are sorted in place by numba's sort of the words: a word is unique ((key, index) order)
_SMALL_BUCKET = 64
#: a sorted word is ``key << 32 | index << 2 | negative << 1 | foreground``
_KEY_SHIFT = 32
_INDEX_SHIFT = 2
MAX_ROW = 1 << (_KEY_SHIFT - _INDEX_SHIFT)
_MAGNITUDE = 0x7FFFFFFF  # float32 bits without the sign; also the largest key (error 0)
_INF_BITS = 0x7F800000  # above it: NaN


@intrinsic
def _bits_of(typingctx, x):  # pragma: no cover - compiled
    """The IEEE bits of a float32 as uint32 (a register bitcast; a round trip through memory cost ~10%)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return types.uint32(types.float32), codegen


@intrinsic
def _float_of(typingctx, x):  # pragma: no cover - compiled
    """The float32 of IEEE bits held in a uint32 (a register bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def _jaccard(real, intersection, k):  # pragma: no cover - compiled (numba does not trace lines)
    """``J_k = 1 - I / U`` after ``k + 1`` sorted voxels, intersection ``I = G - c_k``, union ``U = I + (k + 1)``
    -- lovasz_grad's operations in the errors' dtype ``real`` (``k + 1 < 2**31``, through int32 so that LLVM
    vectorises the conversion: the same rounding as from int64)."""
    return real(1) - intersection / (intersection + real(np.int32(k + 1)))


@numba.njit(nogil=True, cache=True, inline="always")
def _jaccard_step(real, gts, cumulative, k, previous):  # pragma: no cover - compiled
    """``(J_k, g_k = J_k - J_{k-1})`` after ``k + 1`` sorted voxels of which ``cumulative`` are foreground, ``G =
    gts`` (``cumulative`` already rounded to ``real``, as torch's CPU ``cumsum`` rounds its float64 sum)."""
    jaccard = _jaccard(real, gts - cumulative, k)
    return jaccard, jaccard - previous


@numba.njit(nogil=True, cache=True)
def _sorted_words(values, fg, mode, words, scratch):  # pragma: no cover - compiled
    """Sort one float32 row by decreasing error, stably; returns ``(ok, soft, count, kept, words)``.

    The first ``kept`` words are sorted; the rest are the voxels of error 0 in ``RELU``/``HINGE`` mode, in reverse
    index order (only stored for a soft target): they come last in the stable order, and there the error map's
    derivative is 0 and its product with ``g`` is 0, so only their foreground count matters (ignored voxels, and
    the hinge's margins beyond 1 -- a third of the voxels of the benchmark's random logits, more in a trained
    network; region Lovász 20.4 -> 17.8 ms in one run). In the other modes errors 0 (rare) have the largest key:
    the last MSD bucket, in index order, which needs no sort when it holds nothing else. See :func:`_fill_words`
    for the words.
    """
    ok, soft, count, n_zero = _fill_words(values, fg, mode, words)
    if not ok:
        return False, soft > 0, count, 0, words
    bounds = np.zeros(_TOP_BUCKETS + 1, np.int64)
    kept = _keep_and_count_top_digits(words, mode, bounds, scratch, soft > 0)
    for bucket in range(_TOP_BUCKETS):
        bounds[bucket + 1] += bounds[bucket]
    fill = bounds[:-1].copy()
    for i in range(kept):  # stable MSD scatter
        w = words[i]
        bucket = w >> (_KEY_SHIFT + _TOP_SHIFT)
        scratch[fill[bucket]] = w
        fill[bucket] += 1
    zeros_in_last_bucket = n_zero if kept == words.shape[0] else 0
    counts = np.empty((2, 1 << _LOW_BITS), np.int64)
    for bucket in range(_TOP_BUCKETS):
        start, end = bounds[bucket], bounds[bucket + 1]
        if end - start < 2 or (bucket == _TOP_BUCKETS - 1 and end - start == zeros_in_last_bucket):
            continue  # (a last bucket of errors 0 only is in index order)
        if end - start <= _SMALL_BUCKET:
            scratch[start:end].sort()
        else:
            _sort_bucket_low_bits(scratch[start:end], words[start:end], counts)
    return True, soft > 0, count, kept, scratch


@numba.njit(nogil=True, cache=True)
def _fill_words(values, fg, mode, words):  # pragma: no cover - compiled
    """:func:`_fill_words_of` with ``mode`` a constant in each call, so that every loop is compiled for its mode
    alone (LLVM did not unswitch the loop: its vector loop computed every mode's error and blended them)."""
    if mode == HINGE:
        return _fill_words_of(values, fg, HINGE, words)
    if mode == ABS_DIFF:
        return _fill_words_of(values, fg, ABS_DIFF, words)
    if mode == ABS:
        return _fill_words_of(values, fg, ABS, words)
    if mode == RELU:
        return _fill_words_of(values, fg, RELU, words)
    return _fill_words_of(values, fg, IDENTITY, words)


@numba.njit(nogil=True, cache=True, inline="always")
def _fill_words_of(values, fg, mode, words):  # pragma: no cover - compiled
    """One word per voxel ``i``, ``key << 32 | index << 2 | negative << 1 | foreground``;
    returns ``(ok, n_soft, count, n_zero)``.

    For a non-negative IEEE float the bit pattern orders exactly like the value, so the key
    ``0x7FFFFFFF - magnitude`` ascending is the error descending; dropping the sign bit maps -0.0 to +0.0 (equal)
    and a NaN of either sign to a key below every number (NaN first, as ``torch.sort``). Ascending words are
    (key, index) order: the stable order. ``ok`` is False on a negative value in ``IDENTITY`` mode; ``n_soft``
    counts the values of ``fg`` other than 0 and 1 (then its bit is unused), ``count`` the foreground voxels,
    ``n_zero`` the errors 0 (after ``RELU``/``HINGE``'s clamp).
    Branch-free arithmetic on the data and nothing but ``words[i]`` written, so that LLVM vectorises it (2.5x
    faster than with the digit histogram in the same loop; a data-dependent branch per voxel -- Lovász-softmax's
    differences have random signs -- cost as much as the whole pass).
    """
    n = values.shape[0]
    real = values.dtype.type  # float32
    bits = values.view(np.uint32)
    n_soft = 0
    count = 0
    n_negative = 0
    n_zero = 0
    for i in range(n):
        f = fg[i]
        if mode == HINGE:
            b = _bits_of(values[i] * (real(1) - real(2) * f) + real(1))
        elif mode == ABS_DIFF:
            b = _bits_of(values[i] - f)
        else:
            b = bits[i]
        magnitude = np.int32(b & _MAGNITUDE)
        negative = np.int32(b >> 31)
        if mode != ABS and mode != ABS_DIFF:
            negative_number = negative & np.int32(magnitude > 0) & np.int32(magnitude <= _INF_BITS)
            n_negative += negative_number
            magnitude &= negative_number - 1  # RELU, HINGE: max(h, 0); IDENTITY: only read if there is none
        n_zero += np.int32(magnitude == 0)
        is_fg = np.int32(f == 1)
        n_soft += np.int32(f != 0) & (1 - is_fg)
        count += is_fg
        low = (i << _INDEX_SHIFT) | (negative << 1) | is_fg
        words[i] = (np.int64(_MAGNITUDE - magnitude) << _KEY_SHIFT) | low
    return not (mode == IDENTITY and n_negative), n_soft, count, n_zero


@numba.njit(nogil=True, cache=True)
def _keep_and_count_top_digits(words, mode, top_counts, tail, keep_tail):  # pragma: no cover - compiled
    """Counts of the top key digits; in ``RELU``/``HINGE`` mode also moves the words of error 0 to the end of
    ``tail`` (reverse index order) and the others to the front of ``words`` (in place: ``kept <= i``). Returns
    ``kept``. The dropped words are only stored with ``keep_tail`` (soft targets, whose foreground sum runs over
    them; with a hard target the sweep sets their gradient to 0 by one memset). Branch-free: each word is written
    to both places, and a write that is not its final one is
    overwritten later (at the front by the next kept word, at the back by the next dropped word or, just below the
    dropped block, by the MSD scatter, which fills every position before ``kept``). (Left to the MSD scatter, the
    errors 0 made its last bucket hot: a chain of store-to-load forwards through its position, slower.)"""
    n = words.shape[0]
    if mode != RELU and mode != HINGE:  # ABS: errors 0 are rare, leaving them out cost more than it saved
        for i in range(n):
            top_counts[(words[i] >> (_KEY_SHIFT + _TOP_SHIFT)) + 1] += 1
        return n
    kept = 0
    for i in range(n):
        w = words[i]
        keep = np.int64((w >> _KEY_SHIFT) != _MAGNITUDE)  # key of error 0
        words[kept] = w
        if keep_tail:  # loop-invariant
            tail[n - 1 - i + kept] = w
        top_counts[(w >> (_KEY_SHIFT + _TOP_SHIFT)) + 1] += keep
        kept += keep
    return kept


@numba.njit(nogil=True, cache=True)
def _sort_bucket_low_bits(bucket, tmp, counts):  # pragma: no cover - compiled
    """Stable LSD sort of one MSD bucket (words sharing key bits 20..30) on key bits 0..19, in place."""
    m = bucket.shape[0]
    digit_mask = (1 << _LOW_BITS) - 1
    counts[:] = 0
    for i in range(m):
        w = bucket[i]
        counts[0, (w >> _KEY_SHIFT) & digit_mask] += 1
        counts[1, (w >> (_KEY_SHIFT + _LOW_BITS)) & digit_mask] += 1
    src, dst = bucket, tmp
    moved = 0
    for d in range(2):
        c = counts[d]
        if c.max() == m:  # every word has the same digit here: this pass would not move anything
            continue
        start = 0
        for digit in range(1 << _LOW_BITS):
            k = c[digit]
            c[digit] = start
            start += k
        shift = _KEY_SHIFT + d * _LOW_BITS
        for i in range(m):
            w = src[i]
            digit = (w >> shift) & digit_mask
            dst[c[digit]] = w
            c[digit] += 1
        src, dst = dst, src
        moved += 1
    if moved == 1:  # the result is in tmp
        bucket[:] = tmp


@numba.njit(nogil=True, cache=True, inline="always")
def _index(word):  # pragma: no cover - compiled
    return (word & 0xFFFFFFFF) >> _INDEX_SHIFT


@numba.njit(nogil=True, cache=True, inline="always")
def _error_of(word):  # pragma: no cover - compiled
    """The error (float32) from its key."""
    return _float_of(np.uint32(_MAGNITUDE - (word >> _KEY_SHIFT)))


@numba.njit(nogil=True, cache=True)
def _sorted_foreground_sum(fg, words, kept):  # pragma: no cover - compiled
    """``G`` of soft targets, summed in the sorted order as torch's ``cumsum`` ends (a 0/1 count is exact): the
    sorted words, then the errors 0 in index order (stored reversed after them)."""
    total = 0.0
    for k in range(kept):
        total += fg[_index(words[k])]
    for k in range(words.shape[0] - 1, kept - 1, -1):
        total += fg[_index(words[k])]
    return total


@numba.njit(nogil=True, cache=True, error_model="numpy")  # IEEE division (no zero check: it kept it scalar)
def _extension_row_words(words, kept, fg, soft, count, mode, grad):  # pragma: no cover - compiled
    """Value (float64) of one float32 row from its sorted words; ``grad[i]`` = ``g_k`` x the error map's derivative
    (0 for the errors 0 after the ``kept`` sorted words).

    Chunk by chunk, so that all but the running foreground count is vectorised (LLVM): the count and the
    intersections ``G - c_k`` (a serial integer sum), the Jaccard losses ``J_k`` (one vector division per 8
    voxels instead of a scalar one per voxel) and their differences ``g_k``, the value's dot product and the
    gradients; those are scattered to the voxels' places during the next chunk's count, whose serial chain hides
    the stores' cache misses (a loop of its own after the vector loops waited for them: 0.68 ms per hinge row).
    """
    real = grad.dtype.type  # float32
    gts = real(_sorted_foreground_sum(fg, words, kept) if soft else count)
    intersections = np.empty(_SWEEP_CHUNK, real)
    jaccards = np.empty(_SWEEP_CHUNK + 1, real)  # jaccards[0]: J of the previous chunk's last voxel (J_{-1} = 0)
    steps = np.empty(_SWEEP_CHUNK, real)
    gradients = np.empty((2, _SWEEP_CHUNK), real)  # of this chunk and of the previous one, in turns
    jaccards[0] = 0
    cumulative = 0.0  # soft: float64, rounded to real, as torch's CPU cumsum
    counted = 0  # hard: an integer count (a 1-cycle dependency chain instead of a float addition's 4), exact
    value = 0.0
    if kept < words.shape[0] and not soft:  # hard RELU/HINGE: the errors 0 (words not stored), before the scatter
        grad[:] = 0
    previous, previous_gradients = words[:0], gradients[1]
    for start in range(0, kept, _SWEEP_CHUNK):
        chunk = words[start:min(start + _SWEEP_CHUNK, kept)]
        m = chunk.shape[0]
        n_previous = previous.shape[0]  # _SWEEP_CHUNK >= m, or 0 at the first chunk
        for j in range(m):
            if soft:  # loop-invariant: hoisted
                cumulative += fg[_index(chunk[j])]
                intersections[j] = gts - real(cumulative)
            else:
                counted += chunk[j] & 1
                intersections[j] = gts - real(counted)
            if j < n_previous:
                _store_gradient(previous[j], previous_gradients[j], fg, soft, mode, grad)
        for j in range(m, n_previous):
            _store_gradient(previous[j], previous_gradients[j], fg, soft, mode, grad)
        for j in range(m):
            jaccards[j + 1] = _jaccard(real, intersections[j], start + j)
        mine = gradients[(start // _SWEEP_CHUNK) & 1]
        for j in range(m):
            steps[j] = jaccards[j + 1] - jaccards[j]
            mine[j] = steps[j] * real(_derivative(chunk[j], soft, mode))
        value += _errors_dot_steps(chunk, steps)
        jaccards[0] = jaccards[m]
        previous, previous_gradients = chunk, mine
    for j in range(previous.shape[0]):
        _store_gradient(previous[j], previous_gradients[j], fg, soft, mode, grad)
    if soft:
        for k in range(kept, words.shape[0]):
            grad[_index(words[k])] = 0
    return value


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _errors_dot_steps(words, steps):  # pragma: no cover - compiled
    """``sum_k m_k g_k`` in float64 (exact products of float32s); summed in any order ('reassoc': vectorised), so
    equal to the sequential sum to rounding."""
    total = 0.0
    for j in range(words.shape[0]):
        total += np.float64(_error_of(words[j])) * np.float64(steps[j])
    return total


@numba.njit(nogil=True, cache=True, inline="always")
def _derivative(word, soft, mode):  # pragma: no cover - compiled
    """The error map's derivative at a sorted word, +-1 or 0 (an int32: LLVM vectorises its conversion), without
    a branch on the (random) sign; with the hard hinge's slope ``1 - 2y`` (+-1) folded in. ``g`` times it is
    ``g``, ``-g`` or ``+-0`` exactly."""
    sign_weight = 2 if mode == ABS or mode == ABS_DIFF else 0  # derivative -1 where the difference was negative
    zero_weight = 0 if mode == IDENTITY else 1  # ABS, RELU, HINGE: derivative 0 at error 0
    nonzero = np.int32((word >> _KEY_SHIFT) != _MAGNITUDE)
    derivative = (1 - sign_weight * np.int32((word >> 1) & 1)) * (zero_weight * nonzero + 1 - zero_weight)
    if mode == HINGE and not soft:
        derivative *= 1 - 2 * np.int32(word & 1)
    return np.int32(derivative)


@numba.njit(nogil=True, cache=True, inline="always")
def _store_gradient(word, gradient, fg, soft, mode, grad):  # pragma: no cover - compiled
    """``grad[i]`` = the gradient of the sorted word's voxel ``i`` (the soft hinge: times its slope ``1 - 2y``)."""
    real = grad.dtype.type
    i = _index(word)
    if mode == HINGE and soft:
        grad[i] = gradient * (real(1) - real(2) * fg[i])
    else:
        grad[i] = gradient


@numba.njit(nogil=True, cache=True)
def _extension_row_ordered(values, fg, order, mode, grad):  # pragma: no cover - compiled
    """:func:`_extension_row_words` of one row of any float dtype, on a given permutation (``torch.sort``'s)."""
    real = values.dtype.type
    total = 0.0
    for k in range(order.shape[0]):
        total += fg[order[k]]
    gts = real(total)
    cumulative = 0.0
    previous = real(0)
    value = 0.0
    for k in range(order.shape[0]):
        i = order[k]
        cumulative += fg[i]
        previous, g = _jaccard_step(real, gts, real(cumulative), k, previous)
        v = values[i]
        slope = real(1) - real(2) * fg[i]
        if mode == HINGE:
            v = v * slope + real(1)
        elif mode == ABS_DIFF:
            v = v - fg[i]
        error = abs(v) if mode == ABS or mode == ABS_DIFF else (max(v, real(0)) if mode == RELU or mode == HINGE else v)
        value += np.float64(error) * np.float64(g)
        if mode == IDENTITY or (mode == RELU and v > 0):
            grad[i] = g
        elif mode == HINGE and v > 0:
            grad[i] = g * slope
        elif (mode == ABS or mode == ABS_DIFF) and v != 0:
            grad[i] = g if v > 0 else -g
        else:
            grad[i] = 0
    return value


@numba.njit(nogil=True, cache=True)
def _extension_rows_radix(values, fg, mode, first, grad, out, sorted_ok):  # pragma: no cover - compiled
    """Every float32 row ``(s, k)``, ``k >= first``, of ``(S, C, N)`` on its radix order, into ``out[s, k - first]``;
    rows holding a negative error are left (``sorted_ok``) to the caller. 3-D so that the one-hot target and the
    probabilities are read as they are, channels and all."""
    n = values.shape[2]
    words = np.empty(n, np.int64)
    scratch = np.empty(n, np.int64)
    for s in range(values.shape[0]):
        for k in range(first, values.shape[1]):
            ok, soft, count, kept, ordered = _sorted_words(values[s, k], fg[s, k], mode, words, scratch)
            sorted_ok[s, k - first] = ok
            if ok:
                out[s, k - first] = _extension_row_words(ordered, kept, fg[s, k], soft, count, mode, grad[s, k])


@numba.njit(nogil=True, cache=True)
def _extension_rows_ordered(values, fg, mode, first, rows, orders, grad, out):  # pragma: no cover - compiled
    """Rows ``(s, k) = (rows[j, 0], first + rows[j, 1])`` of ``(S, C, N)`` on the given permutations ``orders[j]``."""
    for j in range(rows.shape[0]):
        s, k = rows[j, 0], first + rows[j, 1]
        out[s, k - first] = _extension_row_ordered(values[s, k], fg[s, k], orders[j], mode, grad[s, k])


@numba.njit(nogil=True, cache=True)
def _radix_orders(values, orders, sorted_ok):  # pragma: no cover - compiled
    n = values.shape[1]
    words = np.empty(n, np.int64)
    scratch = np.empty(n, np.int64)
    no_fg = np.zeros(n, np.float32)
    for r in range(values.shape[0]):
        ok, _, _, _, ordered = _sorted_words(values[r], no_fg, IDENTITY, words, scratch)
        sorted_ok[r] = ok
        if ok:
            for k in range(n):
                orders[r, k] = (ordered[k] & 0xFFFFFFFF) >> _INDEX_SHIFT


def _torch_order(errors: Tensor) -> Tensor:
    return torch.sort(errors, dim=-1, descending=True, stable=True).indices


def sort_order_rows(values: Tensor) -> Tensor:
    """``torch.sort(values, -1, descending=True, stable=True).indices`` of a CPU float32 ``(R, N)`` tensor,
    ``N < MAX_ROW``, by the radix sort (rows holding a negative value by ``torch.sort``)."""
    orders = torch.empty(values.shape, dtype=torch.int64)
    sorted_ok = np.empty(values.shape[0], np.bool_)
    _radix_orders(values.detach().contiguous().numpy(), orders.numpy(), sorted_ok)
    left = torch.from_numpy(np.flatnonzero(~sorted_ok))
    if len(left):
        orders[left] = _torch_order(values[left])
    return orders


def _in_threads(values, fg, mode, first, grad, out, sorted_ok) -> None:
    """:func:`_extension_rows_radix` on all rows, one row per task on ``torch.get_num_threads()`` threads (the
    kernels release the GIL), as torch's own CPU ops would use them; one call on the calling thread when that is 1."""
    n_threads = min(torch.get_num_threads(), out.size)
    if n_threads <= 1:
        _extension_rows_radix(values, fg, mode, first, grad, out, sorted_ok)
        return
    # a pool per call: ~0.1 ms, and no threads left behind in a process that nnU-Net's data loaders fork
    with ThreadPoolExecutor(n_threads) as pool:
        tasks = []
        for s in range(out.shape[0]):
            for j in range(out.shape[1]):
                row, k, o = slice(s, s + 1), slice(first + j, first + j + 1), slice(j, j + 1)
                tasks.append(pool.submit(_extension_rows_radix, values[row, k], fg[row, k], mode, 0, grad[row, k],
                                         out[row, o], sorted_ok[row, o]))
        for task in tasks:
            task.result()


def _rows(t: Tensor, n_channels: int) -> np.ndarray:
    """``(S, C, N)`` numpy view of a ``(..., C, N)`` tensor (a copy only where torch cannot reshape to a view)."""
    return t.detach().reshape(-1, n_channels, t.shape[-1]).numpy()


def _torch_errors(values: Tensor, fg: Tensor, mode: int) -> Tensor:
    """The errors of a mode, computed by torch in the same operations (for ``torch.sort``'s order)."""
    if mode == HINGE:
        return torch.relu(values * (1 - 2 * fg) + 1)
    if mode == ABS_DIFF:
        return torch.abs(values - fg)
    return values.abs() if mode == ABS else (values.relu() if mode == RELU else values)


def extension_and_gradient(values: Tensor, fg: Tensor, mode: int, first: int = 0) -> Tuple[Tensor, Tensor]:
    """Lovász extension of the errors ``mode(values, fg)`` of the rows of CPU ``(..., C, N)`` values in channels
    ``first..C-1`` (all rows of ``(..., N)`` when ``first = 0``), ``N < MAX_ROW``, and its gradient w.r.t. the
    values: shapes ``(..., C - first)`` and ``values.shape`` (0 in the channels before ``first``)."""
    n_channels = values.shape[-2] if values.ndim >= 2 else 1
    v = _rows(values.contiguous(), n_channels)
    f = _rows(fg, n_channels)
    grad = np.empty_like(v)
    grad[:, :first] = 0
    out = np.empty((v.shape[0], n_channels - first), np.float64)
    sorted_ok = np.zeros(out.shape, np.bool_)
    if v.dtype == np.float32:
        _in_threads(v, f, mode, first, grad, out, sorted_ok)
    left = np.argwhere(~sorted_ok)
    if len(left):
        rows = (left[:, 0], first + left[:, 1])
        errors = _torch_errors(torch.from_numpy(v[rows]), torch.from_numpy(np.ascontiguousarray(f[rows])), mode)
        _extension_rows_ordered(v, f, mode, first, left, _torch_order(errors).numpy(), grad, out)
    out_shape = values.shape[:-2] + (n_channels - first,) if values.ndim >= 2 else ()
    return torch.from_numpy(out).to(values.dtype).view(out_shape), torch.from_numpy(grad).view(values.shape)
