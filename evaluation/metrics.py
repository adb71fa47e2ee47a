"""Metrics from the fixed-size per-case statistics of :mod:`.accumulate` (no voxel is touched here).

Conventions (documented in docs/evaluation.md):

* hard map = nnU-Net's rule; Dice/IoU/TP/FP/FN/TN/n_pred/n_ref exactly as ``nnunetv2.evaluation
  .evaluate_predictions.compute_metrics`` (Dice and IoU are NaN when reference and prediction are both empty);
* volumes: ``count x voxel volume`` (ml for 3D images, cm^2 for 2D images, see :mod:`.inputs`); the soft
  (expected) volume is ``sum(p) x voxel volume``; ``dV = V_pred - V_ref``, ``rel_dV = dV / V_ref`` (NaN if the
  reference is empty);
* calibration, one-vs-rest per channel ``c`` with ``y = [voxel belongs to c]``: Brier ``mean (p - y)^2``
  (= scikit-learn's ``brier_score_loss``), ``one_vs_rest_ECE`` ``sum_b |sum_{i in b} y_i - sum_{i in b} p_i| / N``
  over the equal-width bins; per case overall: label models NLL ``-mean log max(p_true, eps)`` (categorical, =
  scikit-learn's ``log_loss``), Brier = mean over all channels (background included; the DSC++ paper's
  ``1/(CN) sum sum (y - p)^2``), ``top_label_ECE`` (confidence = max p, correct = argmax is the reference
  label), ``classwise_ECE`` = mean one-vs-rest ECE over all channels; region models: per-region binary NLL,
  Brier, one-vs-rest ECE and their mean over regions (``top_label_ECE`` is NaN: overlapping regions have no top
  label). Three ECEs, three names: never a bare "ECE";
* ignore-label voxels are excluded from everything (they are not counted in N).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nnunet_losses.evaluation.accumulate import BinGrid, CaseStats
from nnunet_losses.evaluation.spec import TaskSpec

NAN = float("nan")

#: per-class metrics nnU-Net writes, in its order
NNUNET_METRICS = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")
#: per-class metrics this package adds
EXTRA_METRICS = ("precision", "recall", "soft_Dice", "V_ref", "V_pred", "dV", "abs_dV", "rel_dV", "V_soft",
                 "dV_soft", "abs_dV_soft", "rel_dV_soft", "Brier", "one_vs_rest_ECE", "NLL")
#: per-case calibration of all channels together
CALIBRATION_METRICS = ("NLL", "Brier", "top_label_ECE", "classwise_ECE")


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else NAN


def _ece(rel: np.ndarray, n: float) -> float:
    """``sum_b |sum y - sum p| / n`` from a ``(B, 3)`` (count, sum p, sum y) table."""
    return float(np.abs(rel[:, 2] - rel[:, 1]).sum() / n) if n else NAN


def class_counts(confusion: np.ndarray, member: np.ndarray):
    """TP, FP, FN, TN of a class/region (boolean LUT over label values) from a reference x prediction matrix."""
    inside = confusion[member]
    outside = confusion[~member]
    tp = int(inside[:, member].sum())
    fn = int(inside[:, ~member].sum())
    fp = int(outside[:, member].sum())
    tn = int(outside[:, ~member].sum())
    return tp, fp, fn, tn


def channel_brier(stats: CaseStats) -> np.ndarray:
    n = stats.n_valid
    if not n:
        return np.full(len(stats.sum_p), NAN)
    return (stats.sum_p2 - 2 * stats.sum_py + stats.n_pos) / n


def channel_ece(stats: CaseStats) -> np.ndarray:
    return np.array([_ece(r, stats.n_valid) for r in stats.reliability])


def overall_calibration(stats: CaseStats, spec: TaskSpec) -> Dict[str, float]:
    n = stats.n_valid
    brier = channel_brier(stats)
    ece = channel_ece(stats)
    if spec.has_regions:
        nll = stats.nll_sum / n if n else np.full(spec.n_channels, NAN)
        return {"NLL": float(np.mean(nll)), "Brier": float(np.mean(brier)), "top_label_ECE": NAN,
                "classwise_ECE": float(np.mean(ece))}
    return {"NLL": _div(stats.cat_nll_sum, n), "Brier": float(np.mean(brier)),
            "top_label_ECE": _ece(stats.top_reliability, n), "classwise_ECE": float(np.mean(ece))}


def case_metrics(stats: CaseStats, spec: TaskSpec, voxel_volume: float):
    """``({class key: {metric: value}}, {overall calibration metric: value})`` of one case."""
    brier = channel_brier(stats)
    ece = channel_ece(stats)
    out = {}
    for key, cls, ch in zip(spec.keys, spec.classes, spec.class_channels):
        tp, fp, fn, tn = class_counts(stats.confusion, spec.membership(cls))
        d = {}
        if tp + fp + fn == 0:
            d["Dice"], d["IoU"] = NAN, NAN
        else:
            d["Dice"] = 2 * tp / (2 * tp + fp + fn)
            d["IoU"] = tp / (tp + fp + fn)
        d.update(FP=fp, TP=tp, FN=fn, TN=tn, n_pred=fp + tp, n_ref=fn + tp)
        d["precision"] = _div(tp, tp + fp)
        d["recall"] = _div(tp, tp + fn)
        n_pos = float(stats.n_pos[ch])
        d["soft_Dice"] = _div(2 * stats.sum_py[ch], stats.sum_p[ch] + n_pos)
        v_ref, v_pred, v_soft = (tp + fn) * voxel_volume, (tp + fp) * voxel_volume, stats.sum_p[ch] * voxel_volume
        d.update(V_ref=v_ref, V_pred=v_pred, dV=v_pred - v_ref, abs_dV=abs(v_pred - v_ref),
                 rel_dV=_div(v_pred - v_ref, v_ref), V_soft=float(v_soft), dV_soft=float(v_soft - v_ref),
                 abs_dV_soft=float(abs(v_soft - v_ref)), rel_dV_soft=_div(v_soft - v_ref, v_ref))
        d["Brier"] = float(brier[ch])
        d["one_vs_rest_ECE"] = float(ece[ch])
        if spec.has_regions:  # label models: the categorical NLL is a per-case quantity (calibration)
            d["NLL"] = _div(stats.nll_sum[ch], stats.n_valid)
        out[key] = d
    return out, overall_calibration(stats, spec)


# ---------------------------------------------------------------------------------------------------------------
# aggregation over cases
# ---------------------------------------------------------------------------------------------------------------
def nan_stats(values: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(a)
    return {"n": int(ok.sum()), "n_nan": int((~ok).sum()),
            "mean": float(a[ok].mean()) if ok.any() else NAN,
            "std": float(a[ok].std(ddof=1)) if ok.sum() > 1 else NAN,
            "median": float(np.median(a[ok])) if ok.any() else NAN}


def means(metric_per_case: List[dict], keys: Sequence[str]):
    """nnU-Net's aggregation: per class ``np.nanmean`` over cases; ``foreground_mean`` = mean over classes
    (nnU-Net drops key 0 -- never a key here: labels are foreground only, regions have no background)."""
    mean, counts = {}, {}
    for k in keys:
        rows = [c["metrics"][k] for c in metric_per_case if k in c["metrics"]]
        mean[k], counts[k] = {}, {}
        # a metric some cases lack (the soft volume of a test-set case without npz) is averaged over the cases
        # that have it: absent, not zero
        for m in dict.fromkeys(m for r in rows for m in r):
            vals = np.array([r[m] for r in rows if m in r], dtype=np.float64)
            ok = ~np.isnan(vals)
            mean[k][m] = float(vals[ok].mean()) if ok.any() else NAN
            counts[k][m] = int((~ok).sum())
    metric_names = dict.fromkeys(m for k in keys for m in mean[k])
    fg = {m: float(np.mean([mean[k][m] for k in keys if m in mean[k]])) for m in metric_names}
    return mean, fg, counts


def pooled_calibration(stats: Sequence[CaseStats], spec: TaskSpec, grid: BinGrid) -> dict:
    """Calibration of all voxels of all cases together, and the reliability-diagram tables."""
    n = sum(s.n_valid for s in stats)
    C = spec.n_channels
    rel = np.sum([s.reliability for s in stats], axis=0) if stats else np.zeros((C, grid.n_bins, 3))
    sum_p2 = np.sum([s.sum_p2 for s in stats], axis=0)
    sum_py = np.sum([s.sum_py for s in stats], axis=0)
    n_pos = np.sum([s.n_pos for s in stats], axis=0)
    brier = (sum_p2 - 2 * sum_py + n_pos) / n if n else np.full(C, NAN)
    ece = np.array([_ece(r, n) for r in rel])
    edges = grid.bin_edges()

    def table(r):
        cnt = r[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"count": cnt.astype(np.int64).tolist(),
                    "mean_probability": np.where(cnt > 0, r[:, 1] / np.maximum(cnt, 1), NAN).tolist(),
                    "observed_frequency": np.where(cnt > 0, r[:, 2] / np.maximum(cnt, 1), NAN).tolist()}

    out = {"n_voxels": int(n), "bin_edges": edges.tolist(),
           "bins": "first bin [0, 1/B] (holds p == 0), then (b/B, (b+1)/B]; p == 1 is in the last bin",
           "per_channel": {}}
    channel_names = [str(c) if spec.has_regions else str(c) for c in spec.channels]
    for ch, name in enumerate(channel_names):
        entry = {"Brier": float(brier[ch]), "one_vs_rest_ECE": float(ece[ch]), **table(rel[ch])}
        if spec.has_regions:
            nll_sum = float(np.sum([s.nll_sum[ch] for s in stats]))
            entry["NLL"] = nll_sum / n if n else NAN
        out["per_channel"][name] = entry
    if spec.has_regions:
        nll = float(np.mean([out["per_channel"][c]["NLL"] for c in channel_names]))
        out.update(NLL=nll, Brier=float(np.mean(brier)), top_label_ECE=NAN, classwise_ECE=float(np.mean(ece)))
    else:
        top = np.sum([s.top_reliability for s in stats], axis=0) if stats else np.zeros((grid.n_bins, 3))
        cat = float(np.sum([s.cat_nll_sum for s in stats]))
        out.update(NLL=cat / n if n else NAN, Brier=float(np.mean(brier)), top_label_ECE=_ece(top, n),
                   classwise_ECE=float(np.mean(ece)), top_label=table(top))
    return out


def sweep_counts(stats: CaseStats, spec: TaskSpec):
    """Per class ``(TP, FP, FN)`` arrays over thresholds (one-vs-rest: ``p_c > T``)."""
    out = {}
    for key, ch in zip(spec.keys, spec.class_channels):
        tp = stats.sweep[ch, :, 0].astype(np.int64)
        fp = stats.sweep[ch, :, 1].astype(np.int64)
        fn = int(stats.n_pos[ch]) - tp
        out[key] = (tp, fp, fn)
    return out


def _dice(tp, fp, fn):
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), NAN)


def _ratio(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), NAN)


def threshold_sweep(stats: Sequence[CaseStats], spec: TaskSpec, grid: BinGrid) -> dict:
    """Dice (mean over cases and pooled), precision, recall per class and threshold; best T per class."""
    thr = list(grid.thresholds)
    per_case = [sweep_counts(s, spec) for s in stats]
    result = {"thresholds": thr, "rule": "one-vs-rest: class c predicted where p_c > T", "per_class": {}}
    for key in spec.keys:
        tp = np.array([pc[key][0] for pc in per_case]).reshape(len(per_case), len(thr))
        fp = np.array([pc[key][1] for pc in per_case]).reshape(len(per_case), len(thr))
        fn = np.array([pc[key][2] for pc in per_case]).reshape(len(per_case), len(thr))
        dice_mean, n_def = mean_dice_over_cases(tp, fp, fn)
        TP, FP, FN = tp.sum(0), fp.sum(0), fn.sum(0)
        entry = {"Dice_mean": dice_mean.tolist(), "n_cases_defined": n_def.astype(int).tolist(),
                 "Dice_pooled": _dice(TP, FP, FN).tolist(), "precision": _ratio(TP, TP + FP).tolist(),
                 "recall": _ratio(TP, TP + FN).tolist(), "TP": TP.tolist(), "FP": FP.tolist(), "FN": FN.tolist()}
        entry.update(best_threshold_of_counts(thr, tp, fp, fn))
        result["per_class"][key] = entry
    overall = {}
    for m in ("Dice_mean", "Dice_pooled", "precision", "recall"):
        arr = np.array([result["per_class"][k][m] for k in spec.keys], dtype=np.float64)
        # mean over the classes defined at T: a class absent from every case is NaN exactly where nothing of it is
        # predicted (correct), and must not make the whole row NaN there (and 0-Dice thresholds look best)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            overall[m] = np.nanmean(arr, axis=0).tolist() if len(arr) else []
    overall.update(best_threshold(thr, np.array(overall["Dice_mean"], dtype=np.float64)))
    result["overall"] = overall
    return result


def mean_dice_over_cases(tp, fp, fn) -> Tuple[np.ndarray, np.ndarray]:
    """Per threshold, the mean Dice over the cases where it is defined, and how many those are.

    ``tp, fp, fn``: ``(n_cases, n_thresholds)`` voxel counts; a case with nothing predicted and nothing in the
    reference has no Dice (NaN) and is left out of the mean."""
    dice_cases = _dice(tp, fp, fn)
    n_def = (~np.isnan(dice_cases)).sum(0)
    with np.errstate(invalid="ignore"):
        mean = np.where(n_def > 0, np.nansum(np.nan_to_num(dice_cases, nan=0.0), 0) / np.maximum(n_def, 1), NAN)
    return mean, n_def


def best_threshold_of_counts(thresholds: Sequence[float], tp, fp, fn) -> dict:
    """The best threshold of a set of cases from their ``(n_cases, n_thresholds)`` counts: the highest mean Dice
    (:func:`best_threshold`), or -- no reference voxel in any of these cases -- the fewest false positives
    (:func:`best_threshold_without_reference`). The one rule for the in-sample sweep and the cross-fitted choice."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    dice_mean, _ = mean_dice_over_cases(tp, fp, fn)
    if (tp + fn).sum() == 0:  # no reference voxel of this class in any of the cases
        return best_threshold_without_reference(thresholds, fp.sum(0), dice_mean)
    return best_threshold(thresholds, dice_mean)


