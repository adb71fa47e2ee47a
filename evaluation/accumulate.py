"""One read of a case's voxels into fixed-size counters and histograms.

Every calibration, overlap, volume and threshold statistic of the evaluation derives from the small arrays this
module returns per case (their size does not depend on the number of voxels), so a dataset of hundreds of cases
x 10^7 voxels is evaluated in constant memory: no voxel is kept once its chunk is done.

Binning (exact, no floating-point surprises)
--------------------------------------------
A *fine grid* of ``R`` bins (``R`` = lcm of the number of calibration bins and the thresholds' denominators,
60 for the defaults: 15 bins, T = 0.05..0.95) indexes a probability ``p`` by ``j = ceil(p * R)``:

* ``j = 0`` holds exactly ``p == 0`` (nnU-Net pads outside the crop box with exact 0/1 probabilities);
* ``j >= 1`` holds ``(j-1)/R < p <= j/R``; ``p == 1`` is in ``j = R``.

``p * R`` is computed in float64, which is exact for float16/float32 probabilities (24-bit mantissa times an
integer R < 2^29), so "``p > T``" for a threshold ``T = m/R`` is exactly "``j >= m + 1``": the threshold sweep's
counts equal those of thresholding every voxel (tests check this voxel for voxel).

Calibration bin ``b`` of ``B`` (``R = s * B``) merges fine bins ``b*s+1 .. (b+1)*s``: it is ``(b/B, (b+1)/B]``,
and the first one also holds ``p == 0`` -- so exact 0 lands in the first bin and exact 1 in the last, neither
is dropped (a common ``conf > lower & conf <= upper`` implementation silently loses every ``p == 0`` voxel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.spec import TaskSpec

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
DEFAULT_BINS = 15
#: NLL clips probabilities to [EPS, 1]: ``-log(max(p, EPS))``; float32's machine epsilon, which is what
#: scikit-learn's ``log_loss`` uses for float32 input
DEFAULT_EPS = float(np.finfo(np.float32).eps)
CHUNK = 1 << 15
#: histogram counters are spread over this many interleaved copies: neighbouring voxels usually fall into the
#: same bin, and ``np.bincount`` incrementing one counter back to back is several times slower
LANES = 4


@dataclass(frozen=True)
class BinGrid:
    """Calibration bins and sweep thresholds, on one fine grid of ``resolution`` bins (see module doc)."""
    n_bins: int = DEFAULT_BINS
    thresholds: Tuple[float, ...] = DEFAULT_THRESHOLDS
    resolution: int = field(default=0)

    def __post_init__(self):
        if self.n_bins < 1:
            raise ValueError(f"need at least one calibration bin, got {self.n_bins}")
        ts = tuple(float(t) for t in self.thresholds)
        if not all(0.0 < t < 1.0 for t in ts):
            raise ValueError(f"thresholds must lie strictly between 0 and 1, got {list(ts)}")
        r = self.n_bins
        for t in ts:
            frac = Fraction(str(t)).limit_denominator(10000)
            if abs(float(frac) - t) > 1e-12:
                raise ValueError(f"threshold {t} is not a fraction with denominator <= 10000")
            r = r * frac.denominator // math.gcd(r, frac.denominator)
        if r >= 1 << 24:
            raise ValueError("thresholds and number of bins need a grid finer than 2^24 bins; use rounder numbers")
        object.__setattr__(self, "thresholds", ts)
        object.__setattr__(self, "resolution", r)

    @property
    def threshold_index(self) -> np.ndarray:
        """Fine-grid index ``m`` with ``T = m / R`` for each threshold."""
        return np.array([int(round(t * self.resolution)) for t in self.thresholds], dtype=np.int64)

    def bin_edges(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.n_bins + 1)


@dataclass
class CaseStats:
    """The fixed-size statistics of one case (everything the metrics need; a few KiB)."""
    n_valid: int                      # voxels that are not ignore-labelled
    n_ignored: int
    confusion: np.ndarray             # (L, L) int64, reference label x predicted label (hard map), valid voxels
    n_pos: np.ndarray                 # (C,) positives (reference) per channel
    sum_p: np.ndarray                 # (C,) sum of p
    sum_py: np.ndarray                # (C,) sum of p over positives
    sum_p2: np.ndarray                # (C,) sum of p^2
    nll_sum: Optional[np.ndarray]     # (C,) binary clipped NLL sums per channel (region models), else None
    cat_nll_sum: Optional[float]      # categorical clipped NLL sum (label models), else None
    reliability: np.ndarray           # (C, B, 3) per calibration bin: count, sum p, sum y (one-vs-rest)
    top_reliability: Optional[np.ndarray]  # (B, 3) top-label confidence: count, sum conf, sum correct (labels)
    sweep: np.ndarray                 # (C, nT, 2) voxels with p > T: positives, negatives
    n_clipped: int = 0                # voxels whose p was outside [0, 1] by less than the tolerance
    fine_count: Optional[np.ndarray] = None  # (C, 2, R+1) voxels per (reference y, fine bin): decision rules
    fine_psum: Optional[np.ndarray] = None   # (C, R+1) sum of p per fine bin

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def sum_tolerance(dtype, n_channels: int) -> float:
    """How far a voxel's softmax may sum from 1 (float16 rounding of nnU-Net v1 files included)."""
    if np.dtype(dtype) == np.float16:
        return 1e-3 + n_channels * 2.0 ** -11
    return 1e-3


