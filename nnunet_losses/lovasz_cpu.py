"""The Lovász extension and its gradient on CPU, one compiled (numba) pass per row after one radix sort.

The general path (:func:`nnunet_losses.functional.lovasz_extension_autograd`) is ~12 full passes over memory:
sort, gather the errors and the foreground, a cumulative sum, ~6 elementwise kernels for the Jaccard
differences, the dot product, and in backward a scatter through the permutation. Here each row is sorted by an
LSD radix sort of its float bits, and ONE sequential pass over the sorted order accumulates the foreground count,
computes Berman's gradient ``g_k`` (:func:`~nnunet_losses.functional.lovasz_grad`'s formula, in the same
floating-point operations, so the same bits), adds ``m_k g_k`` to the value and writes ``g_k`` straight to the
voxel's own place. That is the whole Jacobian of the value w.r.t. the errors, so backward is a product.

Only float32/float64 rows of fewer than 2**32 voxels; the caller takes the general path for anything else.
"""
from __future__ import annotations

from typing import Tuple

import numba
import numpy as np
import torch
from torch import Tensor

#: LSD radix digits: 3 x 11 bits cover the 31 bits of a non-negative float32 (fewer, larger digits were no faster)
_DIGIT_BITS = 11
_N_DIGITS = 3
#: the voxel index lives in the low 32 bits of each sorted 64-bit word, the key in the high ones
_INDEX_BITS = 32
_INDEX_MASK = (1 << _INDEX_BITS) - 1
MAX_ROW = 1 << _INDEX_BITS


@numba.njit(nogil=True, cache=True)
def _radix_order_descending(bits, words, scratch):  # pragma: no cover - compiled (numba does not trace lines)
    """Stable descending order of one row of float32 bit patterns (``uint32``); ``(False, _)`` on a negative value.

    For a non-negative IEEE float the bit pattern orders exactly like the value, so the key
    ``0x7FFFFFFF - (bits & 0x7FFFFFFF)`` ascending is the value descending; dropping the sign bit maps -0.0 to
    +0.0 (equal values) and a NaN of either sign to a key below every number (NaN first, as ``torch.sort``).
    Each word is ``key << 32 | index``: an LSD radix sort is stable, so equal keys keep index order, and one
    64-bit word per voxel moves instead of a key and an index array (one write stream per bucket).
    """
    n = bits.shape[0]
    n_buckets = 1 << _DIGIT_BITS
    digit_mask = n_buckets - 1
    hist = np.zeros((_N_DIGITS, n_buckets), np.int64)
    for i in range(n):
        b = np.int64(bits[i])
        magnitude = b & 0x7FFFFFFF
        if b != magnitude and 0 < magnitude <= 0x7F800000:  # sign bit on a non-zero, non-NaN value
            return False, words
        key = 0x7FFFFFFF - magnitude
        words[i] = (key << _INDEX_BITS) | i
        for d in range(_N_DIGITS):
            hist[d, (key >> (d * _DIGIT_BITS)) & digit_mask] += 1
    src, dst = words, scratch
    for d in range(_N_DIGITS):
        counts = hist[d]
        if counts.max() == n:  # every key has the same digit here: this pass would not move anything
            continue
        start = 0
        for bucket in range(n_buckets):
            count = counts[bucket]
            counts[bucket] = start
            start += count
        shift = _INDEX_BITS + d * _DIGIT_BITS
        for i in range(n):
            w = src[i]
            bucket = (w >> shift) & digit_mask
            dst[counts[bucket]] = w
            counts[bucket] += 1
        src, dst = dst, src
    return True, src


