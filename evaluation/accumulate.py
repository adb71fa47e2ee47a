"""One pass over a case's voxels into fixed-size counters and histograms.

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
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import EvaluationError
from .spec import TaskSpec

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
                    chunk: int = CHUNK) -> CaseStats:
    """Statistics of one case in one pass over its voxels.

    ``probabilities``: ``(C, *shape)`` float16/32/64 (softmax for label models, sigmoid per region for region
    models); ``reference``: integer label map of ``shape``. ``name``/``reference_name`` appear in error messages.
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

    R = grid.resolution
    r1 = R + 1
    L = spec.n_label_values
    P = probabilities.reshape(C, -1)
    Y = reference.reshape(-1)
    N = Y.size
    ign = spec.ignore_label
    tol = sum_tolerance(probabilities.dtype, C)
    member = spec.channel_membership()  # (C, L) uint8
    valid_lut = np.zeros(L, dtype=bool)
    valid_lut[list(spec.valid_labels)] = True
    if ign is not None:
        valid_lut[ign] = True
    lut_needed = not valid_lut.all()
    thr_label = np.zeros(L, dtype=np.intp)  # region model: label painted by the hard map

    confusion = np.zeros(L * L * LANES, dtype=np.int64)
    cnt = np.zeros((C, 2 * r1 * LANES), dtype=np.int64)
    sp = np.zeros((C, 2 * r1 * LANES), dtype=np.float64)
    sum_p2 = np.zeros(C, dtype=np.float64)
    nll = np.zeros(C, dtype=np.float64) if spec.has_regions else None
    cat_nll = 0.0
    top_cnt = np.zeros(2 * r1 * LANES, dtype=np.int64)
    top_sp = np.zeros(2 * r1 * LANES, dtype=np.float64)
    n_valid = n_ignored = n_clipped = 0

    member_b = member.astype(bool)
    lanes_full = np.arange(min(chunk, max(N, 1)), dtype=np.intp) % LANES
    W = 2 * r1 * LANES  # bincount length per channel: (y, fine bin, lane)
    ibuf = np.empty(min(chunk, max(N, 1)), dtype=np.intp)  # reused scratch (bin indices, scaled p)
    fbuf = np.empty(min(chunk, max(N, 1)), dtype=np.float64)

    for s in range(0, N, chunk):
        yc = Y[s:s + chunk]
        pc = P[:, s:s + chunk]
        ymin, ymax = int(yc.min()), int(yc.max())
        if ymax >= L or ymin < 0 or (lut_needed and not valid_lut[yc].all()):
            bad = yc[(yc < 0) | (yc >= L)] if (ymax >= L or ymin < 0) else yc[~valid_lut[yc]]
            raise EvaluationError(f"{reference_name}: label {int(bad[0])} is not declared in dataset.json "
                                  f"(labels {list(spec.valid_labels)}"
                                  f"{'' if ign is None else f', ignore {ign}'}); fix the reference or dataset.json")
        if ign is not None and ymax >= ign:
            keep = yc != ign
            k = int(np.count_nonzero(keep))
            n_ignored += yc.size - k
            if k == 0:
                continue
            if k < yc.size:
                yc = yc[keep]
                pc = pc[:, keep]
        n = yc.size
        n_valid += n
        lanes = lanes_full[:n]
        if pc.dtype != np.float32 and pc.dtype != np.float64:
            pc = pc.astype(np.float32)
        lo, hi = float(pc.min()), float(pc.max())
        if not (lo >= -tol and hi <= 1.0 + tol):  # also catches NaN
            what = "NaN" if (math.isnan(lo) or math.isnan(hi)) else f"values in [{lo:.6g}, {hi:.6g}]"
            raise EvaluationError(f"{name}: probabilities contain {what}, outside [0, 1]; regenerate the file "
                                  f"(nnUNetv2_train ... --val --npz or nnUNetv2_predict --save_probabilities)")
        if not spec.has_regions:
            tot = pc.sum(0)
            dev = np.abs(tot - 1.0)
            if not (dev <= tol).all():
                raise EvaluationError(f"{name}: softmax probabilities do not sum to 1 over channels (worst voxel "
                                      f"sums to {float(tot[np.argmax(dev)]):.6g}); is this a region (sigmoid) "
                                      f"prediction or a wrong dataset.json?")
        if lo < 0.0 or hi > 1.0:
            n_clipped += int(np.count_nonzero((pc < 0) | (pc > 1)))
            pc = np.clip(pc, 0.0, 1.0)
        yi = yc.astype(np.intp)

        # hard map (nnU-Net's rule) and confusion matrix over label values
        if spec.has_regions:
            pred = np.zeros(n, dtype=np.intp)
            for i, c in enumerate(spec.regions_class_order):
                np.copyto(pred, c, where=pc[i] > 0.5)
        else:
            # argmax over a few channels: first maximum wins, as np.argmax (which is slow along axis 0)
            pred = np.zeros(n, dtype=np.intp)
            conf = pc[0].copy()
            for c in range(1, C):
                np.copyto(pred, c, where=pc[c] > conf)
                np.maximum(conf, pc[c], out=conf)
            # top-label confidence; "correct" = the predicted label is the reference label
            t = np.multiply(conf, R, dtype=np.float64)
            idx = np.ceil(t, out=ibuf[:n], casting="unsafe")
            np.add(idx, r1, out=idx, where=pred == yi)
            idx *= LANES
            idx += lanes
            top_cnt += np.bincount(idx, minlength=W)
            top_sp += np.bincount(idx, weights=t, minlength=W)
            ptrue = pc[0].copy()
            for c in range(1, C):
                np.copyto(ptrue, pc[c], where=yi == c)
            cat_nll -= float(np.log(np.maximum(ptrue, eps)).sum(dtype=np.float64))
        cidx = yi * L
        cidx += pred
        cidx *= LANES
        cidx += lanes
        confusion += np.bincount(cidx, minlength=L * L * LANES)

        for ch in range(C):
            p = pc[ch]
            pos = member_b[ch][yi] if spec.has_regions else (yi == ch)
            t = np.multiply(p, R, dtype=np.float64, out=fbuf[:n])
            sum_p2[ch] += float(np.einsum("i,i->", t, t))
            idx = np.ceil(t, out=ibuf[:n], casting="unsafe")
            np.add(idx, r1, out=idx, where=pos)
            idx *= LANES
            idx += lanes
            cnt[ch] += np.bincount(idx, minlength=W)
            sp[ch] += np.bincount(idx, weights=t, minlength=W)
            if nll is not None:
                q = np.where(pos, p, 1.0 - p)
                nll[ch] -= float(np.log(np.maximum(q, eps)).sum(dtype=np.float64))

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
        top_reliability=top_rel, sweep=sweep, n_clipped=n_clipped)
