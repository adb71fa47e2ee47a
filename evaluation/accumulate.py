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
from nnunet_losses.evaluation.probabilities import check_range, check_sums_to_one, sum_tolerance
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


class CaseAccumulator:
    """Reads one case chunk by chunk into fixed-size counters; :meth:`finish` gives its :class:`CaseStats`.

    Per chunk of ``chunk`` voxels (ignore-label voxels dropped), two kinds of step:

    * :meth:`add_channel_chunk` -- one channel's values: range check, fine histograms (-> reliability, sweep,
      sums of p), binary NLL of region models;
    * :meth:`add_voxel_chunk` -- every channel of the chunk together (run with the last channel, while the
      chunk is in cache): sum-to-1 check, nnU-Net's hard map -> confusion matrix, top-label histogram and
      categorical NLL of label models.

    A new per-case quantity is one ``_add_<quantity>(...)`` method called from one of these two steps, its
    counter set in ``__init__``, and one :class:`CaseStats` field filled in :meth:`finish`.
    """

    def __init__(self, probabilities: np.ndarray, reference: np.ndarray, spec: TaskSpec, grid: BinGrid = BinGrid(),
                 eps: float = DEFAULT_EPS, name: str = "probabilities", reference_name: str = "reference",
                 chunk: int = CHUNK):
        _check_arrays(probabilities, reference, spec, name, reference_name)
        self.spec, self.grid, self.eps, self.name = spec, grid, eps, name
        C, R = spec.n_channels, grid.resolution
        self.P = probabilities.reshape(C, -1)
        self.Y = reference.reshape(-1)
        self.n_voxels = self.Y.size
        self.chunk = max(1, min(chunk, self.n_voxels))
        self.starts = range(0, self.n_voxels, self.chunk)
        self.tol = sum_tolerance(probabilities.dtype, C)
        self.member = spec.channel_membership().astype(bool)  # (C, L)
        self._lanes = np.arange(self.chunk, dtype=np.intp) % LANES
        self._width = 2 * (R + 1) * LANES  # bincount length of one histogram: (y, fine bin, lane)
        self._ibuf = np.empty(self.chunk, dtype=np.intp)  # reused scratch: bin indices
        self._fbuf = np.empty(self.chunk, dtype=np.float64)  # and p * R
        self._keeps, self.n_ignored = self._scan_reference(reference_name)
        self._clipped = set()  # chunk starts with values outside [0, 1] (within tolerance)
        self.n_clipped = 0
        # counters: per channel (one-vs-rest) ...
        self.counts = np.zeros((C, self._width), dtype=np.int64)
        self.sums = np.zeros((C, self._width), dtype=np.float64)  # of p * R
        self.sum_p2 = np.zeros(C, dtype=np.float64)  # of (p * R)^2
        self.nll = np.zeros(C, dtype=np.float64) if spec.has_regions else None
        # ... and across channels
        L = spec.n_label_values
        self.confusion = np.zeros(L * L * LANES, dtype=np.int64)
        self.top_counts = np.zeros(self._width, dtype=np.int64)
        self.top_sums = np.zeros(self._width, dtype=np.float64)
        self.cat_nll = 0.0

    # -- the reference -----------------------------------------------------------------------------------------
    def _scan_reference(self, reference_name: str):
        """Undeclared labels are an error; ``({chunk start: keep mask}, n_ignored)`` for the ignore label."""
        spec, Y = self.spec, self.Y
        L, ign = spec.n_label_values, spec.ignore_label
        valid_lut = np.zeros(L, dtype=bool)
        valid_lut[list(spec.valid_labels)] = True
        if ign is not None:
            valid_lut[ign] = True
        ymin, ymax = (int(Y.min()), int(Y.max())) if Y.size else (0, 0)
        out_of_range = ymax >= L or ymin < 0
        if out_of_range or (not valid_lut.all() and not valid_lut[Y].all()):
            bad = Y[(Y < 0) | (Y >= L)] if out_of_range else Y[~valid_lut[Y]]
            raise EvaluationError(f"{reference_name}: label {int(bad[0])} is not declared in dataset.json "
                                  f"(labels {list(spec.valid_labels)}{'' if ign is None else f', ignore {ign}'}); "
                                  f"fix the reference or dataset.json")
        keeps, n_ignored = {}, 0  # only chunks that have ignored voxels get a mask
        if ign is not None and ymax >= ign:
            for s in self.starts:
                yc = Y[s:s + self.chunk]
                if int(yc.max()) >= ign:
                    keeps[s] = yc != ign
                    n_ignored += int(yc.size - np.count_nonzero(keeps[s]))
        return keeps, n_ignored

    def _labels(self, s: int) -> np.ndarray:
        y = self.Y[s:s + self.chunk]
        keep = self._keeps.get(s)
        return y[keep] if keep is not None else y

    def _probabilities(self, s: int, c=slice(None)) -> np.ndarray:
        """Channel(s) ``c`` of chunk ``s``, ignore-label voxels dropped, as float32/64."""
        p = self.P[c, s:s + self.chunk]
        keep = self._keeps.get(s)
        if keep is not None:
            p = p[..., keep]
        if p.dtype != np.float32 and p.dtype != np.float64:
            p = p.astype(np.float32)
        return p

    def _histogram(self, p: np.ndarray, positive: np.ndarray):
        """Fine-grid histogram of ``p`` split by ``positive``: ``(counts, sums of p * R)`` of length ``_width``,
        and ``p * R`` (see the module doc for the grid)."""
        n = p.size
        t = np.multiply(p, self.grid.resolution, dtype=np.float64, out=self._fbuf[:n])
        idx = np.ceil(t, out=self._ibuf[:n], casting="unsafe")
        np.add(idx, self.grid.resolution + 1, out=idx, where=positive)
        idx *= LANES
        idx += self._lanes[:n]
        return np.bincount(idx, minlength=self._width), np.bincount(idx, weights=t, minlength=self._width), t

    # -- per channel -------------------------------------------------------------------------------------------
    def add_channel_chunk(self, c: int, s: int) -> None:
        p = self._probabilities(s, c)
        if p.size == 0:
            return
        if check_range(p, self.name, self.tol):
            self.n_clipped += int(np.count_nonzero((p < 0) | (p > 1)))
            self._clipped.add(s)
            p = np.clip(p, 0.0, 1.0)
        y = self._labels(s)
        positive = self.member[c][y] if self.spec.has_regions else (y == c)
        self._add_channel_histogram(c, p, positive)
        if self.nll is not None:
            self._add_binary_nll(c, p, positive)

    def _add_channel_histogram(self, c: int, p: np.ndarray, positive: np.ndarray) -> None:
        counts, sums, t = self._histogram(p, positive)
        self.counts[c] += counts
        self.sums[c] += sums
        self.sum_p2[c] += float(np.einsum("i,i->", t, t))

    def _add_binary_nll(self, c: int, p: np.ndarray, positive: np.ndarray) -> None:
        """Region models: ``-sum log max(q, eps)`` with ``q = p`` on positives, ``1 - p`` elsewhere."""
        q = np.where(positive, p, 1.0 - p)
        self.nll[c] -= float(np.log(np.maximum(q, self.eps)).sum(dtype=np.float64))

    # -- across channels ---------------------------------------------------------------------------------------
    def add_voxel_chunk(self, s: int) -> None:
        pc = self._probabilities(s)
        if pc.shape[1] == 0:
            return
        if s in self._clipped:
            pc = np.clip(pc, 0.0, 1.0)
        y = self._labels(s).astype(np.intp)
        if not self.spec.has_regions:
            check_sums_to_one(pc, self.name, self.tol)
        pred, conf = self.spec.nnunet_map(pc, dtype=np.intp)
        if conf is not None:
            self._add_top_label(conf, pred == y)
            self._add_categorical_nll(pc, y)
        self._add_confusion(y, pred)

    def _add_top_label(self, conf: np.ndarray, correct: np.ndarray) -> None:
        """Top-label confidence ``max p``; "correct" = the predicted label is the reference label."""
        counts, sums, _ = self._histogram(conf, correct)
        self.top_counts += counts
        self.top_sums += sums

    def _add_categorical_nll(self, pc: np.ndarray, y: np.ndarray) -> None:
        """Label models: ``-sum log max(p_true, eps)``."""
        p_true = pc[0].copy()
        for c in range(1, pc.shape[0]):
            np.copyto(p_true, pc[c], where=y == c)
        self.cat_nll -= float(np.log(np.maximum(p_true, self.eps)).sum(dtype=np.float64))

    def _add_confusion(self, y: np.ndarray, pred: np.ndarray) -> None:
        L = self.spec.n_label_values
        cidx = y * L
        cidx += pred
        cidx *= LANES
        cidx += self._lanes[:len(y)]
        self.confusion += np.bincount(cidx, minlength=L * L * LANES)

    # -- the result --------------------------------------------------------------------------------------------
    def finish(self) -> CaseStats:
        """Fold the lanes, undo the ``p * R`` scaling, merge fine bins into calibration bins and sweep counts."""
        spec, grid = self.spec, self.grid
        C, R, L = spec.n_channels, grid.resolution, spec.n_label_values
        r1 = R + 1
        cnt = self.counts.reshape(C, 2 * r1, LANES).sum(-1)
        sp = self.sums.reshape(C, 2 * r1, LANES).sum(-1) / R
        rel = np.zeros((C, grid.n_bins, 3))
        sweep = np.zeros((C, len(grid.thresholds), 2), dtype=np.int64)
        for ch in range(C):
            rel[ch], sweep[ch] = _reduce_fine(cnt[ch], sp[ch], grid)
        top_rel = None
        if not spec.has_regions:
            top_cnt = self.top_counts.reshape(2 * r1, LANES).sum(-1)
            top_sp = self.top_sums.reshape(2 * r1, LANES).sum(-1) / R
            top_rel, _ = _reduce_fine(top_cnt, top_sp, grid)
        return CaseStats(
            n_valid=self.n_voxels - self.n_ignored, n_ignored=self.n_ignored,
            confusion=self.confusion.reshape(L * L, LANES).sum(-1).reshape(L, L),
            n_pos=cnt[:, r1:].sum(1), sum_p=sp.sum(1), sum_py=sp[:, r1:].sum(1),
            sum_p2=self.sum_p2 / float(R) ** 2, nll_sum=self.nll,
            cat_nll_sum=None if spec.has_regions else self.cat_nll, reliability=rel, top_reliability=top_rel,
            sweep=sweep, n_clipped=self.n_clipped, fine_count=cnt.reshape(C, 2, r1),
            fine_psum=sp[:, :r1] + sp[:, r1:])