@numba.njit(nogil=True, cache=True)
def _extension_row(errors, fg, order, grad):  # pragma: no cover - compiled
    """Value of one row in float64; ``grad[i] = g_k`` for the voxel ``i`` at sorted position ``k``.

    ``order`` holds the voxel indices in the low 32 bits (the radix words, or a plain int64 permutation).
    ``g`` follows :func:`~nnunet_losses.functional.lovasz_grad` operation for operation in the errors' dtype:
    ``c_k`` accumulated in float64 and rounded (as torch's CPU ``cumsum``), intersection ``I = G - c_k``, union
    ``I + (k + 1)``, ``J_k = 1 - I / U``, ``g_k = J_k - J_{k-1}``.
    """
    real = errors.dtype.type
    n = errors.shape[0]
    total = 0.0
    soft = False
    for i in range(n):
        total += fg[i]
        soft |= fg[i] != 0 and fg[i] != 1
    if soft:  # G as torch's cumsum ends: summed in the sorted order (a 0/1 count is exact in any order)
        total = 0.0
        for k in range(n):
            total += fg[order[k] & _INDEX_MASK]
    gts = real(total)
    cumulative = 0.0
    previous = real(0)
    value = 0.0
    for k in range(n):
        i = order[k] & _INDEX_MASK
        cumulative += fg[i]
        intersection = gts - real(cumulative)
        union = intersection + real(k + 1)
        jaccard = real(1) - intersection / union
        g = jaccard - previous
        previous = jaccard
        grad[i] = g
        value += np.float64(errors[i]) * np.float64(g)
    return value


@numba.njit(nogil=True, cache=True)
def _extension_rows_radix(errors, fg, grad, values, sorted_ok):  # pragma: no cover - compiled
    """Every float32 row on the radix order; rows holding a negative value are left for the caller."""
    n = errors.shape[1]
    words = np.empty(n, np.int64)
    scratch = np.empty(n, np.int64)
    for r in range(errors.shape[0]):
        ok, order = _radix_order_descending(errors[r].view(np.uint32), words, scratch)
        sorted_ok[r] = ok
        if ok:
            values[r] = _extension_row(errors[r], fg[r], order, grad[r])


@numba.njit(nogil=True, cache=True)
def _extension_rows_ordered(errors, fg, rows, orders, grad, values):  # pragma: no cover - compiled
    """Rows ``rows[j]`` on the given permutations ``orders[j]``."""
    for j in range(rows.shape[0]):
        r = rows[j]
        values[r] = _extension_row(errors[r], fg[r], orders[j], grad[r])


@numba.njit(nogil=True, cache=True)
def _radix_orders(bits, orders, sorted_ok):  # pragma: no cover - compiled
    n = bits.shape[1]
    words = np.empty(n, np.int64)
    scratch = np.empty(n, np.int64)
    for r in range(bits.shape[0]):
        ok, order = _radix_order_descending(bits[r], words, scratch)
        sorted_ok[r] = ok
        if ok:
            for k in range(n):
                orders[r, k] = order[k] & _INDEX_MASK


def _torch_order(rows: Tensor) -> Tensor:
    return torch.sort(rows, dim=-1, descending=True, stable=True).indices


def sort_order_rows(values: Tensor) -> Tensor:
    """``torch.sort(values, -1, descending=True, stable=True).indices`` of a CPU float32 ``(R, N)`` tensor,
    ``N < 2**32``, by the radix sort (rows holding a negative value by ``torch.sort``)."""
    orders = torch.empty(values.shape, dtype=torch.int64)
    sorted_ok = np.empty(values.shape[0], np.bool_)
    _radix_orders(values.detach().contiguous().numpy().view(np.uint32), orders.numpy(), sorted_ok)
    left = torch.from_numpy(np.flatnonzero(~sorted_ok))
    if len(left):
        orders[left] = _torch_order(values[left])
    return orders


def extension_and_gradient(errors: Tensor, fg: Tensor) -> Tuple[Tensor, Tensor]:
    """Lovász extension of every row of CPU ``(R, N)`` errors and its gradient w.r.t. them, ``(R,)`` and ``(R, N)``.

    float32 rows are sorted by the radix sort; float64 rows (tests, gradcheck) and rows holding a negative value
    by ``torch.sort`` -- the same stable descending order either way.
    """
    e = errors.detach().contiguous().numpy()
    f = fg.detach().numpy()
    grad = np.empty_like(e)
    values = np.empty(e.shape[0], np.float64)
    sorted_ok = np.zeros(e.shape[0], np.bool_)
    if e.dtype == np.float32:
        _extension_rows_radix(e, f, grad, values, sorted_ok)
    left = np.flatnonzero(~sorted_ok)
    if len(left):
        rows = torch.from_numpy(left)
        orders = _torch_order(errors.detach()[rows]).numpy()
        _extension_rows_ordered(e, f, left, orders, grad, values)
    return torch.from_numpy(values).to(errors.dtype), torch.from_numpy(grad)