def _closest_to_half(thresholds: Sequence[float], candidates: Sequence[int]) -> int:
    """Tie rule: the threshold closest to 0.5 (nnU-Net's own cut), then the lower one."""
    return min(candidates, key=lambda j: (abs(thresholds[j] - 0.5), thresholds[j]))


def best_threshold(thresholds: Sequence[float], dice: np.ndarray) -> dict:
    """Threshold with the highest mean Dice; ties go to the one closest to 0.5 (nnU-Net's own cut), then to the
    lower one."""
    dice = np.asarray(dice, dtype=np.float64)
    if not np.isfinite(dice).any():
        return {"best_threshold": NAN, "best_Dice_mean": NAN, "best_threshold_rule": "no threshold has a Dice"}
    top = np.nanmax(dice)
    i = _closest_to_half(thresholds, [i for i, d in enumerate(dice) if np.isfinite(d) and d >= top - 1e-12])
    return {"best_threshold": float(thresholds[i]), "best_Dice_mean": float(dice[i]),
            "best_threshold_rule": "highest Dice_mean"}


def best_threshold_without_reference(thresholds: Sequence[float], false_positives: np.ndarray,
                                     dice: np.ndarray) -> dict:
    """A class with no reference voxel in any case: Dice is 0 wherever something is predicted and undefined
    (NaN: the correct, empty prediction) elsewhere, so "highest Dice" would pick a threshold that predicts
    false positives. The best threshold predicts the fewest voxels of it -- ideally none -- ties as
    :func:`best_threshold`."""
    fp = np.asarray(false_positives, dtype=np.float64)
    if not len(fp):
        return best_threshold(thresholds, dice)
    i = _closest_to_half(thresholds, [j for j, f in enumerate(fp) if f == fp.min()])
    return {"best_threshold": float(thresholds[i]), "best_Dice_mean": float(dice[i]),
            "best_threshold_rule": "no reference voxel in any case: fewest false-positive voxels"}


