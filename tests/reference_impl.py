"""Slow, obvious float64 reference implementations of every loss of nnunet_losses, written from the papers.

Nothing here imports nnunet_losses (or torch): softmax, sigmoid, the overlap statistics, the Lovász extension,
... are written out with plain Python/numpy loops over samples, classes and voxels, so that a test comparing
the library with these functions compares two independent implementations of the same equation.

Papers (``/work/shared/papers``):

* [DSC++] Yeung et al. 2022, "Calibrating the Dice loss to handle neural network overconfidence":
  CE Eq. 1, Focal Eq. 2, DSC Eq. 3-5, DSC++ Eq. 9, Combo Eq. 13-14, Tversky Eq. 15-16, Focal Tversky Eq. 17,
  Unified Focal Eq. 18-21, defaults Table 2.
* [DJ] Bertels et al. 2019, "Optimizing the Dice score and Jaccard index ...": CE, weighted CE (1/(2p),
  1/(2-2p)), soft Dice, soft Jaccard, Lovász; D/J relations Eq. 4 and Prop. 1.
* [Lovász] Berman et al. 2018: the original (non-vectorised) ``lovasz_softmax_flat`` / ``lovasz_hinge_flat`` and
  ``lovasz_grad``, ported here line by line to plain Python.

Conventions of the library that differ from (or go beyond) the papers are those documented in the library's
docstrings; where the reference follows such a convention it says so in a comment ("CONVENTION:").

Input layout (nnU-Net's):

* label (softmax) mode: ``logits`` (B, C, *spatial), ``target`` (B, 1, *spatial) integer labels; voxels whose
  label equals ``ignore_label`` are dropped;
* region (sigmoid) mode: ``logits`` (B, R, *spatial), ``target`` (B, R, *spatial) binary, or (B, R + 1, *spatial)
  with an ignore label, the last channel being 1 for ignored voxels (dropped).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

SMOOTH = 1e-5  # nnU-Net's default smooth for every overlap loss


# ----------------------------------------------------------------------------------------------------------------
# random test data (deterministic)
# ----------------------------------------------------------------------------------------------------------------
def seed_of(*parts) -> int:
    """A stable seed from any printable parts (Python's ``hash`` of a str changes between runs)."""
    return zlib.crc32(repr(parts).encode())


def make_case(region: bool, n_channels: int, spatial: Sequence[int], with_ignore: bool, seed: int,
              batch: int = 2, logit_scale: float = 1.5):
    """Random ``(logits, target, ignore_label)`` in nnU-Net's layout, float64 logits.

    Label mode: labels 0..C-1, sample 0 never contains the last class when C >= 3 (absent classes matter for
    Lovász ``only_present`` and per-sample Dice); ignored voxels get the label ``C`` (nnU-Net puts the ignore
    label last). Region mode: random binary maps, region 0 is empty in sample 1 when R >= 2; ignored voxels
    are flagged in an extra last channel. About 20% of the voxels are ignored.
    """
    rng = np.random.default_rng(seed)
    spatial = tuple(spatial)
    logits = rng.normal(0.0, logit_scale, size=(batch, n_channels) + spatial)
    ignored = rng.random((batch, 1) + spatial) < 0.2 if with_ignore else np.zeros((batch, 1) + spatial, bool)
    if with_ignore:  # make sure at least one voxel is ignored and at least one is not, in every sample
        for b in range(batch):
            flat = ignored[b].reshape(-1)
            flat[0], flat[1] = True, False
    if region:
        target = (rng.random((batch, n_channels) + spatial) < 0.4).astype(np.float64)
        if n_channels >= 2:
            target[1, 0] = 0.0
        for b in range(batch):
            for r in range(n_channels):  # every region occurs somewhere (on a valid voxel) unless emptied above
                if not (b == 1 and r == 0 and n_channels >= 2):
                    target[(b, r) + (0,) * (len(spatial) - 1) + (1,)] = 1.0
        ignore_label = None
        if with_ignore:
            target = np.concatenate([target, ignored.astype(np.float64)], axis=1)
            ignore_label = n_channels  # any int: region mode only needs "there is an ignore channel"
        return logits, target, ignore_label
    labels = rng.integers(0, n_channels, size=(batch, 1) + spatial)
    if n_channels >= 3:
        labels[0] = rng.integers(0, n_channels - 1, size=(1,) + spatial)
    # every sample has a foreground voxel of class 1 (on a valid voxel)
    for b in range(batch):
        labels[(b, 0) + (0,) * (len(spatial) - 1) + (1,)] = 1
    ignore_label = None
    if with_ignore:
        ignore_label = n_channels
        labels = np.where(ignored, ignore_label, labels)
    return logits, labels.astype(np.int64), ignore_label


# ----------------------------------------------------------------------------------------------------------------
# nonlinearities, one voxel at a time
# ----------------------------------------------------------------------------------------------------------------
def softmax(z: Sequence[float]) -> List[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass
class Voxel:
    z: List[float]      # logits of every channel
    p: List[float]      # softmax (labels) / sigmoid (regions) probabilities
    y: List[float]      # one-hot target (labels) / region memberships (regions)
    t: Optional[int]    # class label (label mode only)


def valid_voxels(logits, target, region: bool, ignore_label: Optional[int]) -> List[List[Voxel]]:
    """For every sample, the list of its non-ignored voxels (ignored voxels are dropped, as in Berman's
    ``flatten_probas(..., ignore)`` and as nnU-Net's masks do).

    Label mode takes a label map ``(B, 1, ...)`` or a soft target of class probabilities ``(B, C, ...)``; region
    mode binary or soft region maps. With an ignore label a soft or region target has one more channel, the last,
    1 = ignored."""
    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target)
    n_samples, n_channels = logits.shape[:2]
    soft_labels = not region and target.shape[1] > 1
    out = []
    for b in range(n_samples):
        voxels = []
        for idx in np.ndindex(*logits.shape[2:]):
            z = [float(logits[(b, k) + idx]) for k in range(n_channels)]
            if region or soft_labels:
                if ignore_label is not None and target[(b, n_channels) + idx] == 1:
                    continue
                y = [float(target[(b, k) + idx]) for k in range(n_channels)]
                voxels.append(Voxel(z, [sigmoid(v) for v in z] if region else softmax(z), y, None))
            else:
                t = int(target[(b, 0) + idx])
                if ignore_label is not None and t == ignore_label:
                    continue
                voxels.append(Voxel(z, softmax(z), [1.0 if k == t else 0.0 for k in range(n_channels)], t))
        out.append(voxels)
    return out


def selected_channels(region: bool, n_channels: int, do_bg: bool) -> List[int]:
    """Channels an overlap/Lovász term looks at. CONVENTION (nnU-Net): ``do_bg=False`` drops the background
    class 0 of a softmax output; region maps have no background channel, so all regions always count."""
    if region:
        return list(range(n_channels))
    return list(range(0 if do_bg else 1, n_channels))


def mean(values: Sequence[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# ----------------------------------------------------------------------------------------------------------------
# distribution-based losses: CE, weighted CE, Focal
# ----------------------------------------------------------------------------------------------------------------
def _voxel_mean(logits, target, region, ignore_label, label_term, region_term) -> float:
    """Mean of per-voxel terms over valid voxels (labels) or valid (voxel, region) pairs (regions); 0 if none.

    ``label_term(p, c)`` is the term of class c's log-likelihood, weighted by y_c and summed over the classes
    (one term for a one-hot y; the expectation over the reference for a soft y, as torch's cross_entropy with
    probabilities)."""
    total, count = 0.0, 0
    for voxels in valid_voxels(logits, target, region, ignore_label):
        for v in voxels:
            if region:
                for r in range(len(v.z)):
                    total += region_term(v.p[r], v.y[r], r)
                    count += 1
            else:
                total += sum(y_c * label_term(v.p, c) for c, y_c in enumerate(v.y) if y_c != 0)
                count += 1
    return total / count if count else 0.0


def xlogy(y: float, p: float) -> float:
    """y log p with 0 log 0 = 0 (a soft region target can be exactly 0 or 1 where p underflows)."""
    return 0.0 if y == 0 else y * math.log(p)


def ref_ce(logits, target, region=False, ignore_label=None) -> float:
    """[DSC++] Eq. 1: -1/N sum_i sum_c y_ic log p_ic; regions: binary CE averaged over voxels and regions."""
    return _voxel_mean(logits, target, region, ignore_label,
                       lambda p, t: -math.log(p[t]),
                       lambda p, y, r: -(xlogy(y, p) + xlogy(1 - y, 1 - p)))


def ref_wce(logits, target, class_priors, region=False, ignore_label=None) -> float:
    """[DJ] Sect. 3: foreground weight 1/(2p), background 1/(2-2p), p the foreground prior.

    CONVENTION (multi-class generalisation, documented): label mode weight 1/(C p_c) for class c (= the paper's
    weights for C = 2); region mode the paper's binary weights per region. Weighted terms averaged over voxels.
    """
    pri = [float(v) for v in class_priors]
    n = len(pri)
    return _voxel_mean(logits, target, region, ignore_label,
                       lambda p, t: -math.log(p[t]) / (n * pri[t]),
                       lambda p, y, r: -(xlogy(y, p) / (2 * pri[r]) + xlogy(1 - y, 1 - p) / (2 - 2 * pri[r])))


def ref_focal(logits, target, region=False, ignore_label=None, alpha: Optional[float] = 0.5,
              gamma: float = 2.0) -> float:
    """[DSC++] Eq. 2 (Table 2 defaults alpha = 0.5, gamma = 2): -alpha_t (1 - p_t)^gamma log p_t.

    CONVENTION: alpha weights foreground classes (region voxels), 1 - alpha background; alpha=None: weight 1.
    """
    a_fg, a_bg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)

    def label_term(p, t):
        return -(a_bg if t == 0 else a_fg) * (1 - p[t]) ** gamma * math.log(p[t])

    def region_term(p, y, r):
        return -(a_fg * (1 - p) ** gamma * xlogy(y, p) + a_bg * p ** gamma * xlogy(1 - y, 1 - p))

    return _voxel_mean(logits, target, region, ignore_label, label_term, region_term)


# ----------------------------------------------------------------------------------------------------------------
# overlap statistics
# ----------------------------------------------------------------------------------------------------------------
def ref_stats(logits, target, region, ignore_label, channels, batch_dice: bool, gamma: float = 1.0):
    """Soft TP, FP, FN ([DSC++] Eq. 9) of every channel, per sample (or summed over the batch).

    TP = sum_i p_i y_i,  FP = sum_i (p_i (1 - y_i))^gamma,  FN = sum_i ((1 - p_i) y_i)^gamma over valid voxels.
    Returns a list (one entry per sample, or one for the batch) of dicts channel -> (TP, FP, FN).
    """
    groups = []
    for voxels in valid_voxels(logits, target, region, ignore_label):
        row = {}
        for c in channels:
            tp = fp = fn = 0.0
            for v in voxels:
                p, y = v.p[c], v.y[c]
                tp += p * y
                fp += (p * (1 - y)) ** gamma
                fn += ((1 - p) * y) ** gamma
            row[c] = (tp, fp, fn)
        groups.append(row)
    if batch_dice:  # nnU-Net's batch dice: statistics summed over the samples before the score
        groups = [{c: tuple(sum(g[c][k] for g in groups) for k in range(3)) for c in channels}]
    return groups


def _mean_score(groups, score) -> float:
    """CONVENTION: scores are averaged over samples (unless batch dice) and channels -- [DSC++] Eq. 3/9 average
    over classes too; Tversky/Focal Tversky (Eq. 15/17) sum over classes, the library averages (documented)."""
    return mean(score(*stats) for g in groups for stats in g.values())


def dice(tp, fp, fn, smooth):
    """[DSC++] Eq. 5 / 9 with nnU-Net's smoothing: (2TP + s) / (2TP + FP + FN + s)."""
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth)


def jaccard(tp, fp, fn, smooth):
    """[DJ] soft Jaccard: (TP + s) / (TP + FP + FN + s) = (sum py + s) / (sum p + sum y - sum py + s)."""
    return (tp + smooth) / (tp + fp + fn + smooth)


def tversky(tp, fp, fn, alpha, beta, smooth):
    """[DSC++] Eq. 16: TI = (TP + s) / (TP + alpha FP + beta FN + s); alpha weights FP, beta FN."""
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _stats(logits, target, region, ignore_label, batch_dice, do_bg, gamma=1.0):
    channels = selected_channels(region, np.asarray(logits).shape[1], do_bg)
    return ref_stats(logits, target, region, ignore_label, channels, batch_dice, gamma)


def ref_softdice(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False,
                 smooth=SMOOTH) -> float:
    """[DSC++] Eq. 3-4 / [DJ]: 1 - mean (2 sum p y + s) / (sum p + sum y + s)."""
    groups = _stats(logits, target, region, ignore_label, batch_dice, do_bg)
    return 1 - _mean_score(groups, lambda tp, fp, fn: dice(tp, fp, fn, smooth))


def ref_softjaccard(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False,
                    smooth=SMOOTH) -> float:
    groups = _stats(logits, target, region, ignore_label, batch_dice, do_bg)
    return 1 - _mean_score(groups, lambda tp, fp, fn: jaccard(tp, fp, fn, smooth))


def ref_dscpp(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False, smooth=SMOOTH,
              gamma=2.0) -> float:
    """[DSC++] Eq. 9 (gamma = 2, the paper's choice): FP and FN terms raised to gamma per voxel."""
    groups = _stats(logits, target, region, ignore_label, batch_dice, do_bg, gamma)
    return 1 - _mean_score(groups, lambda tp, fp, fn: dice(tp, fp, fn, smooth))


def ref_tversky(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False, smooth=SMOOTH,
                alpha=0.3, beta=0.7, gamma_pp=1.0) -> float:
    """[DSC++] Eq. 15-16, Table 2 (alpha = 0.3, beta = 0.7). ``gamma_pp`` != 1: Tversky++ (Eq. 9's FP/FN).

    CONVENTION: mean over classes (the paper sums, Eq. 15)."""
    groups = _stats(logits, target, region, ignore_label, batch_dice, do_bg, gamma_pp)
    return 1 - _mean_score(groups, lambda tp, fp, fn: tversky(tp, fp, fn, alpha, beta, smooth))


def ref_tversky_pp(*args, gamma_pp=2.0, **kwargs) -> float:
    """Tversky++ ([DSC++] Sect. 3: the DSC component replaced by DSC++'s, gamma = 2)."""
    return ref_tversky(*args, gamma_pp=gamma_pp, **kwargs)


def ref_focal_tversky(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False,
                      smooth=SMOOTH, alpha=0.3, beta=0.7, gamma=4 / 3, gamma_pp=1.0) -> float:
    """[DSC++] Eq. 17, Table 2 (alpha 0.3, beta 0.7, gamma 4/3): (1 - TI)^(1/gamma).

    CONVENTION: mean over classes (the paper sums)."""
    groups = _stats(logits, target, region, ignore_label, batch_dice, do_bg, gamma_pp)
    return _mean_score(groups, lambda tp, fp, fn: (1 - tversky(tp, fp, fn, alpha, beta, smooth)) ** (1 / gamma))


def ref_focal_tversky_pp(*args, gamma_pp=2.0, **kwargs) -> float:
    return ref_focal_tversky(*args, gamma_pp=gamma_pp, **kwargs)


def ref_combo(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False, smooth=SMOOTH,
              alpha=0.5, beta=0.5, gamma_pp=1.0) -> float:
    """[DSC++] Eq. 13-14 (Table 2: alpha = beta = 0.5): alpha L_mCE + (1 - alpha)(1 - DSC).

    L_mCE = -1/N sum_i beta y_i ln p_i + (1 - beta)(1 - y_i) ln(1 - p_i).
    CONVENTION: the paper's ``- (1-alpha) DSC`` is shifted by the constant (1 - alpha); multi-class: L_mCE is
    evaluated one-vs-rest on the channels the Dice term uses and averaged over (voxel, channel) pairs.
    ``gamma_pp`` != 1: Combo++ (DSC++ in place of DSC).
    """
    channels = selected_channels(region, np.asarray(logits).shape[1], do_bg)
    total, count = 0.0, 0
    for voxels in valid_voxels(logits, target, region, ignore_label):
        for v in voxels:
            for c in channels:
                p, y = v.p[c], v.y[c]
                total += -(beta * xlogy(y, p) + (1 - beta) * xlogy(1 - y, 1 - p))
                count += 1
    mce = total / count if count else 0.0
    groups = ref_stats(logits, target, region, ignore_label, channels, batch_dice, gamma_pp)
    dsc = _mean_score(groups, lambda tp, fp, fn: dice(tp, fp, fn, smooth))
    return alpha * mce + (1 - alpha) * (1 - dsc)


def ref_combo_pp(*args, gamma_pp=2.0, **kwargs) -> float:
    return ref_combo(*args, gamma_pp=gamma_pp, **kwargs)


def ref_unified_focal(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=True,
                      smooth=SMOOTH, lambda_=0.5, delta=0.6, gamma=0.5, asymmetric=True, gamma_pp=1.0) -> float:
    """[DSC++] Eq. 18-21 (Table 2: lambda 0.5, delta 0.6, gamma 0.5): lambda L_aF + (1 - lambda) L_aFT.

    L_aF (Eq. 19), mean over valid voxels: background voxel -(1-delta)(1-p_bg)^gamma log p_bg; foreground
    (rare) voxel of class c -delta log p_c. Regions: per region, y=1 like foreground, y=0 like background with
    p_bg = 1 - p.
    L_aFT (Eq. 20-21): TI = TP / (TP + (1-delta) FP + delta FN) (+ smooth); background term 1 - TI, foreground
    terms (1 - TI)^(1-gamma).
    CONVENTIONS (documented by the library): lambda weights the focal term (Eq. 18); Eq. 20's rare/background
    assignment follows the original Unified Focal paper and code (background 1 - TI, foreground enhanced) --
    the extracted text of Eq. 20 is ambiguous; terms averaged (not summed) over classes (and samples); the
    focal term always uses every class; without the background channel (do_bg=False, or regions) every term
    is enhanced. ``asymmetric=False``: (1-p)^gamma on every class and (1-TI)^(1-gamma) on every term.
    """
    n_channels = np.asarray(logits).shape[1]
    fg_gamma = 0.0 if asymmetric else gamma

    def label_term(p, t):
        if t == 0:
            return -(1 - delta) * (1 - p[0]) ** gamma * math.log(p[0])
        return -delta * (1 - p[t]) ** fg_gamma * math.log(p[t])

    def region_term(p, y, r):  # y = 1 like a foreground voxel, y = 0 like background (probability 1 - p); a soft
        # y weights the two
        return (-delta * (1 - p) ** fg_gamma * xlogy(y, p)
                - (1 - delta) * p ** gamma * xlogy(1 - y, 1 - p))  # (1 - (1-p))^gamma

    focal = _voxel_mean(logits, target, region, ignore_label, label_term, region_term)
    channels = selected_channels(region, n_channels, do_bg)
    groups = ref_stats(logits, target, region, ignore_label, channels, batch_dice, gamma_pp)
    terms = []
    for g in groups:
        for c, (tp, fp, fn) in g.items():
            ti = tversky(tp, fp, fn, 1 - delta, delta, smooth)
            if asymmetric and not region and c == 0:
                terms.append(1 - ti)
            else:
                terms.append((1 - ti) ** (1 - gamma))
    return lambda_ * focal + (1 - lambda_) * mean(terms)


def ref_unified_focal_pp(*args, gamma_pp=2.0, **kwargs) -> float:
    return ref_unified_focal(*args, gamma_pp=gamma_pp, **kwargs)


def ref_dice_ce(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False, smooth=SMOOTH,
                weight_ce=1.0, weight_dice=1.0) -> float:
    """nnU-Net's default (Isensee et al.): weight_ce CE + weight_dice (1 - soft Dice), Dice without background.

    CONVENTION: region mode with an ignore label averages the BCE over (valid voxel, region) pairs (nnU-Net
    divides the region sum by the number of valid voxels; documented difference)."""
    return (weight_ce * ref_ce(logits, target, region, ignore_label)
            + weight_dice * ref_softdice(logits, target, region, ignore_label, batch_dice, do_bg, smooth))


# ----------------------------------------------------------------------------------------------------------------
# [JDT] Wang, Popordanoska, Bertels, Lemmens, Blaschko 2023: Dice semimetric / Jaccard metric losses
# ----------------------------------------------------------------------------------------------------------------
def metric_norms(logits, target, region, ignore_label, batch_dice, do_bg):
    """Per sample (or for the batch) and channel: (|x|_1, |y|_1, |x - y|_1) over the valid voxels."""
    channels = selected_channels(region, np.asarray(logits).shape[1], do_bg)
    groups = []
    for voxels in valid_voxels(logits, target, region, ignore_label):
        groups.append({c: (sum(v.p[c] for v in voxels), sum(v.y[c] for v in voxels),
                           sum(abs(v.p[c] - v.y[c]) for v in voxels)) for c in channels})
    if batch_dice:
        groups = [{c: tuple(sum(g[c][k] for g in groups) for k in range(3)) for c in channels}]
    return groups


def ref_metric_tversky(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False,
                       smooth=SMOOTH, alpha=0.3, beta=0.7) -> float:
    """[JDT]: I = (|x|_1 + |y|_1 - |x - y|_1) / 2; 1 - (I + s) / (I + alpha (|x|_1 - I) + beta (|y|_1 - I) + s).
    CONVENTION: mean over samples (unless batch dice) and channels, nnU-Net's smooth, as the other overlap losses."""
    scores = []
    for g in metric_norms(logits, target, region, ignore_label, batch_dice, do_bg):
        for x1, y1, d1 in g.values():
            inter = (x1 + y1 - d1) / 2
            scores.append((inter + smooth) / (inter + alpha * (x1 - inter) + beta * (y1 - inter) + smooth))
    return 1 - mean(scores)


def ref_dml(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False, smooth=SMOOTH) -> float:
    """[JDT] Dice semimetric loss: 1 - (2I + s) / (|x|_1 + |y|_1 + s)."""
    scores = []
    for g in metric_norms(logits, target, region, ignore_label, batch_dice, do_bg):
        for x1, y1, d1 in g.values():
            scores.append((x1 + y1 - d1 + smooth) / (x1 + y1 + smooth))
    return 1 - mean(scores)


def ref_jml(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False, smooth=SMOOTH) -> float:
    """[JDT] Jaccard metric loss: 1 - (I + s) / (|x|_1 + |y|_1 - I + s)."""
    scores = []
    for g in metric_norms(logits, target, region, ignore_label, batch_dice, do_bg):
        for x1, y1, d1 in g.values():
            inter = (x1 + y1 - d1) / 2
            scores.append((inter + smooth) / (x1 + y1 - inter + smooth))
    return 1 - mean(scores)


# ----------------------------------------------------------------------------------------------------------------
# Lovász (Berman et al. 2018), original non-vectorised algorithm
# ----------------------------------------------------------------------------------------------------------------
def lovasz_grad(gt_sorted: Sequence[float]) -> List[float]:
    """Berman's ``lovasz_grad``: gradient of the Lovász extension w.r.t. sorted errors, for ONE class's
    foreground indicator sorted by that class's errors (decreasing)."""
    gts = sum(gt_sorted)
    jaccard_at = []
    cum_fg, cum_bg = 0.0, 0.0
    for g in gt_sorted:
        cum_fg += g
        cum_bg += 1 - g
        intersection = gts - cum_fg
        union = gts + cum_bg
        jaccard_at.append(1.0 - intersection / union)
    return [jaccard_at[0]] + [jaccard_at[k] - jaccard_at[k - 1] for k in range(1, len(jaccard_at))]


def jaccard_set_loss(mispredicted: Sequence[bool], fg: Sequence[float]) -> float:
    """Berman's set function: Delta_J(M) = 1 - |fg \\ M| / |fg u M| (0 for M = {})."""
    if not any(mispredicted):
        return 0.0
    inter = sum(1 for m, g in zip(mispredicted, fg) if g and not m)
    union = sum(1 for m, g in zip(mispredicted, fg) if g or m)
    return 1.0 - inter / union


def lovasz_extension_by_definition(errors: Sequence[float], fg: Sequence[float]) -> float:
    """Lovász extension of Delta_J at errors m >= 0, as the integral of level sets (independent of
    ``lovasz_grad``): f(m) = sum_k (m_(k) - m_(k+1)) Delta_J({top k errors}), m_(n+1) = 0."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total = 0.0
    for k in range(len(order)):
        top = [False] * len(errors)
        for i in order[:k + 1]:
            top[i] = True
        nxt = errors[order[k + 1]] if k + 1 < len(order) else 0.0
        total += (errors[order[k]] - nxt) * jaccard_set_loss(top, fg)
    return total


def _lovasz_flat(errors: Sequence[float], fg: Sequence[float], hinge: bool) -> float:
    """Berman's ``lovasz_softmax_flat`` inner loop (one class) / ``lovasz_hinge_flat`` (one region)."""
    if not errors:
        return 0.0  # Berman: "only void pixels, the gradients should be 0"
    perm = sorted(range(len(errors)), key=lambda i: -errors[i])  # torch.sort(errors, descending=True)
    errors_sorted = [errors[i] for i in perm]
    fg_sorted = [fg[i] for i in perm]
    grad = lovasz_grad(fg_sorted)
    if hinge:  # torch.dot(F.relu(errors_sorted), grad)
        return sum(max(e, 0.0) * g for e, g in zip(errors_sorted, grad))
    return sum(e * g for e, g in zip(errors_sorted, grad))


def ref_lovasz(logits, target, region=False, ignore_label=None, batch_dice=False, do_bg=False,
               only_present=True) -> float:
    """Berman et al.'s Lovász-softmax (labels) / Lovász-hinge (regions).

    ``batch_dice=False`` = Berman's ``per_image=True``: one loss per image, averaged over images; True: all
    voxels of the batch in one flat problem. Ignored voxels are dropped (``flatten_probas(..., ignore)``).
    Softmax: for each class c of the selected classes, errors |fg_c - p_c| sorted decreasingly and
    ``lovasz_grad`` of *that class's* foreground; classes absent from the image skipped when ``only_present``
    (Berman's ``classes='present'``); mean over the classes (0 if none). Hinge: per region errors
    1 - x s (s = 2y - 1), relu after sorting.
    CONVENTIONS: ``do_bg`` selects classes as for the overlap losses (Berman includes class 0); regions are
    averaged over regions (Berman's hinge is binary) and ``only_present`` does not apply to them.
    """
    n_channels = np.asarray(logits).shape[1]
    channels = selected_channels(region, n_channels, do_bg)
    per_sample = valid_voxels(logits, target, region, ignore_label)
    groups = [[v for voxels in per_sample for v in voxels]] if batch_dice else per_sample
    group_losses = []
    for voxels in groups:
        class_losses = []
        for c in channels:
            fg = [v.y[c] for v in voxels]
            if not region and only_present and sum(fg) == 0:
                continue
            if region:
                errors = [1.0 - v.z[c] * (2 * v.y[c] - 1) for v in voxels]
            else:
                errors = [abs(v.y[c] - v.p[c]) for v in voxels]
            class_losses.append(_lovasz_flat(errors, fg, hinge=region))
        group_losses.append(mean(class_losses))
    return mean(group_losses)


# ----------------------------------------------------------------------------------------------------------------
# [DJ] Dice / Jaccard of hard binary masks
# ----------------------------------------------------------------------------------------------------------------
def hard_dice(y: np.ndarray, y_hat: np.ndarray) -> float:
    """[DJ] Eq. 2: D = 2 |y n y~| / (|y| + |y~|)."""
    y, y_hat = np.asarray(y, bool), np.asarray(y_hat, bool)
    return 2 * float(np.sum(y & y_hat)) / float(np.sum(y) + np.sum(y_hat))


def hard_jaccard(y: np.ndarray, y_hat: np.ndarray) -> float:
    """[DJ] Eq. 2: J = |y n y~| / |y u y~|."""
    y, y_hat = np.asarray(y, bool), np.asarray(y_hat, bool)
    return float(np.sum(y & y_hat)) / float(np.sum(y | y_hat))


#: name -> reference function; every name of nnunet_losses.available_losses() must be here.
REFERENCES = {
    "ce": ref_ce, "wce": ref_wce, "focal": ref_focal, "softdice": ref_softdice, "softjaccard": ref_softjaccard,
    "lovasz": ref_lovasz, "dscpp": ref_dscpp, "tversky": ref_tversky, "focal_tversky": ref_focal_tversky,
    "combo": ref_combo, "unified_focal": ref_unified_focal, "tversky_pp": ref_tversky_pp,
    "focal_tversky_pp": ref_focal_tversky_pp, "combo_pp": ref_combo_pp, "unified_focal_pp": ref_unified_focal_pp,
    "dice_ce": ref_dice_ce, "dml": ref_dml, "jml": ref_jml, "metric_tversky": ref_metric_tversky,
}
