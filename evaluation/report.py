"""Files of an evaluation: summary.json (nnU-Net's schema, extended), CSV tables, a Markdown digest, plots."""
from __future__ import annotations

from pathlib import Path
from typing import List

from nnunet_losses.evaluation.metrics import CALIBRATION_METRICS, EXTRA_METRICS, NNUNET_METRICS
from nnunet_losses.evaluation.formatting import number
from nnunet_losses.evaluation.outputs import write_csv, write_json

SUMMARY_METRICS = ("Dice", "IoU", "soft_Dice", "precision", "recall", "V_ref", "V_pred", "dV", "abs_dV", "rel_dV",
                   "dV_soft", "rel_dV_soft", "Brier", "one_vs_rest_ECE", "NLL")


def per_case_rows(summary: dict) -> List[dict]:
    rows = []
    for c in summary["metric_per_case"]:
        for k, m in c["metrics"].items():
            row = {"case": c["case"], "fold": c["fold"] if c["fold"] is not None else "", "class": k}
            row.update({f: m.get(f, "") for f in (*NNUNET_METRICS, *EXTRA_METRICS)})
            row.update({f"case_{f}": c["calibration"][f] for f in CALIBRATION_METRICS})
            row.update(n_voxels=c["n_voxels"], n_ignored=c["n_ignored"], voxel_volume=c["voxel_volume"],
                       volume_unit=summary["volume_unit"], prediction_file=c["prediction_file"],
                       reference_file=c["reference_file"])
            rows.append(row)
    return rows


def sweep_rows(summary: dict) -> List[dict]:
    sw = summary["threshold_sweep"]
    rows = []
    for k, e in list(sw["per_class"].items()) + [("overall", sw["overall"])]:
        for i, t in enumerate(sw["thresholds"]):
            rows.append({"class": k, "threshold": t, "Dice_mean": e["Dice_mean"][i], "Dice_pooled": e["Dice_pooled"][i],
                         "precision": e["precision"][i], "recall": e["recall"][i],
                         "n_cases_defined": e["n_cases_defined"][i] if "n_cases_defined" in e else "",
                         "best_threshold": e["best_threshold"]})
    return rows


def decile_rows(summary: dict) -> List[dict]:
    rows = []
    for k, e in summary["size_deciles"].items():
        for i in range(len(e["n_cases"])):
            rows.append({"class": k, "group": i + 1, "n_cases": e["n_cases"][i], "V_ref_min": e["V_ref_min"][i],
                         "V_ref_max": e["V_ref_max"][i], "Dice_mean": e["Dice_mean"][i],
                         "soft_Dice_mean": e["soft_Dice_mean"][i], "volume_unit": summary["volume_unit"]})
    return rows


def reliability_rows(summary: dict) -> List[dict]:
    pooled = summary["calibration"]["pooled"]
    edges = pooled["bin_edges"]
    tables = [(f"channel {k}", v) for k, v in pooled["per_channel"].items()]
    if "top_label" in pooled:
        tables.append(("top-label", pooled["top_label"]))
    rows = []
    for name, t in tables:
        for b in range(len(edges) - 1):
            rows.append({"curve": name, "bin": b, "lower": edges[b], "upper": edges[b + 1], "count": t["count"][b],
                         "mean_probability": t["mean_probability"][b],
                         "observed_frequency": t["observed_frequency"][b]})
    return rows


def summary_markdown(summary: dict) -> str:
    unit = summary["volume_unit"]
    lines = [f"# Evaluation of {summary['name']}", "",
             f"{summary['n_cases']} cases, {summary['task']['type']} model (hard map: {summary['task']['hard_map']}), "
             f"volumes in {unit}.", "", "## Per class (mean over cases)", ""]
    cols = SUMMARY_METRICS
    lines.append("| class | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for k, m in summary["mean"].items():
        lines.append(f"| {k} | " + " | ".join(number(m.get(c)) for c in cols) + " |")
    lines += ["", "Cases left out of a mean because the metric is NaN (nnU-Net's convention for Dice/IoU with empty "
              "reference and prediction; relative dV with an empty reference):", ""]
    for k, e in summary["empty_cases"].items():
        nc = summary["nan_counts"][k]
        lines.append(f"* class {k}: Dice NaN in {nc.get('Dice', 0)} of {e['n_cases']} cases "
                     f"({e['n_empty_reference_and_prediction']} empty reference and prediction, "
                     f"{e['n_empty_reference']} empty reference); rel_dV NaN in {nc.get('rel_dV', 0)}")
    cal = summary["calibration"]
    lines += ["", "## Calibration", "", "| | NLL | Brier | top-label ECE | classwise ECE |", "|---|---|---|---|---|",
              "| all voxels pooled | " + " | ".join(number(cal["pooled"][m]) for m in CALIBRATION_METRICS) + " |",
              "| mean over cases | " + " | ".join(number(cal["per_case"][m]["mean"]) for m in CALIBRATION_METRICS) + " |",
              "", f"{summary['settings']['n_bins']} equal-width bins; NLL clips p at {summary['settings']['eps']:.3g}.",
              "", "## Threshold sweep", "", "| class | best T | mean Dice at best T | mean Dice at T=0.5 |",
              "|---|---|---|---|"]
    sw = summary["threshold_sweep"]
    i05 = sw["thresholds"].index(0.5) if 0.5 in sw["thresholds"] else None
    for k, e in list(sw["per_class"].items()) + [("overall", sw["overall"])]:
        at05 = number(e["Dice_mean"][i05]) if i05 is not None else "-"
        lines.append(f"| {k} | {number(e['best_threshold'])} | {number(e['best_Dice_mean'])} | {at05} |")
    lines += ["", f"Rule: {sw['rule']}.", "", "## Dice / Jaccard (Bertels et al. 2019)", ""]
    for k, e in summary["dice_jaccard"].items():
        if e.get("n_cases"):
            lines.append(f"* class {k}: max |J - D/(2-D)| = {number(e['max_abs_error_J_vs_D_over_2_minus_D'])}, "
                         f"1 - mean J = {number(e['one_minus_mean_IoU'])} <= phi(1 - mean D) = "
                         f"{number(e['phi_of_one_minus_mean_Dice'])}: {'holds' if e['holds'] else 'VIOLATED'}")
    return "\n".join(lines) + "\n"


def write_evaluation(summary: dict, folder: Path, plots: bool = True) -> None:
    folder = Path(folder)
    write_json(summary, folder / "summary.json")
    write_csv(per_case_rows(summary), folder / "per_case.csv")
    write_csv(sweep_rows(summary), folder / "threshold_sweep.csv")
    write_csv(decile_rows(summary), folder / "size_deciles.csv")
    write_csv(reliability_rows(summary), folder / "reliability.csv")
    from nnunet_losses.evaluation.decision_report import decision_markdown, write_decisions
    (folder / "summary.md").write_text(summary_markdown(summary) + decision_markdown(summary, number))
    write_decisions(summary, folder, plots)
    if plots:
        from nnunet_losses.evaluation.plots import evaluation_plots
        evaluation_plots(summary, folder)