def size_deciles(metric_per_case: List[dict], keys: Sequence[str], n_groups: int = 10) -> dict:
    """Mean Dice per decile of reference volume (cases with an empty reference are left out)."""
    out = {}
    for k in keys:
        rows = [(c["metrics"][k]["V_ref"], c["metrics"][k]["Dice"], c["metrics"][k]["soft_Dice"])
                for c in metric_per_case if k in c["metrics"] and c["metrics"][k]["n_ref"] > 0]
        rows.sort(key=lambda r: r[0])
        groups = np.array_split(np.arange(len(rows)), min(n_groups, len(rows))) if rows else []
        entry = {"n_cases": [], "V_ref_min": [], "V_ref_max": [], "Dice_mean": [], "soft_Dice_mean": [],
                 "n_empty_reference_left_out": sum(1 for c in metric_per_case
                                                   if k in c["metrics"] and c["metrics"][k]["n_ref"] == 0)}
        for g in groups:
            sel = [rows[i] for i in g]
            entry["n_cases"].append(len(sel))
            entry["V_ref_min"].append(float(sel[0][0]))
            entry["V_ref_max"].append(float(sel[-1][0]))
            entry["Dice_mean"].append(float(np.nanmean([r[1] for r in sel])))
            entry["soft_Dice_mean"].append(float(np.nanmean([r[2] for r in sel])))
        out[k] = entry
    return out


