"""Tables, Markdown and plots of the decision rules and the probabilistic volume (summary keys ``decisions``,
``volume`` and the per-case ``decisions``/``volume``; see docs/evaluation.md)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from nnunet_losses.evaluation.decision_summary import RULES

DECISION_FILES = ("decisions.csv", "volume.csv", "bands.csv")
DECISION_PLOTS = ("bland_altman.png", "dice_per_decision_rule.png", "distance_bands.png")


def _name(summary: dict, key: str) -> str:
    names = summary["task"].get("class_names") or {}
    return f"{names[key]} ({key})" if key in names else f"class {key}"


def decision_rows(summary: dict) -> List[dict]:
    rows = []
    for c in summary["metric_per_case"]:
        for key, rules in c.get("decisions", {}).items():
            for rule, m in rules.items():
                rows.append({"case": c["case"], "fold": c["fold"] if c["fold"] is not None else "", "class": key,
                             "rule": rule, **m, "volume_unit": summary["volume_unit"]})
    return rows


def volume_rows(summary: dict) -> List[dict]:
    rows = []
    for c in summary["metric_per_case"]:
        for key, v in c.get("volume", {}).items():
            rows.append({"case": c["case"], "fold": c["fold"] if c["fold"] is not None else "", "class": key,
                         "V_ref": c["metrics"][key]["V_ref"], "V_pred": c["metrics"][key]["V_pred"], **v,
                         "volume_unit": summary["volume_unit"]})
    return rows


def band_rows(summary: dict) -> List[dict]:
    rows = []
    for key, bands in summary.get("bands", {}).get("per_class", {}).items():
        for band, e in bands.items():
            rows.append({"class": key, "band": band, **e, "volume_unit": summary["volume_unit"]})
    return rows


def decision_markdown(summary: dict, fmt) -> str:
    d, vol, unit = summary["decisions"], summary["volume"], summary["volume_unit"]
    lines = ["", "## Decision rules (mean over cases, one-vs-rest per class)", "",
             "| class | rule | Dice | IoU | dV | abs dV |", "|---|---|---|---|---|---|"]
    for key, rules in d["mean"].items():
        for rule in RULES:
            if rule in rules:
                m = rules[rule]
                lines.append(f"| {key} | {rule} | {fmt(m['Dice'])} | {fmt(m['IoU'])} | {fmt(m['dV'])} | "
                             f"{fmt(m['abs_dV'])} |")
    lines += ["", f"fixed_T = {d['fixed_threshold']}; best_T_in_sample = {d['best_T_in_sample']} (chosen on the "
              f"scored cases: optimistic); best_T_crossfit chosen per case on {d['crossfit']['scheme']}. "
              f"Volumes in {unit}. {d['conflicts']}.", "",
              "## Probabilistic volume (Poisson-binomial)", "",
              "| class | 95% interval coverage | mean CRPS | mean sd | soft bias | soft LoA | hard bias | hard LoA |",
              "|---|---|---|---|---|---|---|---|"]
    for key, v in vol.items():
        s, h = v["bland_altman_soft"], v["bland_altman_hard"]
        lines.append(f"| {key} | {fmt(v['coverage_95'])} | {fmt(v['CRPS_mean'])} | {fmt(v['V_sd_mean'])} | "
                     f"{fmt(s['bias'])} | [{fmt(s['loa_low'])}, {fmt(s['loa_high'])}] | {fmt(h['bias'])} | "
                     f"[{fmt(h['loa_low'])}, {fmt(h['loa_high'])}] |")
    lines += ["", "A calibrated model covers 95% of the reference volumes; far less means over-confident maps."]
    if "bands" in summary:
        lines += ["", "## Distance bands from the reference surface (mean per case; ECE of all the band's voxels)", "",
                  f"| class | band | voxels | FP volume ({unit}) | FN volume ({unit}) | ECE |", "|---|---|---|---|---|---|"]
        for r in band_rows(summary):
            lines.append(f"| {r['class']} | {r['band']} mm | {r['n_voxels']} | {fmt(r['FP_volume_mean'])} | "
                         f"{fmt(r['FN_volume_mean'])} | {fmt(r['ECE_pooled'])} |")
    return "\n".join(lines) + "\n"


def bland_altman_plot(summary: dict, path: Path) -> None:
    """One panel per class: mean of (predicted, reference) volume vs their difference, soft and hard volume."""
    from nnunet_losses.evaluation.plots import panels, save_figure
    keys = list(summary["volume"])
    fig, axes = panels(len(keys), 4.5, 4)
    unit = summary["volume_unit"]
    for ax, key in zip(axes, keys):
        ref = np.array([c["metrics"][key]["V_ref"] for c in summary["metric_per_case"]])
        for field, label, marker, stats in (("V_mean", "soft (Poisson-binomial mean)", "o", "bland_altman_soft"),
                                            ("V_pred", "hard (argmax)", "x", "bland_altman_hard")):
            src = "volume" if field == "V_mean" else "metrics"
            v = np.array([c[src][key][field] for c in summary["metric_per_case"]])
            ba = summary["volume"][key][stats]
            line = ax.scatter((v + ref) / 2, v - ref, marker=marker, s=14, label=f"{label}: bias {ba['bias']:.3g}")
            for y in (ba["bias"], ba["loa_low"], ba["loa_high"]):
                if np.isfinite(y):
                    ax.axhline(y, color=line.get_facecolor()[0] if marker == "o" else "C1",
                               ls="-" if y == ba["bias"] else "--", lw=0.8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel=f"(V_pred + V_ref) / 2 ({unit})", ylabel=f"V_pred - V_ref ({unit})",
               title=f"{_name(summary, key)}: coverage {summary['volume'][key]['coverage_95']:.2f}")
        ax.legend(fontsize=7)
    save_figure(fig, path, f"Bland-Altman, {summary['name']} (lines: bias, bias +- 1.96 sd)")


def dice_per_rule_plot(summary: dict, path: Path) -> None:
    from nnunet_losses.evaluation.plots import _plt, save_figure
    plt = _plt()
    mean = summary["decisions"]["mean"]
    keys = list(mean)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(RULES), 4))
    width = 0.8 / max(len(keys), 1)
    for j, key in enumerate(keys):
        vals = [mean[key].get(r, {}).get("Dice", np.nan) for r in RULES]
        ax.bar(np.arange(len(RULES)) + j * width, np.nan_to_num(vals), width, label=_name(summary, key))
    ax.set_xticks(np.arange(len(RULES)) + 0.4 - width / 2, RULES, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="mean Dice over cases", ylim=(0, 1.02), title=f"Decision rules, {summary['name']}")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def distance_bands_plot(summary: dict, path: Path) -> None:
    """One panel per class: mean FP and FN volume per case in each band, inside to outside."""
    from nnunet_losses.evaluation.plots import panels, save_figure
    per = summary["bands"]["per_class"]
    keys = list(per)
    fig, axes = panels(len(keys), 5.5, 4)
    for ax, key in zip(axes, keys):
        names = list(per[key])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [per[key][b]["FN_volume_mean"] for b in names], 0.4, label="FN volume")
        ax.bar(x + 0.2, [per[key][b]["FP_volume_mean"] for b in names], 0.4, label="FP volume")
        ax.set_xticks(x, [f"{b} mm" for b in names], rotation=40, ha="right", fontsize=7)
        ax.set(ylabel=f"mean volume per case ({summary['volume_unit']})", title=_name(summary, key))
        ax.legend(fontsize=7)
    save_figure(fig, path, f"Errors by distance from the reference surface, {summary['name']}")


def write_decisions(summary: dict, folder: Path, plots: bool) -> None:
    from nnunet_losses.evaluation.outputs import write_csv
    write_csv(decision_rows(summary), Path(folder) / "decisions.csv")
    write_csv(volume_rows(summary), Path(folder) / "volume.csv")
    if "bands" in summary:
        write_csv(band_rows(summary), Path(folder) / "bands.csv")
    if plots:
        bland_altman_plot(summary, Path(folder) / "bland_altman.png")
        dice_per_rule_plot(summary, Path(folder) / "dice_per_decision_rule.png")
        if "bands" in summary:
            distance_bands_plot(summary, Path(folder) / "distance_bands.png")
