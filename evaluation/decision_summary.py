"""Every decision rule per case and class, and their means: argmax, fixed T, best T (in-sample and cross-fitted),
and the voxel rules of :mod:`.decisions`.

Threshold rules come from the sweep's exact counts (``p_c > T``, one-vs-rest, T on the sweep's grid):

* ``fixed_T``: the given threshold (default 0.5);
* ``best_T_in_sample``: the sweep's ``best_threshold`` (highest mean Dice over **all** cases, the case itself
  included) -- optimistic: the threshold was chosen on the very cases it is scored on;
* ``best_T_crossfit``: the same choice made for each case **without it**: on the other folds' cases (trainer
  folders with two or more folds: the threshold of fold f's cases is chosen on the cases of every other fold, as
  nnU-Net's cross-validation would in deployment), else leave-one-case-out (prediction folders, one fold).
  A case whose training cases define no Dice gets NaN.

Means are nanmeans over cases (nnU-Net's convention for empty-empty Dice), with the NaN count alongside.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

from nnunet_losses.evaluation.decisions import VOXEL_RULES, Cut, decision_metrics
from nnunet_losses.evaluation.metrics import best_threshold_of_counts, sweep_counts

THRESHOLD_RULES = ("fixed_T", "best_T_in_sample", "best_T_crossfit")
RULES = ("argmax",) + THRESHOLD_RULES + VOXEL_RULES
RULE_DESCRIPTIONS = {
    "argmax": "nnU-Net's hard map (argmax; regions p > 0.5 overwrite)",
    "fixed_T": "p_c > T one-vs-rest, T fixed",
    "best_T_in_sample": "p_c > T, T = best mean Dice over all cases (optimistic: chosen on the scored cases)",
    "best_T_crossfit": "p_c > T, T = best mean Dice over the other folds' cases (leave-one-case-out without folds)",
    "dice_optimal": "Nordstrom: keep p >= D*/2, D* = max_k 2 sum_{i<=k} psi_i / (sum p + k)",
    "rankseg_rma": "RankSEG-RMA: top tau maximising 2 sum_{i<=tau} psi_i / (sum p + 1 + tau); empty if max p <= 0.5",
    "volume_matched": "top round(sum p) voxels",
}
SUMMARY_FIELDS = ("Dice", "IoU", "dV", "abs_dV")


def crossfit_groups(folds: Sequence):
    """``(held-out groups of case indices, scheme)``: one group per fold with >= 2 folds, else one per case."""
    distinct = sorted({f for f in folds if f is not None}, key=str)
    if len(distinct) >= 2 and all(f is not None for f in folds):
        return [[i for i, f in enumerate(folds) if f == d] for d in distinct], "other folds"
    return [[i] for i in range(len(folds))], "leave one case out"


def crossfit_thresholds(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, thresholds: Sequence[float],
                        groups: List[List[int]]) -> np.ndarray:
    """Per case, the best threshold of the cases outside its group (NaN if undefined), by the sweep's own rule
    (:func:`~nnunet_losses.evaluation.metrics.best_threshold_of_counts`: highest mean Dice; fewest false positives
    where those cases hold no reference voxel of the class).

    ``tp, fp, fn``: ``(n_cases, n_thresholds)`` voxel counts per case and threshold."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    out = np.full(tp.shape[0], math.nan)
    for g in groups:
        train = np.ones(tp.shape[0], dtype=bool)
        train[g] = False
        out[g] = best_threshold_of_counts(thresholds, tp[train], fp[train], fn[train])["best_threshold"]
    return out


def case_decision_table(stats, spec, thresholds: Sequence[float], metrics: dict, cuts: Dict[str, Dict[str, Cut]],
                        voxel_volume: float, chosen: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, dict]]:
    """``{key: {rule: {Dice, IoU, n_pred, TP, V_pred, dV, abs_dV[, threshold]}}}`` of one case.

    ``metrics``: the case's per-class metrics (argmax); ``chosen[rule][key]``: the threshold of each threshold
    rule for this case (NaN: the rule is undefined for it)."""
    counts = sweep_counts(stats, spec)
    index = {float(t): i for i, t in enumerate(thresholds)}
    out = {}
    for key in spec.keys:
        m = metrics[key]
        n_ref = int(m["n_ref"])
        row = {"argmax": {f: m[f] for f in ("Dice", "IoU", "n_pred", "TP", "V_pred", "dV", "abs_dV")}}
        tp, fp, _ = counts[key]
        for rule in THRESHOLD_RULES:
            t = chosen[rule][key]
            if math.isnan(t):
                row[rule] = {**{f: math.nan for f in row["argmax"]}, "threshold": math.nan}
                continue
            i = index[float(t)]
            row[rule] = {**decision_metrics((int(tp[i] + fp[i]), int(tp[i])), n_ref, voxel_volume), "threshold": t}
        for rule, cut in cuts[key].items():
            row[rule] = {**decision_metrics(cut, n_ref, voxel_volume), "threshold": cut.value}
        out[key] = row
    return out


def decisions_for_cases(stats_list, spec, thresholds: Sequence[float], per_case: List[dict],
                        cuts_list: List[Dict[str, Dict[str, Cut]]], sweep: dict, fixed_threshold: float = 0.5) -> dict:
    """Fill ``per_case[i]["decisions"]`` and return the summary block ``decisions`` (see docs/evaluation.md)."""
    thr = [float(t) for t in thresholds]
    if float(fixed_threshold) not in thr:
        raise ValueError(f"the fixed threshold {fixed_threshold} must be one of the sweep's thresholds {thr}")
    folds = [c["fold"] for c in per_case]
    groups, scheme = crossfit_groups(folds)
    crossfit = {}
    for key in spec.keys:
        counts = [sweep_counts(s, spec)[key] for s in stats_list]
        tp, fp, fn = (np.array([c[j] for c in counts], dtype=np.float64).reshape(len(counts), len(thr))
                      for j in range(3))
        crossfit[key] = crossfit_thresholds(tp, fp, fn, thr, groups)
    in_sample = {k: float(sweep["per_class"][k]["best_threshold"]) for k in spec.keys}
    for i, (s, case, cuts) in enumerate(zip(stats_list, per_case, cuts_list)):
        chosen = {"fixed_T": {k: float(fixed_threshold) for k in spec.keys}, "best_T_in_sample": in_sample,
                  "best_T_crossfit": {k: float(crossfit[k][i]) for k in spec.keys}}
        case["decisions"] = case_decision_table(s, spec, thr, case["metrics"], cuts, case["voxel_volume"], chosen)
    mean = {}
    for key in spec.keys:
        mean[key] = {}
        for rule in RULES:
            vals = {f: np.array([c["decisions"][key][rule][f] for c in per_case if rule in c["decisions"][key]],
                                dtype=np.float64) for f in SUMMARY_FIELDS}
            if not len(vals["Dice"]):
                continue
            mean[key][rule] = {f: (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)
                               for f, v in vals.items()}
            mean[key][rule]["n_nan_Dice"] = int(np.isnan(vals["Dice"]).sum())
    return {"rules": {r: RULE_DESCRIPTIONS[r] for r in RULES}, "fixed_threshold": float(fixed_threshold),
            "best_T_in_sample": in_sample,
            "crossfit": {"scheme": scheme,
                         "thresholds_per_case": {c["case"]: {k: float(crossfit[k][i]) for k in spec.keys}
                                                 for i, c in enumerate(per_case)}},
            "conflicts": ("metrics are one-vs-rest per class; exported label maps give a voxel kept by several "
                          "classes to the largest p_c (regions: overwrite in regions_class_order)"),
            "mean": mean}