def dice_jaccard_check(metric_per_case: List[dict], keys: Sequence[str]) -> dict:
    """Seed 002's relations: per case ``J = D / (2 - D)`` (so ``J <= D``), and over cases
    ``E[1 - J] <= phi(E[1 - D])`` with ``phi(x) = 2x / (1 + x)`` (Jensen; also ``E[J] <= E[D]``)."""
    out = {}
    for k in keys:
        pairs = np.array([(c["metrics"][k]["Dice"], c["metrics"][k]["IoU"]) for c in metric_per_case
                          if k in c["metrics"] and not math.isnan(c["metrics"][k]["Dice"])], dtype=np.float64)
        if not len(pairs):
            out[k] = {"n_cases": 0}
            continue
        d, j = pairs[:, 0], pairs[:, 1]
        one_minus_d = 1 - d.mean()
        phi = 2 * one_minus_d / (1 + one_minus_d)
        out[k] = {"n_cases": int(len(d)), "max_abs_error_J_vs_D_over_2_minus_D": float(np.max(np.abs(j - d / (2 - d)))),
                  "mean_Dice": float(d.mean()), "mean_IoU": float(j.mean()), "one_minus_mean_IoU": float(1 - j.mean()),
                  "phi_of_one_minus_mean_Dice": float(phi),
                  "holds": bool(np.all(j <= d + 1e-12) and (1 - j.mean()) <= phi + 1e-12)}
    return out
