"""Before/after table of a calibration (``calibration_summary.json``, ``calibration.md``)."""
from __future__ import annotations

import math

from nnunet_losses.evaluation.decision_summary import RULES

OVERALL = ("NLL", "Brier", "top_label_ECE", "classwise_ECE")
PER_CLASS = ("Brier", "one_vs_rest_ECE", "dV_soft", "abs_dV_soft")
VOLUME = ("coverage_95", "CRPS_mean")


def before_after(before: dict, after: dict) -> dict:
    """``{overall: {metric: {before, after}}, per_class: {key: {metric: {before, after}}}}``: pooled calibration,
    per-class means, volume coverage/CRPS and the mean Dice of every decision rule."""
    def pair(a, b):
        return {"before": a, "after": b}

    overall = {m: pair(before["calibration"]["pooled"][m], after["calibration"]["pooled"][m]) for m in OVERALL}
    per_class = {}
    for key in before["mean"]:
        e = {m: pair(before["mean"][key][m], after["mean"][key][m]) for m in PER_CLASS}
        e.update({m: pair(before["volume"][key][m], after["volume"][key][m]) for m in VOLUME})
        for rule in RULES:
            b = before["decisions"]["mean"][key].get(rule, {}).get("Dice", math.nan)
            a = after["decisions"]["mean"][key].get(rule, {}).get("Dice", math.nan)
            e[f"Dice_{rule}"] = pair(b, a)
        per_class[key] = e
    return {"overall": overall, "per_class": per_class, "volume_unit": before["volume_unit"],
            "n_cases": before["n_cases"]}


def _f(v) -> str:
    return "NaN" if v is None or v != v else f"{v:.4f}"


def before_after_markdown(table: dict, name: str) -> str:
    lines = [f"# Calibration of {name}: {table['method']} scaling, cross-fitted ({table['scheme']})", "",
             f"{table['n_cases']} cases; fitted on {table['n_fit_voxels']} sampled voxels in "
             f"{table['fit_seconds']:.1f} s; {100 * table['saturated_fraction']:.2f} % of them saturated (a "
             f"probability below eps: the log-probability is clamped); temperature(s) of the final map: "
             f"{table['temperatures']}.", "", "| pooled | before | after |", "|---|---|---|"]
    for m, v in table["overall"].items():
        lines.append(f"| {m} | {_f(v['before'])} | {_f(v['after'])} |")
    for key, e in table["per_class"].items():
        lines += ["", f"## class {key} (mean over cases; volumes in {table['volume_unit']})", "",
                  "| metric | before | after |", "|---|---|---|"]
        for m, v in e.items():
            lines.append(f"| {m} | {_f(v['before'])} | {_f(v['after'])} |")
    return "\n".join(lines) + "\n"
