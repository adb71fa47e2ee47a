"""Decision rules other than nnU-Net's argmax: which voxels of a class to keep, from its probabilities alone.

For one class (one-vs-rest on its channel ``p``; for regions the region's channel) and the ``N`` valid voxels of
one case, with ``P = sum p`` and ``psi`` the probabilities sorted in descending order:

* ``dice_optimal`` -- Nordstrom et al., "marginal thresholding": ``D* = max_{k>=1} 2 sum_{i<=k} psi_i / (P + k)``
  (the expected Dice of the top-k mask under the voxel-independent model the probabilities describe); keep the
  voxels with ``p >= D*/2``, i.e. the largest maximising ``k`` (ties included). ``P = 0`` gives ``D* = 0``: the
  empty mask (not "every voxel", which ``p >= 0`` would say).
* ``rankseg_rma`` -- RankSEG-RMA (Wang & Dai, NeurIPS 2025; PyPI ``rankseg``, ``rankseg_rma(metric="dice",
  smooth=0, output_mode="multilabel", pruning_prob=0.5)``): the top ``tau`` voxels, ``tau`` the smallest maximiser
  over ``{0..N}`` of ``2 sum_{i<=tau} psi_i / (P + 1 + tau)`` (``tau = 0`` scores 0), and the empty mask when
  ``max p <= 0.5`` (the package's pruning).
* ``volume_matched`` -- the top ``k = floor(P + 1/2)`` voxels, so the hard volume is the soft (expected) volume to
  within half a voxel.

Ties: a top-k cut inside a run of equal probabilities keeps the voxels that come first in C order (flat index),
so a rule's mask is reproducible, and the same function (:func:`rule_masks`) writes the exported label maps.

Both ratio objectives ``h(k) = 2 S_k / (a + k)`` (``a = P`` or ``P + 1``) are unimodal in ``k``: adding the next
voxel raises ``h`` iff ``2 psi_{k+1} > h(k)``, and once it does not, ``h(k+1)`` is a weighted mean of ``h(k)`` and
``2 psi_{k+1}``, so it stays above every later ``2 psi``. That makes an exact answer cheap without sorting the case.

Exact cuts without sorting the case
-----------------------------------
The evaluation's streamed pass already builds, per channel, a histogram on the fine grid of :mod:`.accumulate`
(fine bin ``j = ceil(p * R)``; counts of reference positives and negatives, sums of ``p``). From it the count
``K_b``, positives and ``S_b`` of every threshold set "fine bin >= b" are exact. Each rule is evaluated at those
``R + 2`` boundaries, which locates its optimum between two neighbouring boundaries (unimodality for the ratio
rules; ``K_b`` brackets ``k`` for the volume rule). Only the voxels in that bracket -- a few fine bins, picked from
the case's array, which is in memory anyway while it is evaluated (the npz is never read again) -- are sorted in
float64, so the cut is exactly the one a full sort gives (tests compare with a full sort and with brute force over
all masks). The cost is one comparison pass over the channel and a sort of the bracket, not a sort of ``N``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

#: the rules computed voxel-wise per case (the threshold rules come from the sweep, see :mod:`.decision_summary`)
VOXEL_RULES = ("dice_optimal", "rankseg_rma", "volume_matched")
#: fine grid used when no histogram of the streamed pass is given (any resolution is exact)
DEFAULT_RESOLUTION = 60


@dataclass(frozen=True)
class FineHistogram:
    """One channel on the fine grid: ``count[y, j]`` voxels with reference ``y`` in fine bin ``j``, ``psum[j]`` the
    sum of their ``p`` (``j = 0`` holds ``p == 0``, ``j >= 1`` holds ``(j-1)/R < p <= j/R``)."""
    count: np.ndarray   # (2, R + 1) int64
    psum: np.ndarray    # (R + 1,) float64
    resolution: int

    @classmethod
    def of(cls, p: np.ndarray, positive: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> "FineHistogram":
        """The histogram of flat valid voxels (``p`` clipped to [0, 1]) -- what the streamed pass accumulates."""
        t = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0) * resolution
        j = np.ceil(t).astype(np.intp)
        r1 = resolution + 1
        idx = j + r1 * np.asarray(positive, dtype=np.intp)
        count = np.bincount(idx, minlength=2 * r1).reshape(2, r1).astype(np.int64)
        psum = np.bincount(j, weights=t, minlength=r1) / resolution
        return cls(count, psum, resolution)


@dataclass(frozen=True)
class Cut:
    """A rule's mask: the ``n_selected`` largest ``p`` (ties by flat index), of which ``tp`` are reference
    positives; ``value`` is the smallest kept ``p`` and ``n_at_value`` how many voxels with exactly that ``p`` are
    kept (the first ones in C order); ``value`` is NaN for the empty mask."""
    n_selected: int
    tp: int
    value: float
    n_at_value: int


EMPTY = Cut(0, 0, math.nan, 0)


class _Boundaries:
    """Counts above every bin boundary ``b``: voxels in bins ``>= b`` (bins in ascending order of ``p``), plus
    ``base`` voxels above all the bins (``k``, positives, sum of ``p``)."""

    def __init__(self, n_all: np.ndarray, n_pos: np.ndarray, psum: np.ndarray, base=(0, 0, 0.0)):
        self.k = base[0] + np.concatenate([np.cumsum(n_all[::-1])[::-1], [0]]).astype(np.int64)
        self.tp = base[1] + np.concatenate([np.cumsum(n_pos[::-1])[::-1], [0]]).astype(np.int64)
        self.s = base[2] + np.concatenate([np.cumsum(psum[::-1])[::-1], [0.0]])

    @classmethod
    def of(cls, hist: FineHistogram) -> "_Boundaries":
        return cls(hist.count.sum(0), hist.count[1], hist.psum)

    def ratio_bracket(self, offset: float) -> Tuple[int, int]:
        """Boundaries ``(b_lo, b_hi)`` between which ``argmax_k 2 S_k / (offset + k)`` lies (unimodality)."""
        ok = self.k > 0
        h = np.full(self.k.shape, -np.inf)
        h[ok] = 2.0 * self.s[ok] / (offset + self.k[ok])
        best = np.flatnonzero(h == h.max())
        return max(int(best[0]) - 1, 0), min(int(best[-1]) + 1, len(self.k) - 1)

    def count_bracket(self, k: int) -> Tuple[int, int]:
        """Boundaries with ``K_{b_hi} <= k <= K_{b_lo}``."""
        b_hi = int(np.flatnonzero(self.k <= k)[0])
        return max(b_hi - 1, 0), b_hi

    def bracket(self, target) -> Tuple[int, int]:
        return self.count_bracket(target[1]) if target[0] == "count" else self.ratio_bracket(target[1])

    def value_floor(self, target, n: int, R: int) -> float:
        """A lower bound on the smallest ``p`` the rule keeps, from the boundaries alone (voxels below it can be
        left out of the bracket: they are never kept).

        Ratio rules: the last voxel kept, ``psi_k``, has ``2 psi_k >= h(k) >= h`` at any boundary (``h(k)`` is a
        weighted mean of ``h(k-1) <= 2 psi_k`` and ``2 psi_k``). Count rule: the voxels after the ``k``-th are each
        ``<= psi_k``, so ``psi_k >= (P - S_k) / (n - k)``, and ``S_k <= S_{b_hi} + (k - K_{b_hi}) (b_hi - 1)/R``.
        Lowered by 1e-9 relative for rounding."""
        if target[0] == "ratio":
            ok = self.k > 0
            return float(np.max(2.0 * self.s[ok] / (target[1] + self.k[ok]))) / 2 * (1 - 1e-9)
        k = target[1]
        if k >= n:
            return 0.0
        b_lo, b_hi = self.count_bracket(k)
        s_k = self.s[b_hi] + (k - self.k[b_hi]) * min((b_hi - 1) / R, 1.0)
        return max(float(self.s[0] - s_k) / (n - k), 0.0) * (1 - 1e-9)

    def base(self, b: int):
        return int(self.k[b]), int(self.tp[b]), float(self.s[b])


def _fine_bin_mask(p: np.ndarray, valid, b_lo: int, b_hi: int, R: int, scaled: bool) -> np.ndarray:
    """Valid voxels in fine bins ``b_lo .. b_hi - 1`` (bin ``j = ceil(p R)``; bin 0 also holds clipped p < 0)."""
    m = np.ones(p.shape, dtype=bool) if valid is None else valid.copy()
    if scaled:  # the histogram's own test on p * R, exact in float64 for any input
        q = np.asarray(p, dtype=np.float64) * R
        lo, hi = np.float64(b_lo - 1), np.float64(b_hi - 1)
    else:  # p > j/R in float64 (a float64 scalar: NumPy 2 would compare a Python float in float32)
        q = p
        lo, hi = np.float64((b_lo - 1) / R), np.float64((b_hi - 1) / R)
    if b_lo > 0:
        m &= q > lo
    if b_hi <= R:
        m &= q <= hi
    return m


def _candidates(p: np.ndarray, valid: Optional[np.ndarray], expected: int, b_lo: int, b_hi: int, R: int,
                floor: float = 0.0):
    """Flat indices of the valid voxels in fine bins ``b_lo .. b_hi - 1`` with ``p >= floor``, in index order
    (exact bin test).

    ``p > j/R`` in float64 equals the histogram's ``ceil(p R) > j`` for float16/32 ``p`` (such a ``p`` cannot lie
    between ``j/R`` and its float64 rounding) and saves the product pass; float64 input, or a count that disagrees
    with the histogram, takes the product. With a floor above the bracket's lower edge the count cannot be checked
    against the histogram (the bin test stays the same)."""
    if expected == 0:
        return np.empty(0, dtype=np.intp)
    if floor > max(b_lo - 1, 0) / R:
        m = _fine_bin_mask(p, valid, 0, b_hi, R, scaled=p.dtype == np.float64)
        m &= p >= np.float64(floor)
        return np.flatnonzero(m)
    if p.dtype != np.float64:
        idx = np.flatnonzero(_fine_bin_mask(p, valid, b_lo, b_hi, R, scaled=False))
        if idx.size == expected:
            return idx
    idx = np.flatnonzero(_fine_bin_mask(p, valid, b_lo, b_hi, R, scaled=True))
    if idx.size != expected:
        raise ValueError(f"fine histogram does not describe these probabilities ({idx.size} voxels in the bracket, "
                         f"the histogram says {expected}); pass the histogram of the same voxels")
    return idx


#: a bracket larger than this is narrowed with a finer histogram of its own values before it is sorted
SORT_LIMIT = 1 << 16
SUB_BINS_LOG2 = 12


def _order_keys(vals: np.ndarray) -> np.ndarray:
    """Integers ordered like the (non-negative) values: their IEEE-754 bit patterns. Binning these gives relative,
    not absolute, resolution -- what the millions of tiny probabilities of a background need."""
    return vals.view(np.uint32 if vals.dtype == np.float32 else np.uint64)


def _narrow(vals, idx, positive, base, above_min, targets):
    """Shrink the bracket (values ``vals`` at flat indices ``idx``; ``base`` = k, positives, sum of the voxels
    above it, ``above_min`` their smallest ``p`` and its count, or None) with histograms of its own values until it
    is small enough to sort. Each level bins the values' bit patterns (a monotone map, so bins are ordered like
    the values) into at most ``2^SUB_BINS_LOG2`` bins and keeps the union of the rules' brackets; the reference
    (``positive(idx)``) is looked up only for the voxels that leave the bracket upwards."""
    while vals.size > SORT_LIMIT:
        bits = _order_keys(vals)
        lo = bits.min()
        span = int(bits.max() - lo)
        if span == 0:
            break
        shift = max(span.bit_length() - SUB_BINS_LOG2, 0)
        key = bits - lo
        key >>= shift
        n_bins = (span >> shift) + 1
        n_all = np.bincount(key, minlength=n_bins)
        psum = np.bincount(key, weights=vals, minlength=n_bins)
        bounds = _Boundaries(n_all, np.zeros(n_bins, np.int64), psum, base)  # counts and sums fix the brackets
        brackets = [bounds.bracket(t) for t in targets]
        b_lo, b_hi = min(b[0] for b in brackets), max(b[1] for b in brackets)
        if b_lo == 0 and b_hi == n_bins:
            break
        above = key >= b_hi
        n_above = int(np.count_nonzero(above))
        tp_above = 0
        if n_above:  # the smallest p kept above the bracket, and how many share it (all kept: same bin)
            a = vals[above]
            above_min = (float(a.min()), int(np.count_nonzero(a == a.min())))
            tp_above = int(np.count_nonzero(positive(idx[above])))
        keep = key >= b_lo
        keep &= ~above
        vals, idx = vals[keep], idx[keep]
        k, _, s = bounds.base(b_hi)
        base = (k, base[1] + tp_above, s)
    return vals, idx, base, above_min


def channel_cuts(p: np.ndarray, positive: np.ndarray, valid: Optional[np.ndarray] = None,
                 hist: Optional[FineHistogram] = None, rules=VOXEL_RULES) -> Dict[str, Cut]:
    """The cut of each rule (see module doc) for one channel of one case.

    ``p``: flat probabilities; ``positive``: flat boolean reference of the class, or a function of flat indices
    giving it there (so that only the bracket's voxels are looked up); ``valid``: flat boolean mask of
    the non-ignored voxels (None: all); ``hist``: the channel's :class:`FineHistogram` over the valid voxels
    (from the streamed pass; computed here when None).
    """
    p = np.asarray(p).reshape(-1)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool).reshape(-1)
    if hist is None and callable(positive):
        positive = positive(np.arange(p.size))
    if not callable(positive):
        positive = np.asarray(positive, dtype=bool).reshape(-1)
    if hist is None:
        hist = FineHistogram.of(p if valid is None else p[valid], positive if valid is None else positive[valid])
    bounds = _Boundaries.of(hist)
    P = float(hist.psum.sum())
    R = hist.resolution
    if int(bounds.k[0]) == 0:
        return {r: EMPTY for r in rules}
    targets = {r: _target(r, P, p, valid, bounds, R) for r in rules}
    used = [t for t in targets.values() if t is not None]
    if not used:
        return {r: EMPTY for r in rules}
    # one extraction for all rules: the union of their brackets, then narrowed on the bracket's own values
    brackets = [bounds.bracket(t) for t in used]
    b_lo, b_hi = min(b[0] for b in brackets), max(b[1] for b in brackets)
    floor = min(bounds.value_floor(t, int(bounds.k[0]), R) for t in used)
    idx = _candidates(p, valid, int(bounds.k[b_lo] - bounds.k[b_hi]), b_lo, b_hi, R, floor)
    vals = p[idx]
    if vals.dtype != np.float32 and vals.dtype != np.float64:
        vals = vals.astype(np.float32)  # float16: exact
    if b_lo == 0 or b_hi > R:  # only the end bins can hold values a tolerance outside [0, 1]
        vals = np.clip(vals, 0.0, 1.0)
    lookup = positive if callable(positive) else positive.__getitem__
    vals, idx, base, above_min = _narrow(vals, idx, lookup, bounds.base(b_hi), None, used)
    vals = vals.astype(np.float64)
    order = np.argsort(-vals, kind="stable")  # descending; idx ascends, so ties stay in flat-index order
    vals, pos = vals[order], np.asarray(lookup(idx[order]), dtype=bool)
    base_k, base_tp, base_s = base
    # k = base_k + i for i = 0..len(vals): prefix sums with the voxels above the bracket
    ks = base_k + np.arange(len(vals) + 1)
    sums = base_s + np.concatenate([[0.0], np.cumsum(vals)])
    tps = base_tp + np.concatenate([[0], np.cumsum(pos)])
    out = {}
    for r in rules:
        t = targets[r]
        if t is None:
            out[r] = EMPTY
        else:
            out[r] = _cut_at(_cut_index(r, t, ks, sums, vals, base_k), ks, tps, vals, above_min, b_hi, p, valid, R)
    return out


def _target(rule: str, P: float, p, valid, bounds: _Boundaries, R: int):
    """What ``rule`` maximises or matches: ``("ratio", c)`` for the largest ``2 S_k / (c + k)`` over the top-k
    sums ``S_k``, ``("count", k)`` for the top k voxels, or None when the rule predicts nothing."""
    if rule == "dice_optimal":
        return ("ratio", P) if P > 0 else None
    if rule == "rankseg_rma":
        return ("ratio", P + 1.0) if _max_above_half(p, valid, bounds, R) else None
    if rule == "volume_matched":
        return ("count", int(math.floor(P + 0.5)))
    raise ValueError(f"unknown decision rule {rule!r}; known: {list(VOXEL_RULES)}")


def _cut_index(rule: str, target, ks, sums, vals, base_k: int) -> int:
    """Index into the bracket's descending ``vals`` of the cut of ``rule`` (voxels kept: ``base_k + i``)."""
    if target[0] == "count":
        return target[1] - base_k
    h = np.where(ks > 0, 2.0 * sums / (target[1] + ks), 0.0)
    top = np.flatnonzero(h == h.max())
    i = int(top[-1] if rule == "dice_optimal" else top[0])
    if rule == "dice_optimal":  # p >= D*/2 keeps every voxel equal to the last one kept
        while 0 < i < len(vals) and vals[i] == vals[i - 1]:
            i += 1
    return i


def _max_above_half(p, valid, bounds: _Boundaries, R: int) -> bool:
    """``max p > 0.5`` (RankSEG's pruning), from the histogram when 0.5 is a fine-grid boundary."""
    if R % 2 == 0:
        return bool(bounds.k[R // 2 + 1] > 0)
    q = p if valid is None else p[valid]
    return bool(q.size and float(np.max(q)) > 0.5)


def _cut_at(i: int, ks, tps, vals, above_min, b_hi: int, p, valid, resolution: int) -> Cut:
    k = int(ks[i])
    if k == 0:
        return EMPTY
    if i > 0:
        v = float(vals[i - 1])
        # voxels above the bracket never share v: the bracket ends at a bin boundary
        return Cut(k, int(tps[i]), v, int(np.count_nonzero(vals[:i] == v)))
    if above_min is not None:  # the cut is exactly the top of a narrowed bracket
        return Cut(k, int(tps[i]), above_min[0], above_min[1])
    # the cut is exactly a fine-grid boundary (rare): the smallest kept p is the minimum over the fine bins >= b_hi,
    # found with one more pass
    q = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    keep = np.asarray(p, dtype=np.float64) * resolution > b_hi - 1
    if valid is not None:
        keep &= valid
    above = q[keep]
    v = float(above.min())
    return Cut(k, int(tps[i]), v, int(np.count_nonzero(above == v)))


def cut_mask(p: np.ndarray, cut: Cut) -> np.ndarray:
    """Boolean mask of a cut on the same (flat or shaped) probabilities it was computed from."""
    if cut.n_selected == 0:
        return np.zeros(np.shape(p), dtype=bool)
    q = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    mask = q > cut.value
    eq = np.flatnonzero((q == cut.value).reshape(-1))
    flat = mask.reshape(-1)
    flat[eq[:cut.n_at_value]] = True
    return mask


def decision_metrics(cut_or_counts, n_ref: int, voxel_volume: float) -> dict:
    """Dice, IoU, volumes of a mask with ``n_pred`` voxels of which ``tp`` are positives (Dice/IoU NaN when the
    mask and the reference are both empty, nnU-Net's convention)."""
    if isinstance(cut_or_counts, Cut):
        n_pred, tp = cut_or_counts.n_selected, cut_or_counts.tp
    else:
        n_pred, tp = cut_or_counts
    n_pred, tp, n_ref = int(n_pred), int(tp), int(n_ref)
    den = n_pred + n_ref
    dice = 2.0 * tp / den if den else math.nan
    iou = tp / (den - tp) if den else math.nan
    return {"Dice": dice, "IoU": iou, "n_pred": n_pred, "TP": tp, "V_pred": n_pred * voxel_volume,
            "dV": (n_pred - n_ref) * voxel_volume, "abs_dV": abs(n_pred - n_ref) * voxel_volume}


# -----------------------------------------------------------------------------------------------------------------
# whole cases: one-vs-rest per class, label maps
# -----------------------------------------------------------------------------------------------------------------
def case_cuts(probabilities: np.ndarray, reference: Optional[np.ndarray], spec,
              hists: Optional[Dict[int, FineHistogram]] = None, rules=VOXEL_RULES) -> Dict[str, Dict[str, Cut]]:
    """``{class key: {rule: Cut}}`` for one case (``probabilities`` ``(C, *shape)``; ``reference`` the label map,
    or None when there is none -- then ``tp`` is 0 and only the masks mean something). Ignore-label voxels are
    left out of every rule. ``hists``: the streamed pass's fine histograms per channel (computed when None)."""
    C = spec.n_channels
    P = probabilities.reshape(C, -1)
    if reference is None:
        Y, valid = None, None
    else:
        Y = np.asarray(reference).reshape(-1)
        valid = None if spec.ignore_label is None else Y != spec.ignore_label
        if valid is not None and valid.all():
            valid = None
    out = {}
    for key, cls, ch in zip(spec.keys, spec.classes, spec.class_channels):
        if Y is None:
            pos = np.zeros(P.shape[1], dtype=bool)
        else:
            lut = spec.membership(cls)
            pos = (lambda idx, lut=lut: lut[Y[idx]])
        out[key] = channel_cuts(P[ch], pos, valid, None if hists is None else hists.get(ch), rules)
    return out


def rule_label_map(probabilities: np.ndarray, spec, rule: str) -> np.ndarray:
    """Label map of a voxel rule, each class's mask made one-vs-rest on its channel, then combined.

    Conflict rule (documented in docs/evaluation.md): label models -- a voxel kept by several classes gets the
    one with the largest ``p_c`` (ties: the lower label), a voxel kept by none is background; regions --
    ``seg[mask_i] = regions_class_order[i]`` in channel order, nnU-Net's own way of writing overlapping regions.
    """
    cuts = case_cuts(probabilities, None, spec, rules=(rule,))
    dtype = np.uint8 if spec.max_label < 255 else np.uint16
    seg = np.zeros(probabilities.shape[1:], dtype=dtype)
    if spec.has_regions:
        for key, ch, c in zip(spec.keys, spec.class_channels, spec.regions_class_order):
            seg[cut_mask(probabilities[ch], cuts[key][rule])] = c
        return seg
    best = np.full(probabilities.shape[1:], -1.0)
    for key, cls, ch in zip(spec.keys, spec.classes, spec.class_channels):
        p = probabilities[ch]
        win = cut_mask(p, cuts[key][rule]) & (p > best)
        seg[win] = cls
        best[win] = p[win]
    return seg


def fine_histograms(stats, grid) -> Dict[int, FineHistogram]:
    """The streamed pass's per-channel fine histograms (:class:`~.accumulate.CaseStats`), by channel."""
    return {ch: FineHistogram(stats.fine_count[ch], stats.fine_psum[ch], grid.resolution)
            for ch in range(stats.fine_count.shape[0])}
