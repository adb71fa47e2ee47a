"""The study's main table, generated from the evaluation summaries: one row per metric (per class where it
has one), one column per trainer. Every row is declared once in :data:`ROWS`; a new metric of the summaries
is one more entry here (and shows up in report.md, report.html and report.json).

A row whose metric a summary does not have (e.g. the soft volume of a label-map-only evaluation) is absent
for that trainer ("-"), never 0, and dropped when no trainer has it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

NAN = float("nan")


@dataclass(frozen=True)
class Row:
    """``label`` may hold ``{label}`` (class name), ``{unit}`` (volume unit), ``{bins}`` (ECE bins),
    ``{tolerance}`` (NSD tolerance)."""
    label: str
    value: Callable[[dict, Optional[str]], Optional[float]]
    per_class: bool
    #: metric name in ``compare``'s paired rows (significance against the baseline), None if compare has none
    compare_metric: Optional[str] = None
    digits: int = 4


def _class_metric(metric: str, scale: float = 1.0):
    def get(summary: dict, key: Optional[str]) -> Optional[float]:
        v = summary["mean"].get(key, {}).get(metric)
        return None if v is None else v * scale
    return get


def _case_calibration(metric: str):
    def get(summary: dict, key: Optional[str]) -> Optional[float]:
        v = summary.get("calibration", {}).get("per_case", {}).get(metric)
        return None if v is None else v["mean"]
    return get


def _pooled_calibration(metric: str):
    def get(summary: dict, key: Optional[str]) -> Optional[float]:
        return summary.get("calibration", {}).get("pooled", {}).get(metric)
    return get


def _mean_dice(summary: dict, key: Optional[str]) -> Optional[float]:
    return summary["foreground_mean"].get("Dice")


def _best_threshold(field: str):
    def get(summary: dict, key: Optional[str]) -> Optional[float]:
        return summary.get("threshold_sweep", {}).get("per_class", {}).get(key, {}).get(field)
    return get


def _decision_rule(rule: str, field: str):
    def get(summary: dict, key: Optional[str]) -> Optional[float]:
        return summary.get("decisions", {}).get("mean", {}).get(key, {}).get(rule, {}).get(field)
    return get


def _volume(path: str):
    """``summary["volume"][key]`` field, ``"a.b"`` for a nested one (Bland-Altman statistics)."""
    def get(summary: dict, key: Optional[str]) -> Optional[float]:
        v = summary.get("volume", {}).get(key, {})
        for part in path.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        return v
    return get


#: the decision rules of ``evaluate`` shown in the table (argmax is the plain Dice row), with compare's metric
DECISION_ROWS = {"best_T_crossfit": "cross-fitted best threshold", "dice_optimal": "Dice-optimal (Nordström)",
                 "rankseg_rma": "RankSEG-RMA", "volume_matched": "volume-matched (top round(sum p) voxels)"}

ROWS: List[Row] = [
    Row("mean Dice (over classes)", _mean_dice, False),
    Row("Dice {label}", _class_metric("Dice"), True, "Dice"),
    Row("hard dV {label} ({unit})", _class_metric("dV"), True, "dV"),
    Row("hard dV {label} (% of reference)", _class_metric("rel_dV", 100.0), True, None, 2),
    Row("mean |hard dV| {label} ({unit})", _class_metric("abs_dV"), True, "abs_dV"),
    Row("soft dV {label} ({unit})", _class_metric("dV_soft"), True, "dV_soft"),
    Row("soft dV {label} (% of reference)", _class_metric("rel_dV_soft", 100.0), True, None, 2),
    Row("mean |soft dV| {label} ({unit})", _class_metric("abs_dV_soft"), True, "abs_dV_soft"),
    Row("NLL (case mean)", _case_calibration("NLL"), False, "NLL"),
    Row("Brier (case mean)", _case_calibration("Brier"), False, "Brier"),
    Row("top-label ECE, {bins} bins (case mean)", _case_calibration("top_label_ECE"), False, "top_label_ECE"),
    Row("top-label ECE, {bins} bins (all voxels pooled)", _pooled_calibration("top_label_ECE"), False),
    Row("classwise ECE, {bins} bins (case mean)", _case_calibration("classwise_ECE"), False, "classwise_ECE"),
    Row("classwise ECE, {bins} bins (all voxels pooled)", _pooled_calibration("classwise_ECE"), False),
    Row("one-vs-rest ECE {label}, {bins} bins (case mean)", _class_metric("one_vs_rest_ECE"), True,
        "one_vs_rest_ECE"),
    Row("HD95 {label} (mm)", _class_metric("HD95"), True),
    Row("normalized surface Dice {label} ({tolerance} mm)", _class_metric("NSD"), True),
    Row("best threshold {label} (max mean Dice, in-sample: optimistic)", _best_threshold("best_threshold"), True,
        None, 2),
    Row("Dice {label} at the best threshold (in-sample: optimistic)", _best_threshold("best_Dice_mean"), True),
    *(Row(f"Dice {{label}}, {name}", _decision_rule(rule, "Dice"), True, f"Dice[{rule}]")
      for rule, name in DECISION_ROWS.items()),
    Row("mean |hard dV| {label}, volume-matched ({unit})", _decision_rule("volume_matched", "abs_dV"), True,
        "abs_dV[volume_matched]"),
    Row("volume 95% interval coverage {label} (calibrated: 0.95)", _volume("coverage_95"), True, None, 3),
    Row("volume CRPS {label} (case mean, {unit})", _volume("CRPS_mean"), True),
    Row("Bland-Altman bias, soft volume {label} ({unit})", _volume("bland_altman_soft.bias"), True),
    Row("Bland-Altman 95% limits, soft volume {label} ({unit}), low", _volume("bland_altman_soft.loa_low"), True),
    Row("Bland-Altman 95% limits, soft volume {label} ({unit}), high", _volume("bland_altman_soft.loa_high"),
        True),
]


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}f}"


def _significance(comparison: dict, baseline: str, trainer: str, metric: str, key: str) -> Optional[dict]:
    for r in comparison.get("paired", []):
        if r["model_a"] == baseline and r["model_b"] == trainer and r["metric"] == metric and r["class"] == key:
            return r
    return None


def main_table(summaries: Dict[str, dict], comparison: dict, baseline: str, label_names: Dict[str, str]) -> dict:
    """``{"trainers": [...], "rows": [{"label", "metric_row", "class", "values": {trainer: v},
    "significance": {trainer: paired row or None}}]}``; trainers in the order given (baseline first)."""
    trainers = list(summaries)
    first = summaries[trainers[0]]
    keys = list(first["mean"].keys())
    n_bins = first.get("settings", {}).get("n_bins", "?")
    words = {"unit": first.get("volume_unit", "ml"), "bins": n_bins,
             "tolerance": first.get("settings", {}).get("surface_tolerance_mm", "?")}
    alpha = comparison.get("alpha", 0.05)
    rows = []
    for spec in ROWS:
        for key in (keys if spec.per_class else [None]):
            values = {t: spec.value(s, key) for t, s in summaries.items()}
            if not any(v is not None for v in values.values()):
                continue
            row = {"label": spec.label.format(label=label_names.get(key, key), **words), "class": key,
                   "metric": spec.compare_metric, "digits": spec.digits, "values": values, "significance": {}}
            if spec.compare_metric:
                for t in trainers[1:]:
                    r = _significance(comparison, baseline, t, spec.compare_metric, key or "all")
                    if r is not None:
                        row["significance"][t] = {"mean_diff": r["mean_diff"], "ci_low": r["ci_low"],
                                                  "ci_high": r["ci_high"], "p_bootstrap_holm": r["p_bootstrap_holm"],
                                                  "p_wilcoxon_holm": r["p_wilcoxon_holm"],
                                                  "significant": _finite(r["p_bootstrap_holm"])
                                                  and r["p_bootstrap_holm"] < alpha}
            rows.append(row)
    return {"trainers": trainers, "baseline": baseline, "alpha": alpha, "rows": rows}


def cell(row: dict, trainer: str) -> str:
    """A value with ``▲``/``▼`` when significantly higher/lower than the baseline's (Holm-adjusted bootstrap)."""
    text = fmt(row["values"][trainer], row["digits"])
    sig = row["significance"].get(trainer)
    if sig and sig["significant"]:
        text += " ▲" if sig["mean_diff"] > 0 else " ▼"
    return text
