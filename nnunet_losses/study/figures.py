"""The study's figures, every trainer overlaid (one colour each, the same in every figure), label names
from dataset.json; matplotlib PNGs."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import numpy as np

FIGURES = ("volume_error_per_case.png", "reliability.png", "dice_vs_threshold.png", "dice_per_size_decile.png",
           "bland_altman.png")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _short(trainer: str) -> str:
    return trainer.replace("nnUNetTrainer_", "").replace("nnUNetTrainer", "nnU-Net default") or trainer


def _panels(n: int, width: float = 4.2, height: float = 3.6, rows_per_panel: int = 1, **kw):
    plt = _plt()
    cols = min(n, 3)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows * rows_per_panel, cols, figsize=(width * cols, height * rows * rows_per_panel),
                             squeeze=False, **kw)
    return plt, fig, axes


def _case_values(summary: dict, key: str, metric: str) -> np.ndarray:
    return np.array([c["metrics"][key].get(metric, np.nan) for c in summary["metric_per_case"]], dtype=np.float64)


def _save(plt, fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def volume_error_per_case(summaries: Dict[str, dict], comparison: dict, names: Dict[str, str], path: Path) -> Path:
    """Per class: each trainer's per-case hard dV as a box with the cases as points, and the mean with its
    bootstrap 95% CI (compare's volume-bias test)."""
    trainers = list(summaries)
    keys = list(next(iter(summaries.values()))["mean"])
    unit = next(iter(summaries.values()))["volume_unit"]
    bias = {(r["model"], r["class"]): r for r in comparison.get("volume_bias", []) if r["metric"] == "dV"}
    plt, fig, axes = _panels(len(keys), width=max(4.2, 1.3 * len(trainers) + 1.5))
    rng = np.random.default_rng(0)
    for ax, key in zip(axes.ravel(), keys):
        data = [_case_values(summaries[t], key, "dV") for t in trainers]
        ax.boxplot([d[~np.isnan(d)] for d in data], positions=range(len(trainers)), widths=0.5, showfliers=False)
        for i, (t, d) in enumerate(zip(trainers, data)):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=10, color=f"C{i}", alpha=0.6, zorder=3)
            b = bias.get((t, key))
            if b is not None and np.isfinite(b["mean"]):
                ax.errorbar(i + 0.32, b["mean"], yerr=[[b["mean"] - b["ci_low"]], [b["ci_high"] - b["mean"]]],
                            fmt="D", color="k", ms=4, capsize=3, zorder=4)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(trainers)), [_short(t) for t in trainers], rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=f"hard dV = V pred - V ref ({unit})", title=names.get(key, key))
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    return _save(plt, fig, path, "Volume error per case (box: quartiles; diamond: mean with bootstrap 95% CI)")


def _reliability_curves(summary: dict) -> List[tuple]:
    pooled = summary["calibration"]["pooled"]
    curves = [("top-label confidence", pooled["top_label"])] if "top_label" in pooled else []
    return curves + [(k, v) for k, v in pooled["per_channel"].items()]