def _reduce_fine(cnt: np.ndarray, sp: np.ndarray, grid: BinGrid) -> Tuple[np.ndarray, np.ndarray]:
    """Fine histograms (y=0 half, y=1 half; R+1 bins each) -> reliability (B, 3) and sweep (nT, 2)."""
    r1 = grid.resolution + 1
    n0, n1 = cnt[:r1].astype(np.int64), cnt[r1:2 * r1].astype(np.int64)
    s_all = sp[:r1] + sp[r1:2 * r1]
    step = grid.resolution // grid.n_bins
    # calibration bin of every fine bin: fine 0 -> 0, fine j >= 1 -> (j - 1) // step
    which = np.concatenate([[0], (np.arange(1, r1) - 1) // step])
    rel = np.zeros((grid.n_bins, 3), dtype=np.float64)
    np.add.at(rel[:, 0], which, n0 + n1)
    np.add.at(rel[:, 1], which, s_all)
    np.add.at(rel[:, 2], which, n1)
    # voxels with p > m/R: fine bins m+1 .. R
    above1 = np.concatenate([np.cumsum(n1[::-1])[::-1], [0]])
    above0 = np.concatenate([np.cumsum(n0[::-1])[::-1], [0]])
    m = grid.threshold_index
    sweep = np.stack([above1[m + 1], above0[m + 1]], axis=1).astype(np.int64)
    return rel, sweep


def accumulate_case(probabilities: np.ndarray, reference: np.ndarray, spec: TaskSpec, grid: BinGrid = BinGrid(),
                    eps: float = DEFAULT_EPS, name: str = "probabilities", reference_name: str = "reference",
                    chunk: int = CHUNK, wait: Optional[Callable[[int, int], None]] = None) -> CaseStats:
    """Statistics of one case, read once (each chunk of probabilities is visited while it is in cache).

    ``probabilities``: ``(C, *shape)`` float16/32/64 (softmax for label models, sigmoid per region for region
    models); ``reference``: integer label map of ``shape``. ``name``/``reference_name`` appear in error messages.

    The voxels are visited channel by channel (per-channel histograms: channel ``c``'s data only), and the
    cross-channel statistics (hard map, confusion matrix, top-label confidence, categorical NLL, sum-to-1 check)
    are done chunk by chunk together with the last channel. ``wait(c, stop)``, if given, is called before the
    voxels ``[.., stop)`` of channel ``c`` are read: the array can still be filling from a background thread
    (see :mod:`.npz`), so a case is reduced while it is being inflated.
    """
    C = spec.n_channels
    if probabilities.ndim < 2 or probabilities.shape[0] != C:
        raise EvaluationError(f"{name}: expected {C} channels ({'regions' if spec.has_regions else 'labels'} of "
                              f"dataset.json) in an array of shape (C, *image shape), got shape "
                              f"{tuple(probabilities.shape)}; was it predicted with this dataset's plans?")
    if tuple(probabilities.shape[1:]) != tuple(reference.shape):
        raise EvaluationError(f"{name}: probabilities of shape {tuple(probabilities.shape[1:])} do not match the "
                              f"reference {reference_name} of shape {tuple(reference.shape)}; predictions must be "
                              f"in the reference's image grid (nnU-Net's exported probabilities are)")
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise EvaluationError(f"{name}: probabilities must be floating point, got {probabilities.dtype}")
    if not np.issubdtype(reference.dtype, np.integer):
        raise EvaluationError(f"{reference_name}: reference must be an integer label map, got {reference.dtype}")
    if wait is None:
        def wait(c, stop):
            return None

    R = grid.resolution
    r1 = R + 1
    L = spec.n_label_values
    P = probabilities.reshape(C, -1)
    Y = reference.reshape(-1)
    N = Y.size
    ign = spec.ignore_label
    tol = sum_tolerance(probabilities.dtype, C)
    member_b = spec.channel_membership().astype(bool)  # (C, L)
    chunk = max(1, min(chunk, N))
    starts = range(0, N, chunk)
    lanes_full = np.arange(chunk, dtype=np.intp) % LANES
    W = 2 * r1 * LANES  # bincount length per channel: (y, fine bin, lane)
    ibuf = np.empty(chunk, dtype=np.intp)  # reused scratch: bin indices
    fbuf = np.empty(chunk, dtype=np.float64)  # and p * R

    # the reference first (it is in memory): undeclared labels, ignore masks, valid voxel counts
    valid_lut = np.zeros(L, dtype=bool)
    valid_lut[list(spec.valid_labels)] = True
    if ign is not None:
        valid_lut[ign] = True
    ymin, ymax = (int(Y.min()), int(Y.max())) if N else (0, 0)
    if ymax >= L or ymin < 0 or (not valid_lut.all() and not valid_lut[Y].all()):
        bad = Y[(Y < 0) | (Y >= L)] if (ymax >= L or ymin < 0) else Y[~valid_lut[Y]]
        raise EvaluationError(f"{reference_name}: label {int(bad[0])} is not declared in dataset.json "
                              f"(labels {list(spec.valid_labels)}{'' if ign is None else f', ignore {ign}'}); "
                              f"fix the reference or dataset.json")
    keeps = {}  # chunk start -> boolean mask of non-ignored voxels (only chunks that have ignored voxels)
    n_ignored = 0
    if ign is not None and ymax >= ign:
        for s in starts:
            yc = Y[s:s + chunk]
            if int(yc.max()) >= ign:
                keep = yc != ign
                keeps[s] = keep
                n_ignored += int(yc.size - np.count_nonzero(keep))
    n_valid = N - n_ignored

    cnt = np.zeros((C, W), dtype=np.int64)
    sp = np.zeros((C, W), dtype=np.float64)
    sum_p2 = np.zeros(C, dtype=np.float64)
    nll = np.zeros(C, dtype=np.float64) if spec.has_regions else None
    clipped = set()  # chunk starts with values outside [0, 1] (within tolerance)
    n_clipped = 0

    def values(c, s):
        """Channel c of chunk s, ignore-label voxels dropped, float32/64; None when all are ignored."""
        p = P[c, s:s + chunk]
        keep = keeps.get(s)
        if keep is not None:
            p = p[keep]
        if p.dtype != np.float32 and p.dtype != np.float64:
            p = p.astype(np.float32)
        return p

    def labels(s):
        y = Y[s:s + chunk]
        keep = keeps.get(s)
        return y[keep] if keep is not None else y

    def channel_chunk(c, s):
        nonlocal n_clipped
        p = values(c, s)
        n = p.size
        if n == 0:
            return
        lo, hi = float(p.min()), float(p.max())
        if not (lo >= -tol and hi <= 1.0 + tol):  # also catches NaN
            what = "NaN" if (math.isnan(lo) or math.isnan(hi)) else f"values in [{lo:.6g}, {hi:.6g}]"
            raise EvaluationError(f"{name}: probabilities contain {what}, outside [0, 1]; regenerate the file "
                                  f"(nnUNetv2_train ... --val --npz or nnUNetv2_predict --save_probabilities)")
        if lo < 0.0 or hi > 1.0:
            n_clipped += int(np.count_nonzero((p < 0) | (p > 1)))
            clipped.add(s)
            p = np.clip(p, 0.0, 1.0)
        y = labels(s)
        pos = member_b[c][y] if spec.has_regions else (y == c)
        t = np.multiply(p, R, dtype=np.float64, out=fbuf[:n])
        sum_p2[c] += float(np.einsum("i,i->", t, t))
        idx = np.ceil(t, out=ibuf[:n], casting="unsafe")
        np.add(idx, r1, out=idx, where=pos)
        idx *= LANES
        idx += lanes_full[:n]
        cnt[c] += np.bincount(idx, minlength=W)
        sp[c] += np.bincount(idx, weights=t, minlength=W)
        if nll is not None:
            q = np.where(pos, p, 1.0 - p)
            nll[c] -= float(np.log(np.maximum(q, eps)).sum(dtype=np.float64))

    confusion = np.zeros(L * L * LANES, dtype=np.int64)
    top_cnt = np.zeros(W, dtype=np.int64)
    top_sp = np.zeros(W, dtype=np.float64)
    cat_nll = 0.0

    def voxel_chunk(s):
        nonlocal cat_nll, confusion
        pc = P[:, s:s + chunk]
        keep = keeps.get(s)
        if keep is not None:
            pc = pc[:, keep]
        n = pc.shape[1]
        if n == 0:
            return
        if pc.dtype != np.float32 and pc.dtype != np.float64:
            pc = pc.astype(np.float32)
        if s in clipped:
            pc = np.clip(pc, 0.0, 1.0)
        yi = labels(s).astype(np.intp)
        lanes = lanes_full[:n]
        if spec.has_regions:
            pred = np.zeros(n, dtype=np.intp)
            for i, c in enumerate(spec.regions_class_order):
                np.copyto(pred, c, where=pc[i] > 0.5)
        else:
            tot = pc.sum(0)
            dev = np.abs(tot - 1.0)
            if not (dev <= tol).all():
                raise EvaluationError(f"{name}: softmax probabilities do not sum to 1 over channels (worst voxel "
                                      f"sums to {float(tot[np.argmax(dev)]):.6g}); is this a region (sigmoid) "
                                      f"prediction or a wrong dataset.json?")
            # argmax over a few channels: first maximum wins, as np.argmax (which is slow along axis 0)
            pred = np.zeros(n, dtype=np.intp)
            conf = pc[0].copy()
            for c in range(1, C):
                np.copyto(pred, c, where=pc[c] > conf)
                np.maximum(conf, pc[c], out=conf)
            # top-label confidence; "correct" = the predicted label is the reference label
            t = np.multiply(conf, R, dtype=np.float64, out=fbuf[:n])
            idx = np.ceil(t, out=ibuf[:n], casting="unsafe")
            np.add(idx, r1, out=idx, where=pred == yi)
            idx *= LANES
            idx += lanes
            top_cnt[:] += np.bincount(idx, minlength=W)
            top_sp[:] += np.bincount(idx, weights=t, minlength=W)
            ptrue = pc[0].copy()
            for c in range(1, C):
                np.copyto(ptrue, pc[c], where=yi == c)
            cat_nll -= float(np.log(np.maximum(ptrue, eps)).sum(dtype=np.float64))
        cidx = yi * L
        cidx += pred
        cidx *= LANES
        cidx += lanes
        confusion += np.bincount(cidx, minlength=L * L * LANES)

    try:
        for c in range(C - 1):
            for s in starts:
                wait(c, min(s + chunk, N))
                channel_chunk(c, s)
        for s in starts:
            wait(C - 1, min(s + chunk, N))
            channel_chunk(C - 1, s)
            voxel_chunk(s)
    except EvaluationError:
        # Bad values in a file still being read may come from a damaged deflate stream, which the reader only
        # proves at its end (CRC-32): let it finish, so that damage is reported as damage, not as bad values.
        wait(-1, -1)
        raise

    # fold the lanes, undo the p * R scaling
    cnt = cnt.reshape(C, 2 * r1, LANES).sum(-1)
    sp = sp.reshape(C, 2 * r1, LANES).sum(-1) / R
    top_cnt = top_cnt.reshape(2 * r1, LANES).sum(-1)
    top_sp = top_sp.reshape(2 * r1, LANES).sum(-1) / R
    confusion = confusion.reshape(L * L, LANES).sum(-1)

    rel = np.zeros((C, grid.n_bins, 3))
    sweep = np.zeros((C, len(grid.thresholds), 2), dtype=np.int64)
    for ch in range(C):
        rel[ch], sweep[ch] = _reduce_fine(cnt[ch], sp[ch], grid)
    top_rel = None
    if not spec.has_regions:
        top_rel, _ = _reduce_fine(top_cnt, top_sp, grid)
    return CaseStats(
        n_valid=n_valid, n_ignored=n_ignored, confusion=confusion.reshape(L, L),
        n_pos=cnt[:, r1:].sum(1), sum_p=sp.sum(1), sum_py=sp[:, r1:].sum(1), sum_p2=sum_p2 / float(R) ** 2,
        nll_sum=nll, cat_nll_sum=None if spec.has_regions else cat_nll, reliability=rel,
        top_reliability=top_rel, sweep=sweep, n_clipped=n_clipped, fine_count=cnt.reshape(C, 2, r1),
        fine_psum=sp[:, :r1] + sp[:, r1:])