def _check_arrays(probabilities: np.ndarray, reference: np.ndarray, spec: TaskSpec, name: str,
                  reference_name: str) -> None:
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


def accumulate_case(probabilities: np.ndarray, reference: np.ndarray, spec: TaskSpec, grid: BinGrid = BinGrid(),
                    eps: float = DEFAULT_EPS, name: str = "probabilities", reference_name: str = "reference",
                    chunk: int = CHUNK, wait: Optional[Callable[[int, int], None]] = None) -> CaseStats:
    """Statistics of one case, read once (each chunk of probabilities is visited while it is in cache).

    ``probabilities``: ``(C, *shape)`` float16/32/64 (softmax for label models, sigmoid per region for region
    models); ``reference``: integer label map of ``shape``. ``name``/``reference_name`` appear in error messages.

    The voxels are visited channel by channel (per-channel histograms: channel ``c``'s data only), and the
    cross-channel statistics are done chunk by chunk together with the last channel (see
    :class:`CaseAccumulator`). ``wait(c, stop)``, if given, is called before the voxels ``[.., stop)`` of channel
    ``c`` are read: the array can still be filling from a background thread (see :mod:`.npz`), so a case is
    reduced while it is being inflated.
    """
    acc = CaseAccumulator(probabilities, reference, spec, grid, eps, name, reference_name, chunk)
    if wait is None:
        def wait(c, stop):
            return None
    last, n = spec.n_channels - 1, acc.n_voxels
    try:
        for c in range(last):
            for s in acc.starts:
                wait(c, min(s + acc.chunk, n))
                acc.add_channel_chunk(c, s)
        for s in acc.starts:
            wait(last, min(s + acc.chunk, n))
            acc.add_channel_chunk(last, s)
            acc.add_voxel_chunk(s)
    except EvaluationError:
        # Bad values in a file still being read may come from a damaged deflate stream, which the reader only
        # proves at its end (CRC-32): let it finish, so that damage is reported as damage, not as bad values.
        wait(-1, -1)
        raise
    return acc.finish()