def reliability(summaries: Dict[str, dict], names: Dict[str, str], path: Path) -> Path:
    """Observed frequency against mean predicted probability per bin (top), and the voxels per bin (bottom,
    log scale): bins with few voxels are where a curve means little."""
    first = next(iter(summaries.values()))
    edges = np.asarray(first["calibration"]["pooled"]["bin_edges"])
    titles = [c for c, _ in _reliability_curves(first)]
    plt, fig, axes = _panels(len(titles), height=3.0, rows_per_panel=2)
    cols = axes.shape[1]
    for j, title in enumerate(titles):
        top, bottom = axes[2 * (j // cols), j % cols], axes[2 * (j // cols) + 1, j % cols]
        for i, (t, s) in enumerate(summaries.items()):
            table = dict(_reliability_curves(s))[title]
            conf = np.asarray(table["mean_probability"], dtype=float)
            freq = np.asarray(table["observed_frequency"], dtype=float)
            ok = ~np.isnan(conf)
            top.plot(conf[ok], freq[ok], "o-", ms=3, color=f"C{i}", label=_short(t))
            # empty bins drawn at 0.5 voxel: below the log axis' first decade, visibly "none"
            bottom.stairs(np.maximum(np.asarray(table["count"], dtype=float), 0.5), edges, color=f"C{i}")
        top.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        label = title if title == "top-label confidence" else f"{names.get(title, title)} (one-vs-rest)"
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title=label)
        top.legend(fontsize=7)
        bottom.set(xlim=(0, 1), yscale="log", xlabel="predicted probability", ylabel="voxels per bin")
    for j in range(len(titles), axes.size // 2):
        axes[2 * (j // cols), j % cols].axis("off")
        axes[2 * (j // cols) + 1, j % cols].axis("off")
    return _save(plt, fig, path, "Reliability diagrams, all validation voxels")


def _channel_name(summary: dict, key: str, names: Dict[str, str]) -> str:
    return names.get(key, key)


def dice_vs_threshold(summaries: Dict[str, dict], names: Dict[str, str], path: Path) -> Path:
    first = next(iter(summaries.values()))
    keys = list(first["threshold_sweep"]["per_class"])
    plt, fig, axes = _panels(len(keys))
    for ax, key in zip(axes.ravel(), keys):
        for i, (t, s) in enumerate(summaries.items()):
            sw = s["threshold_sweep"]
            e = sw["per_class"][key]
            ax.plot(sw["thresholds"], e["Dice_mean"], "-", color=f"C{i}", label=_short(t))
            if np.isfinite(e["best_threshold"]):
                ax.plot([e["best_threshold"]], [e["best_Dice_mean"]], "o", color=f"C{i}")
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), xlabel="threshold T (class predicted where p > T)", ylabel="mean Dice over cases",
               title=_channel_name(first, key, names))
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    return _save(plt, fig, path, "Dice against the probability threshold (dot: best threshold)")


def dice_per_size_decile(summaries: Dict[str, dict], names: Dict[str, str], path: Path) -> Path:
    """Mean Dice per decile of reference volume; the x labels give each decile's volume range (the cases and so
    the deciles are the same for every trainer)."""
    first = next(iter(summaries.values()))
    unit = first["volume_unit"]
    keys = list(first["size_deciles"])
    plt, fig, axes = _panels(len(keys), width=5.0)
    for ax, key in zip(axes.ravel(), keys):
        d0 = first["size_deciles"][key]
        x = np.arange(len(d0["n_cases"]))
        for i, (t, s) in enumerate(summaries.items()):
            ax.plot(x, s["size_deciles"][key]["Dice_mean"], "o-", ms=3, color=f"C{i}", label=_short(t))
        ax.set_xticks(x, [f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(d0["V_ref_min"], d0["V_ref_max"])], rotation=45,
                      ha="right", fontsize=7)
        ax.set(xlabel=f"reference volume range of the decile ({unit})", ylabel="mean Dice", ylim=(0, 1.02),
               title=names.get(key, key))
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    return _save(plt, fig, path, "Dice per size decile of the reference volume")


def bland_altman(summaries: Dict[str, dict], names: Dict[str, str], path: Path) -> Path:
    """Per case: difference V_pred - V_ref against the mean (V_pred + V_ref) / 2; per trainer its mean
    difference (solid) and the limits of agreement mean +- 1.96 SD (dashed)."""
    first = next(iter(summaries.values()))
    unit = first["volume_unit"]
    keys = list(first["mean"])
    plt, fig, axes = _panels(len(keys), width=4.8)
    for ax, key in zip(axes.ravel(), keys):
        for i, (t, s) in enumerate(summaries.items()):
            pred, ref = _case_values(s, key, "V_pred"), _case_values(s, key, "V_ref")
            diff, mean = pred - ref, (pred + ref) / 2
            ax.scatter(mean, diff, s=12, color=f"C{i}", alpha=0.7, label=_short(t))
            if len(diff) > 1:
                m, sd = float(np.mean(diff)), float(np.std(diff, ddof=1))
                ax.axhline(m, color=f"C{i}", lw=1)
                for lim in (m - 1.96 * sd, m + 1.96 * sd):
                    ax.axhline(lim, color=f"C{i}", lw=0.8, ls="--")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel=f"(V pred + V ref) / 2 ({unit})", ylabel=f"V pred - V ref ({unit})", title=names.get(key, key))
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    return _save(plt, fig, path, "Bland-Altman: predicted (hard) against reference volume")


def write_figures(summaries: Dict[str, dict], comparison: dict, names: Dict[str, str], folder: Path) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    first = next(iter(summaries.values()))
    out = [volume_error_per_case(summaries, comparison, names, folder / FIGURES[0])]
    if "calibration" in first:  # label-map-only evaluations have no probabilities
        out.append(reliability(summaries, names, folder / FIGURES[1]))
        out.append(dice_vs_threshold(summaries, names, folder / FIGURES[2]))
    out.append(dice_per_size_decile(summaries, names, folder / FIGURES[3]))
    out.append(bland_altman(summaries, names, folder / FIGURES[4]))
    return out
