"""PNG plots (matplotlib, Agg backend -- no display needed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _grid(n: int):
    cols = min(n, 3)
    rows = int(math.ceil(n / cols))
    return rows, cols


def panels(n: int, width: float, height: float):
    """A figure of ``n`` panels, three per row, each ``width`` x ``height`` inches; the unused cells are blank.
    Returns the figure and its first ``n`` axes."""
    rows, cols = _grid(max(n, 1))
    fig, axes = _plt().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, list(axes.ravel()[:n])


def save_figure(fig, path: Path, title: str = "") -> None:
    """Write ``fig`` as a PNG (with ``title`` above all panels if given) and free it."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)


def _boxes_with_points(ax, data: List[List[float]], labels: List[str], **tick_kw) -> None:
    """Box plot (mean marked) of each list in ``data``, every value as a point over it, and the zero line."""
    ax.boxplot(data, showmeans=True)
    for i, d in enumerate(data, start=1):  # every case as a point
        ax.plot(i + np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else [i] * len(d), d, ".", color="k", ms=3,
                alpha=0.6)
    ax.set_xticks(range(1, len(labels) + 1), labels, **tick_kw)
    ax.axhline(0, color="k", lw=0.8)


def reliability_diagram(summary: dict, path: Path) -> None:
    pooled = summary["calibration"]["pooled"]
    edges = np.asarray(pooled["bin_edges"])
    curves = []
    if "top_label" in pooled:
        curves.append(("top-label confidence", pooled["top_label"], "top-label ECE", pooled["top_label_ECE"]))
    for k, v in pooled["per_channel"].items():
        curves.append((f"channel {k} (one-vs-rest)", v, "one-vs-rest ECE", v["one_vs_rest_ECE"]))
    fig, axes = panels(len(curves), 4, 4)
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1:] - edges[:-1]
    for ax, (title, t, ece_name, ece) in zip(axes, curves):
        freq = np.asarray(t["observed_frequency"], dtype=float)
        conf = np.asarray(t["mean_probability"], dtype=float)
        ax.bar(centers, np.nan_to_num(freq), width=width, edgecolor="k", alpha=0.7, label="observed frequency")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ok = ~np.isnan(conf)
        ax.plot(conf[ok], freq[ok], "o-", color="C3", ms=3, label="mean p in bin")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed frequency",
               title=f"{title}\n{ece_name} (pooled) = {ece:.4f}")
        ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path, f"Reliability diagrams, {summary['name']} (all voxels, {pooled['n_voxels']})")


def dice_vs_threshold(summary: dict, path: Path) -> None:
    sw = summary["threshold_sweep"]
    t = np.asarray(sw["thresholds"])
    items = list(sw["per_class"].items())
    fig, axes = panels(len(items), 4.5, 3.8)
    for ax, (k, e) in zip(axes, items):
        ax.plot(t, e["Dice_mean"], "o-", label="Dice (mean over cases)")
        ax.plot(t, e["Dice_pooled"], "s--", ms=3, label="Dice (pooled)")
        ax.plot(t, e["precision"], ":", label="precision (pooled)")
        ax.plot(t, e["recall"], "-.", label="recall (pooled)")
        if e["best_threshold"] == e["best_threshold"]:
            ax.axvline(e["best_threshold"], color="gray", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold T (p > T)", title=f"class {k}, best T = {e['best_threshold']}")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def dice_vs_size_decile(summary: dict, path: Path) -> None:
    plt = _plt()
    items = list(summary["size_deciles"].items())
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, e in items:
        if e["n_cases"]:
            x = np.arange(1, len(e["n_cases"]) + 1)
            ax.plot(x, e["Dice_mean"], "o-", label=f"class {k} (Dice)")
            ax.plot(x, e["soft_Dice_mean"], "x:", label=f"class {k} (soft Dice)")
    ax.set(xlabel="reference size group (deciles of V_ref, small -> large)", ylabel="mean Dice", ylim=(0, 1.02))
    ax.set_title(f"Dice vs reference size\n{summary['name']}", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def volume_error(summary: dict, path: Path) -> None:
    plt = _plt()
    keys = list(summary["mean"].keys())
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) + 2), 4))
    data, labels = [], []
    for k in keys:
        for f, lab in (("dV", "hard"), ("dV_soft", "soft")):
            vals = [c["metrics"][k][f] for c in summary["metric_per_case"]]
            data.append([v for v in vals if v == v])
            labels.append(f"{k}\n{lab}")
    _boxes_with_points(ax, data, labels, fontsize=7)
    ax.set_ylabel(f"dV = V_pred - V_ref ({summary['volume_unit']})")
    ax.set_title(f"Volume error per case (hard and soft)\n{summary['name']}", fontsize=9)
    save_figure(fig, path)


def evaluation_plots(summary: dict, folder: Path) -> None:
    reliability_diagram(summary, folder / "reliability_diagram.png")
    dice_vs_threshold(summary, folder / "dice_vs_threshold.png")
    dice_vs_size_decile(summary, folder / "dice_vs_size_decile.png")
    volume_error(summary, folder / "volume_error.png")


def volume_error_per_trainer(per_trainer: Dict[str, Dict[str, List[float]]], unit: str, path: Path,
                             field: str = "dV") -> None:
    """``per_trainer[name][class key]`` = per-case dV values; one panel per class, one box per trainer."""
    names = list(per_trainer)
    keys = list(next(iter(per_trainer.values())).keys()) if names else []
    fig, axes = panels(len(keys), max(4, 1.3 * len(names) + 2), 4)
    for ax, k in zip(axes, keys):
        data = [[v for v in per_trainer[n][k] if v == v] for n in names]
        _boxes_with_points(ax, data, names, rotation=20, ha="right", fontsize=7)
        ax.set(title=f"class {k}", ylabel=f"{field} ({unit})")
    save_figure(fig, path)
