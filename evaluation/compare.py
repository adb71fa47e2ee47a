"""``compare``: paired comparison of evaluated models on the same cases (Bertels et al. 2020, Table 1).

Input: the output folders (or summary.json files) of ``nnunet-losses evaluate`` -- the per-case metrics are
already there, so comparing is cheap and never re-reads probabilities.

* per model and class: mean of every metric; volume bias ``dV`` (hard) and ``dV_soft`` tested against 0
  (bootstrap + Wilcoxon, Holm across classes) -> flagged *under*- (italic) or **over**-estimation (bold) when the
  Holm-adjusted bootstrap p < alpha, as in Bertels et al. 2020, Table 1;
* per pair of models (every pair, ``B - A`` with A listed first), metric and class: mean difference, bootstrap
  percentile CI, bootstrap p and Wilcoxon signed-rank p, both Holm-adjusted across the classes of that
  (pair, metric) family; the case-level calibration metrics (NLL, Brier, top-label ECE, classwise ECE) form families of
  one.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.formatting import number, p_value
from nnunet_losses.evaluation.stats import DEFAULT_N_BOOT, DEFAULT_SEED, holm, one_sample, paired

CLASS_METRICS = ("Dice", "soft_Dice", "dV", "abs_dV", "dV_soft", "abs_dV_soft", "NLL", "Brier", "one_vs_rest_ECE")
#: the decision rules' Dice (evaluation/decision_summary.py), compared like the metrics: ``Dice[rule]``
RULE_METRICS = ("Dice[best_T_crossfit]", "Dice[dice_optimal]", "Dice[rankseg_rma]", "Dice[volume_matched]",
                "abs_dV[volume_matched]")
CASE_METRICS = ("NLL", "Brier", "top_label_ECE", "classwise_ECE")
BIAS_METRICS = ("dV", "dV_soft")
#: which direction is better, for the "better" column (None: no order, e.g. signed volume error)
HIGHER_IS_BETTER = {"Dice": True, "soft_Dice": True, "abs_dV": False, "abs_dV_soft": False, "NLL": False,
                    "Brier": False, "one_vs_rest_ECE": False, "top_label_ECE": False, "classwise_ECE": False,
                    "dV": None, "dV_soft": None, **{m: not m.startswith("abs_dV") for m in RULE_METRICS}}
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


class _Table:
    """Per-case values of one evaluation on the common cases, as float64 arrays (NaN kept)."""

    def __init__(self, summary: dict, cases: Sequence[str]):
        by_case = {c["case"]: c for c in summary["metric_per_case"]}
        self.rows = [by_case[c] for c in cases]

    def values(self, metric: str, key: Optional[str]) -> np.ndarray:
        """``metric`` of class ``key`` per case, or the case-level calibration ``metric`` when ``key`` is None."""
        if key is None:
            return np.array([r["calibration"][metric] for r in self.rows], dtype=np.float64)
        if metric.endswith("]"):  # a decision rule's metric, "Dice[dice_optimal]"
            field, rule = metric[:-1].split("[")
            return np.array([r["decisions"][key][rule][field] for r in self.rows], dtype=np.float64)
        return np.array([r["metrics"][key][metric] for r in self.rows], dtype=np.float64)


def _model_names(sums: Sequence[dict], names: Optional[Sequence[str]]) -> List[str]:
    if names is None:
        names = [s.get("name") or Path(s.get("_path", f"model{i}")).parent.name for i, s in enumerate(sums)]
    names = list(names)
    if len(names) != len(sums):
        raise EvaluationError(f"{len(names)} names for {len(sums)} evaluations")
    if len(set(names)) != len(names):
        names = [f"{n} [{i + 1}]" for i, n in enumerate(names)]
    return names


def _check_distinct(sums: Sequence[dict], names: Sequence[str]) -> None:
    """No evaluation twice: the same summary.json, or two evaluations of the same predictions."""
    seen = {}
    for s, n in zip(sums, names):
        src = s.get("source") or {}
        folder = src.get("trainer_folder") or src.get("prediction_folder")
        ids = [("file", str(Path(s["_path"]).resolve()))] if s.get("_path") else []
        if folder:
            ids.append(("predictions", json.dumps([folder, src.get("folds")], sort_keys=True)))
        for i in ids:
            if i in seen:
                raise EvaluationError(f"{s.get('_path') or n}: evaluates the same predictions as {seen[i]}; "
                                      f"a model compared with itself has nothing to test -- give different models")
            seen[i] = s.get("_path") or n


def _check_comparable(sums: Sequence[dict], names: Sequence[str]) -> str:
    """Same dataset, classes and volume unit in every evaluation; returns the unit."""
    datasets = {(s.get("source") or {}).get("dataset") for s in sums} - {None}
    if len(datasets) > 1:
        raise EvaluationError(f"evaluations of different datasets {sorted(datasets)}; compare models of the same "
                              f"dataset (the cases would be paired by name only)")
    keys = list(sums[0]["mean"].keys())
    for s, n in zip(sums[1:], names[1:]):
        if list(s["mean"].keys()) != keys:
            raise EvaluationError(f"{s.get('_path', n)}: classes {list(s['mean'].keys())} differ from {keys} of "
                                  f"{sums[0].get('_path', names[0])}; compare models of the same dataset")
    units = {s["volume_unit"] for s in sums}
    if len(units) != 1:
        raise EvaluationError(f"evaluations use different volume units {sorted(units)}")
    return units.pop()


def _common_cases(sums: Sequence[dict], names: Sequence[str], common_cases: bool) -> List[str]:
    case_sets = [{c["case"] for c in s["metric_per_case"]} for s in sums]
    common = sorted(set.intersection(*case_sets))
    for cases, s, n in zip(case_sets, sums, names):
        extra = sorted(cases - set(common))
        if extra and not common_cases:
            raise EvaluationError(f"{s.get('_path') or n}: case {extra[0]} is not evaluated for every model "
                                  f"({len(extra)} such); evaluate the same folds, or pass --common_cases")
    if not common:
        raise EvaluationError("the evaluations have no case in common")
    return common


def _holm_columns(family: List[dict]) -> None:
    """Add the Holm-adjusted ``p_bootstrap_holm`` and ``p_wilcoxon_holm`` over one family of tests."""
    for col in ("p_bootstrap", "p_wilcoxon"):
        for r, adjusted in zip(family, holm([r[col] for r in family])):
            r[col + "_holm"] = float(adjusted)


def model_means(tables: Sequence[_Table], names, keys, class_metrics, case_metrics) -> List[dict]:
    """Mean (NaN cases left out) of every metric per model and class; the case-level ones as class "all"."""
    rows = []
    for t, n in zip(tables, names):
        cells = [(m, k, t.values(m, k)) for m in class_metrics for k in keys]
        cells += [(m, "all", t.values(m, None)) for m in case_metrics]
        for m, k, v in cells:
            ok = ~np.isnan(v)
            rows.append({"model": n, "metric": m, "class": k, "mean": float(v[ok].mean()) if ok.any() else math.nan,
                         "n": int(ok.sum()), "n_nan": int((~ok).sum())})
    return rows


def volume_bias(tables: Sequence[_Table], names, keys, n_boot: int, seed: int, alpha: float) -> List[dict]:
    """Per model and bias metric: mean against 0 per class, Holm across the classes (Table 1 flags)."""
    rows = []
    for t, n in zip(tables, names):
        for m in BIAS_METRICS:
            family = [dict(model=n, metric=m, **{"class": k}, **one_sample(t.values(m, k), n_boot, seed, alpha))
                      for k in keys]
            _holm_columns(family)
            for r in family:
                significant = r["p_bootstrap_holm"] < alpha
                r["bias"] = ("over" if r["mean"] > 0 else "under") if significant else ""
            rows += family
    return rows


def better_model(row: dict, metric: str, alpha: float) -> str:
    """The model of a paired row (``mean_diff`` = B - A) whose mean is significantly better, else ""."""
    higher_is_better = HIGHER_IS_BETTER[metric]
    if row["p_bootstrap_holm"] >= alpha or higher_is_better is None or row["mean_diff"] == 0:
        return ""
    return row["model_b"] if (row["mean_diff"] > 0) == higher_is_better else row["model_a"]


def paired_differences(tables: Sequence[_Table], names, keys, class_metrics, case_metrics, n_boot: int, seed: int,
                       alpha: float) -> List[dict]:
    """Every pair (B - A, A listed first), metric and class; Holm across the classes of each (pair, metric)."""
    rows = []
    families = [(m, keys) for m in class_metrics] + [(m, [None]) for m in case_metrics]
    for (ta, a), (tb, b) in itertools.combinations(zip(tables, names), 2):
        for m, family_keys in families:
            family = [{"model_a": a, "model_b": b, "metric": m, "class": k if k is not None else "all",
                       **paired(ta.values(m, k), tb.values(m, k), n_boot, seed, alpha)} for k in family_keys]
            _holm_columns(family)
            for r in family:
                r["better"] = better_model(r, m, alpha)
            rows += family
    return rows


def compare(evaluations: Sequence, output_folder=None, *, names: Optional[Sequence[str]] = None,
            n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED, alpha: float = 0.05, common_cases: bool = False,
            overwrite: bool = False, plots: bool = True) -> dict:
    """Compare evaluated models (paths to evaluation folders/summary.json, or summary dicts)."""
    if len(evaluations) < 2:
        raise EvaluationError("compare needs at least two evaluations")
    sums = [e if isinstance(e, dict) else load_evaluation(e) for e in evaluations]
    names = _model_names(sums, names)
    _check_distinct(sums, names)
    unit = _check_comparable(sums, names)
    keys = list(sums[0]["mean"].keys())
    common = _common_cases(sums, names, common_cases)
    tables = [_Table(s, common) for s in sums]
    regions = sums[0].get("task", {}).get("type") == "regions"
    # label models have no per-class NLL (theirs is categorical, per case), region models no top label
    class_metrics = [m for m in CLASS_METRICS if m != "NLL" or regions]
    if all("decisions" in s["metric_per_case"][0] for s in sums):  # evaluations made before the rules have none
        class_metrics += list(RULE_METRICS)
    case_metrics = [m for m in CASE_METRICS if m != "top_label_ECE" or not regions]
    result = {"models": names, "sources": [s.get("_path") for s in sums], "classes": keys, "volume_unit": unit,
              "n_cases": len(common), "cases": common, "alpha": alpha, "n_boot": n_boot, "seed": seed,
              "model_means": model_means(tables, names, keys, class_metrics, case_metrics),
              "volume_bias": volume_bias(tables, names, keys, n_boot, seed, alpha),
              "paired": paired_differences(tables, names, keys, class_metrics, case_metrics, n_boot, seed, alpha)}
    if output_folder is not None:
        per_model_dV = {n: {k: t.values("dV", k).tolist() for k in keys} for t, n in zip(tables, names)}
        inputs = [Path(s["_path"]).parent for s in sums if s.get("_path")]
        result["output_folder"] = str(_write_comparison(result, per_model_dV, Path(output_folder), inputs,
                                                        [(s.get("source") or {}).get("dataset") for s in sums],
                                                        overwrite, plots))
    return result


def _write_comparison(result: dict, per_model_dV: dict, output_folder: Path, inputs: List[Path], datasets,
                      overwrite: bool, plots: bool) -> Path:
    from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination, write_csv, write_json
    dest = check_destination(output_folder, inputs, overwrite,
                             list(OUTPUT_FILES) + (list(PLOT_FILES) if plots else []), datasets)
    with AtomicFolder(dest) as tmp:
        write_json(result, tmp / "comparison.json", sort_keys=False)
        write_csv(result["paired"], tmp / "comparison.csv")
        write_csv(result["volume_bias"], tmp / "volume_bias.csv")
        (tmp / "comparison.md").write_text(comparison_markdown(result))
        if plots:
            from nnunet_losses.evaluation.plots import volume_error_per_trainer
            volume_error_per_trainer(per_model_dV, result["volume_unit"], tmp / "volume_error_per_trainer.png")
    return dest


def comparison_markdown(result: dict) -> str:
    names, keys, unit, alpha = result["models"], result["classes"], result["volume_unit"], result["alpha"]
    means = {(r["model"], r["metric"], r["class"]): r for r in result["model_means"]}
    bias = {(r["model"], r["metric"], r["class"]): r for r in result["volume_bias"]}
    metrics = sorted({r["metric"] for r in result["model_means"]}, key=lambda m: (
        ["Dice", "soft_Dice", "NLL", "Brier", "one_vs_rest_ECE", "top_label_ECE", "classwise_ECE", "dV", "dV_soft",
         "abs_dV", "abs_dV_soft", *RULE_METRICS].index(m)))
    lines = [f"# Comparison of {', '.join(names)}", "",
             f"{result['n_cases']} cases common to all models; volumes in {unit}; means over cases (NaN cases left "
             f"out, counts in comparison.json). Significant volumetric *underestimation in italic* and "
             f"**overestimation in bold** (mean dV against 0: bootstrap, {result['n_boot']} resamples, seed "
             f"{result['seed']}, Holm across classes, alpha = {alpha}), as in Bertels et al. 2020, Table 1.", "",
             "| metric | class | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for m in metrics:
        for k in keys + ["all"]:
            cells = []
            for n in names:
                r = means.get((n, m, k))
                if r is None:
                    cells.append("-")
                    continue
                cell = number(r["mean"])
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
        lines.append(f"| {r['model_a']} | {r['model_b']} | {r['metric']} | {r['class']} | {number(r['mean_a'])} | "
                     f"{number(r['mean_b'])} | {number(r['mean_diff'])} [{number(r['ci_low'])}, {number(r['ci_high'])}] | "
                     f"{p_value(r['p_bootstrap'])} ({p_value(r['p_bootstrap_holm'])}) | {p_value(r['p_wilcoxon'])} "
                     f"({p_value(r['p_wilcoxon_holm'])}) | {r['n']} | {r['better']} |")
    lines += ["", f"'better': the model whose mean is significantly better (Holm-adjusted bootstrap p < {alpha}); "
              "empty when not significant or the metric has no better direction (signed dV)."]
    return "\n".join(lines) + "\n"
