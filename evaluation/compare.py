"""``compare``: paired comparison of two or more evaluated models on the same cases (seed 001's Table 1).

Input: the output folders (or summary.json files) of ``nnunet-losses evaluate`` -- the per-case metrics are
already there, so comparing is cheap and never re-reads probabilities.

* per model and class: mean of every metric; volume bias ``dV`` (hard) and ``dV_soft`` tested against 0
  (bootstrap + Wilcoxon, Holm across classes) -> flagged *under*- (italic) or **over**-estimation (bold) when the
  Holm-adjusted bootstrap p < alpha, as in seed 001's Table 1;
* per pair of models (every pair, ``B - A`` with A listed first), metric and class: mean difference, bootstrap
  percentile CI, bootstrap p and Wilcoxon signed-rank p, both Holm-adjusted across the classes of that
  (pair, metric) family; the case-level calibration metrics (NLL, Brier, ECE, classwise ECE) form families of
  one.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.stats import DEFAULT_N_BOOT, DEFAULT_SEED, holm, one_sample, paired

CLASS_METRICS = ("Dice", "soft_Dice", "dV", "abs_dV", "dV_soft", "abs_dV_soft", "NLL", "Brier", "ECE")
CASE_METRICS = ("NLL", "Brier", "ECE", "classwise_ECE")
BIAS_METRICS = ("dV", "dV_soft")
#: which direction is better, for the "better" column (None: no order, e.g. signed volume error)
HIGHER_IS_BETTER = {"Dice": True, "soft_Dice": True, "abs_dV": False, "abs_dV_soft": False, "NLL": False,
                    "Brier": False, "ECE": False, "classwise_ECE": False, "dV": None, "dV_soft": None}
OUTPUT_FILES = ("comparison.csv", "comparison.md", "comparison.json", "volume_bias.csv")
PLOT_FILES = ("volume_error_per_trainer.png",)


def load_evaluation(path) -> dict:
    p = Path(path)
    f = p / "summary.json" if p.is_dir() else p
    if not f.is_file():
        raise EvaluationError(f"{f}: no summary.json; run `nnunet-losses evaluate ... -o {p}` first")
    try:
        s = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{f}: not valid JSON ({e})") from None
    mpc = s.get("metric_per_case")
    if not mpc or "case" not in mpc[0] or "calibration" not in mpc[0]:
        raise EvaluationError(f"{f}: not an nnunet-losses evaluation (nnU-Net's own summary.json has no "
                              f"probability metrics); run `nnunet-losses evaluate` on the model first")
    s["_path"] = str(f)
    return s


def _table(s: dict) -> Dict[str, dict]:
    return {c["case"]: c for c in s["metric_per_case"]}


def compare(evaluations: Sequence, output_folder=None, *, names: Optional[Sequence[str]] = None,
            n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED, alpha: float = 0.05, common_cases: bool = False,
            overwrite: bool = False, plots: bool = True) -> dict:
    """Compare evaluated models (paths to evaluation folders/summary.json, or summary dicts)."""
    if len(evaluations) < 2:
        raise EvaluationError("compare needs at least two evaluations")
    sums = [e if isinstance(e, dict) else load_evaluation(e) for e in evaluations]
    if names is None:
        names = [s.get("name") or Path(s.get("_path", f"model{i}")).parent.name for i, s in enumerate(sums)]
    names = list(names)
    if len(names) != len(sums):
        raise EvaluationError(f"{len(names)} names for {len(sums)} evaluations")
    if len(set(names)) != len(names):
        names = [f"{n} [{i + 1}]" for i, n in enumerate(names)]
    keys = list(sums[0]["mean"].keys())
    for s, n in zip(sums[1:], names[1:]):
        if list(s["mean"].keys()) != keys:
            raise EvaluationError(f"{s.get('_path', n)}: classes {list(s['mean'].keys())} differ from {keys} of "
                                  f"{sums[0].get('_path', names[0])}; compare models of the same dataset")
    units = {s["volume_unit"] for s in sums}
    if len(units) != 1:
        raise EvaluationError(f"evaluations use different volume units {sorted(units)}")
    unit = units.pop()
    tables = [_table(s) for s in sums]
    common = sorted(set.intersection(*[set(t) for t in tables]))
    for t, s, n in zip(tables, sums, names):
        extra = sorted(set(t) - set(common))
        if extra and not common_cases:
            raise EvaluationError(f"{s.get('_path') or n}: case {extra[0]} is not evaluated for every model "
                                  f"({len(extra)} such); evaluate the same folds, or pass --common_cases")
    if not common:
        raise EvaluationError("the evaluations have no case in common")

    def values(i: int, metric: str, key: Optional[str]) -> np.ndarray:
        t = tables[i]
        if key is None:
            return np.array([t[c]["calibration"][metric] for c in common], dtype=np.float64)
        return np.array([t[c]["metrics"][key][metric] for c in common], dtype=np.float64)

    regions = sums[0].get("task", {}).get("type") == "regions"
    class_metrics = [m for m in CLASS_METRICS if m != "NLL" or regions]

    # per-model means and volume bias against 0
    model_rows = []
    for i, n in enumerate(names):
        for m in class_metrics:
            for k in keys:
                v = values(i, m, k)
                ok = ~np.isnan(v)
                model_rows.append({"model": n, "metric": m, "class": k, "mean": float(v[ok].mean()) if ok.any() else math.nan,
                                   "n": int(ok.sum()), "n_nan": int((~ok).sum())})
        for m in CASE_METRICS:
            v = values(i, m, None)
            ok = ~np.isnan(v)
            model_rows.append({"model": n, "metric": m, "class": "all", "mean": float(v[ok].mean()) if ok.any() else math.nan,
                               "n": int(ok.sum()), "n_nan": int((~ok).sum())})
    bias_rows = []
    for i, n in enumerate(names):
        for m in BIAS_METRICS:
            fam = [dict(model=n, metric=m, **{"class": k}, **one_sample(values(i, m, k), n_boot, seed, alpha)) for k in keys]
            for col in ("p_bootstrap", "p_wilcoxon"):
                for r, a in zip(fam, holm([r[col] for r in fam])):
                    r[col + "_holm"] = float(a)
            for r in fam:
                sig = r["p_bootstrap_holm"] < alpha
                r["bias"] = ("over" if r["mean"] > 0 else "under") if sig else ""
            bias_rows += fam

    pair_rows = []
    for (ia, a), (ib, b) in itertools.combinations(enumerate(names), 2):
        fams = [(m, keys) for m in class_metrics] + [(m, [None]) for m in CASE_METRICS]
        for m, fam_keys in fams:
            fam = []
            for k in fam_keys:
                r = paired(values(ia, m, k), values(ib, m, k), n_boot, seed, alpha)
                fam.append({"model_a": a, "model_b": b, "metric": m, "class": k if k is not None else "all", **r})
            for col in ("p_bootstrap", "p_wilcoxon"):
                for r, adj in zip(fam, holm([r[col] for r in fam])):
                    r[col + "_holm"] = float(adj)
            for r in fam:
                hib = HIGHER_IS_BETTER[m]
                sig = r["p_bootstrap_holm"] < alpha
                if not sig or hib is None or r["mean_diff"] == 0:
                    r["better"] = ""
                else:
                    r["better"] = b if (r["mean_diff"] > 0) == hib else a
            pair_rows += fam

    result = {"models": names, "sources": [s.get("_path") for s in sums], "classes": keys, "volume_unit": unit,
              "n_cases": len(common), "cases": common, "alpha": alpha, "n_boot": n_boot, "seed": seed,
              "model_means": model_rows, "volume_bias": bias_rows, "paired": pair_rows}
    if output_folder is not None:
        from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination, write_csv, write_json
        dest = check_destination(Path(output_folder), [], overwrite,
                                 list(OUTPUT_FILES) + (list(PLOT_FILES) if plots else []))
        with AtomicFolder(dest) as tmp:
            write_json(result, tmp / "comparison.json", sort_keys=False)
            write_csv(pair_rows, tmp / "comparison.csv")
            write_csv(bias_rows, tmp / "volume_bias.csv")
            (tmp / "comparison.md").write_text(comparison_markdown(result))
            if plots:
                from nnunet_losses.evaluation.plots import volume_error_per_trainer
                per = {n: {k: values(i, "dV", k).tolist() for k in keys} for i, n in enumerate(names)}
                volume_error_per_trainer(per, unit, tmp / "volume_error_per_trainer.png")
        result["output_folder"] = str(dest)
    return result


def _f(v, d=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if isinstance(v, float):
        return f"{v:.{d}g}" if (v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4)) else f"{v:.{d}f}"
    return str(v)


def _p(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def comparison_markdown(result: dict) -> str:
    names, keys, unit, alpha = result["models"], result["classes"], result["volume_unit"], result["alpha"]
    means = {(r["model"], r["metric"], r["class"]): r for r in result["model_means"]}
    bias = {(r["model"], r["metric"], r["class"]): r for r in result["volume_bias"]}
    metrics = sorted({r["metric"] for r in result["model_means"]}, key=lambda m: (
        ["Dice", "soft_Dice", "NLL", "Brier", "ECE", "classwise_ECE", "dV", "dV_soft", "abs_dV", "abs_dV_soft"].index(m)))
    lines = [f"# Comparison of {', '.join(names)}", "",
             f"{result['n_cases']} cases common to all models; volumes in {unit}; means over cases (NaN cases left "
             f"out, counts in comparison.json). Significant volumetric *underestimation in italic* and "
             f"**overestimation in bold** (mean dV against 0: bootstrap, {result['n_boot']} resamples, seed "
             f"{result['seed']}, Holm across classes, alpha = {alpha}), as in seed 001's Table 1.", "",
             "| metric | class | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for m in metrics:
        for k in keys + ["all"]:
            cells = []
            for n in names:
                r = means.get((n, m, k))
                if r is None:
                    cells.append("-")
                    continue
                cell = _f(r["mean"])
                b = bias.get((n, m, k))
                if b is not None and b["bias"] == "under":
                    cell = f"*{cell}*"
                elif b is not None and b["bias"] == "over":
                    cell = f"**{cell}**"
                cells.append(cell)
            if any(c != "-" for c in cells):
                label = {"dV": f"dV ({unit})", "dV_soft": f"dV soft ({unit})", "abs_dV": f"abs dV ({unit})",
                         "abs_dV_soft": f"abs dV soft ({unit})"}.get(m, m)
                lines.append(f"| {label} | {k} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired differences (B - A)", "",
              "| A | B | metric | class | mean A | mean B | B - A [95% CI] | p bootstrap (Holm) | p Wilcoxon (Holm) "
              "| n | better |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["paired"]:
        lines.append(f"| {r['model_a']} | {r['model_b']} | {r['metric']} | {r['class']} | {_f(r['mean_a'])} | "
                     f"{_f(r['mean_b'])} | {_f(r['mean_diff'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}] | "
                     f"{_p(r['p_bootstrap'])} ({_p(r['p_bootstrap_holm'])}) | {_p(r['p_wilcoxon'])} "
                     f"({_p(r['p_wilcoxon_holm'])}) | {r['n']} | {r['better']} |")
    lines += ["", f"'better': the model whose mean is significantly better (Holm-adjusted bootstrap p < {alpha}); "
              "empty when not significant or the metric has no better direction (signed dV)."]
    return "\n".join(lines) + "\n"
