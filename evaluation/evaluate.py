"""``evaluate``: one model's probabilities against the references -> summary.json, CSV tables, plots.

Each case is read once (probabilities + reference), reduced to the fixed-size :class:`~.accumulate.CaseStats`
and dropped: a background thread inflates the npz file while the reduction walks through the part already
there, so reading and reducing overlap and one case is in memory at a time; with ``num_processes > 1`` the
cases are spread over worker processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from nnunet_losses.evaluation.accumulate import DEFAULT_BINS, DEFAULT_EPS, DEFAULT_THRESHOLDS, BinGrid, CaseStats, accumulate_case
from nnunet_losses.evaluation.bands import CaseBands, bands_summary, case_band_table
from nnunet_losses.evaluation.decision_report import DECISION_FILES, DECISION_PLOTS
from nnunet_losses.evaluation.decision_summary import decisions_for_cases
from nnunet_losses.evaluation.decisions import case_cuts, fine_histograms
from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.volume import case_volume, volume_summary
from nnunet_losses.evaluation.cases import CaseFiles, Source, find_cases, load_properties, load_reference, open_probabilities, voxel_volume
from nnunet_losses.evaluation.metrics import (CALIBRATION_METRICS, case_metrics, dice_jaccard_check, means, nan_stats, pooled_calibration,
                      size_deciles, threshold_sweep)
from nnunet_losses.evaluation.parallel import map_cases
from nnunet_losses.evaluation.spec import TaskSpec
from nnunet_losses.evaluation.surface import CaseSurface

OUTPUT_FILES = ("summary.json", "per_case.csv", "threshold_sweep.csv", "size_deciles.csv", "reliability.csv",
                "summary.md") + DECISION_FILES
PLOT_FILES = ("reliability_diagram.png", "dice_vs_threshold.png", "dice_vs_size_decile.png",
              "volume_error.png") + DECISION_PLOTS


# ---------------------------------------------------------------------------------------------------------------
# per case (runs in worker processes too)
# ---------------------------------------------------------------------------------------------------------------
def _check_geometry(case: CaseFiles, ref_props: dict, props: Optional[dict]) -> None:
    if props is None:
        return
    a, b = props.get("spacing"), ref_props.get("spacing")
    if a is not None and b is not None and (len(a) != len(b) or not np.allclose(a, b, rtol=1e-4, atol=1e-6)):
        raise EvaluationError(f"{case.pkl}: spacing {list(map(float, a))} differs from the reference "
                              f"{case.reference} ({list(map(float, b))}); prediction and reference are not the "
                              f"same image")
    sa, sb = props.get("sitk_stuff"), ref_props.get("sitk_stuff")
    if isinstance(sa, dict) and isinstance(sb, dict):
        for k in ("origin", "direction"):
            if k in sa and k in sb and (len(sa[k]) != len(sb[k]) or not np.allclose(sa[k], sb[k], atol=1e-3)):
                raise EvaluationError(f"{case.pkl}: image {k} {tuple(sa[k])} differs from the reference "
                                      f"{case.reference} ({tuple(sb[k])}); prediction and reference are not "
                                      f"the same image")


def process_case(case: CaseFiles, spec: TaskSpec, grid: BinGrid, eps: float, reader_writer_class,
                 extra=None) -> dict:
    """Read one case and reduce it to its statistics. The probabilities are inflated by a background thread
    while the reduction walks through them (:func:`.accumulate.accumulate_case` waits for each part), so the
    case is read and reduced at the same time and only one case is in memory."""
    ref, ref_props = load_reference(case.reference, reader_writer_class())
    props = load_properties(case.pkl)
    _check_geometry(case, ref_props, props)
    spacing = [float(s) for s in ref_props.get("spacing", [1.0] * ref.ndim)]
    vv, unit, is2d = voxel_volume(spacing, ref.shape)
    with open_probabilities(case.npz, case.rerun) as probs:
        stats = accumulate_case(probs.array, ref, spec, grid, eps, name=str(case.npz),
                                reference_name=str(case.reference), wait=probs.wait)
        # the decision rules' exact cuts: the pass's fine histograms + the in-memory case (no second read)
        cuts = case_cuts(probs.array, ref, spec, fine_histograms(stats, grid))
        # anything else a caller computes from the case while it is in memory (distance bands, calibration samples)
        more = extra(case, probs.array, ref, stats, spacing) if extra is not None else {}
    return {**more, "stats": stats, "cuts": cuts, "voxel_volume": vv, "unit": unit, "is_2d": is2d, "spacing": spacing,
            "shape": [int(s) for s in ref.shape]}


class CaseHooks:
    """Several per-case hooks as one (picklable): their results merged."""

    def __init__(self, hooks):
        self.hooks = list(hooks)

    def __call__(self, case, probabilities, reference, stats, spacing) -> dict:
        return {k: v for hook in self.hooks for k, v in hook(case, probabilities, reference, stats, spacing).items()}


def reduce_cases(source: Source, grid: BinGrid, eps: float = DEFAULT_EPS, num_processes: int = 1,
                 progress: bool = False, extra=None) -> List[dict]:
    """Per-case statistics, in this process (each case read and reduced at once, see :func:`process_case`) or
    spread over ``num_processes`` worker processes. ``extra(case, probabilities, reference, stats, spacing) ->
    dict`` (picklable) adds to each case's result while the case is in memory."""
    return map_cases(process_case, source.cases, dict(spec=source.spec, grid=grid, eps=eps,
                                                      reader_writer_class=source.reader_writer_class, extra=extra),
                     num_processes, progress, f"evaluating {source.name}")


# ---------------------------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------------------------
def class_names(dataset_json: dict, spec: TaskSpec) -> dict:
    """``{class key: name in dataset.json}`` (for plot titles)."""
    from nnunet_losses.evaluation.spec import class_key
    names = {class_key(v): n for n, v in dataset_json.get("labels", {}).items()}
    return {k: names[k] for k in spec.keys if k in names}


def volume_block(spec: TaskSpec, per_case: List[dict], stats: List[CaseStats]) -> dict:
    """Fill ``per_case[i]["volume"][key]`` (Poisson-binomial volume, see :mod:`.volume`) and summarise per class."""
    out = {}
    for key, ch in zip(spec.keys, spec.class_channels):
        rows = []
        for case, s in zip(per_case, stats):
            m = case["metrics"][key]
            v = case_volume(s.sum_p[ch], s.sum_p2[ch], case["voxel_volume"], m["V_ref"])
            case.setdefault("volume", {})[key] = v
            rows.append({**v, "V_ref": m["V_ref"], "V_pred": m["V_pred"]})
        out[key] = volume_summary(rows)
    return out


def _per_fold(per_case: List[dict], keys: List[str]) -> dict:
    out = {}
    for fold in sorted({c["fold"] for c in per_case if c["fold"] is not None}, key=str):
        rows = [c for c in per_case if c["fold"] == fold]
        fm, ffg, _ = means(rows, keys)
        out[str(fold)] = {"n_cases": len(rows), "mean": fm, "foreground_mean": ffg,
                          "calibration_mean": {k: nan_stats([c["calibration"][k] for c in rows])["mean"]
                                               for k in CALIBRATION_METRICS}}
    return out


def _empty_cases(per_case: List[dict], keys: List[str]) -> dict:
    out = {}
    for k in keys:
        rows = [c["metrics"][k] for c in per_case]
        out[k] = {"n_cases": len(rows),
                  "n_empty_reference": sum(1 for r in rows if r["n_ref"] == 0),
                  "n_empty_prediction": sum(1 for r in rows if r["n_pred"] == 0),
                  "n_empty_reference_and_prediction": sum(1 for r in rows if r["n_ref"] == 0 and r["n_pred"] == 0),
                  "note": "Dice/IoU of empty reference and prediction are NaN (nnU-Net's convention) and left out "
                          "of the means; see nan_counts"}
    return out


def build_summary(source: Source, results: List[dict], grid: BinGrid, eps: float,
                  fixed_threshold: float = 0.5) -> dict:
    spec = source.spec
    keys = spec.keys
    units = {r["unit"] for r in results}
    if len(units) > 1:
        raise EvaluationError(f"{source.name}: 2D and 3D images mixed ({sorted(units)}); nnU-Net datasets are one "
                              f"or the other")
    unit = units.pop() if units else "ml"
    per_case = []
    stats: List[CaseStats] = []
    for case, r in zip(source.cases, results):
        m, cal = case_metrics(r["stats"], spec, r["voxel_volume"])
        per_case.append({"reference_file": str(case.reference), "prediction_file": str(case.npz), "case": case.name,
                         "fold": case.fold, "metrics": m, "calibration": cal, "n_voxels": r["stats"].n_valid,
                         "n_ignored": r["stats"].n_ignored, "n_clipped": r["stats"].n_clipped,
                         "voxel_volume": r["voxel_volume"], "spacing": r["spacing"], "shape": r["shape"]})
        stats.append(r["stats"])
    sweep = threshold_sweep(stats, spec, grid)
    decisions = decisions_for_cases(stats, spec, grid.thresholds, per_case, [r["cuts"] for r in results], sweep,
                                    fixed_threshold)
    volume = volume_block(spec, per_case, stats)
    if results and "surface" in results[0]:
        for case, r in zip(per_case, results):
            for key, m in r["surface"].items():
                case["metrics"][key].update(m)
    bands = None
    if results and "bands" in results[0]:
        for case, r in zip(per_case, results):
            case["bands"] = case_band_table(r["bands"], r["voxel_volume"])
        bands = bands_summary([r["bands"] for r in results], [r["voxel_volume"] for r in results])
    mean, fg, nan_counts = means(per_case, keys)
    summary = {
        "metric_per_case": per_case,
        "mean": mean,
        "foreground_mean": fg,
        "nan_counts": nan_counts,
        "empty_cases": _empty_cases(per_case, keys),
        "per_fold": _per_fold(per_case, keys),
        "calibration": {"pooled": pooled_calibration(stats, spec, grid),
                        "per_case": {k: nan_stats([c["calibration"][k] for c in per_case]) for k in CALIBRATION_METRICS}},
        "threshold_sweep": sweep,
        "decisions": decisions,
        "volume": volume,
        **({"bands": bands} if bands is not None else {}),
        "size_deciles": size_deciles(per_case, keys),
        "dice_jaccard": dice_jaccard_check(per_case, keys),
        "volume_unit": unit,
        "n_cases": len(per_case),
        "name": source.name,
        "source": source.description,
        "task": {"type": "regions" if spec.has_regions else "labels", "classes": keys,
                 "class_names": class_names(source.dataset_json, spec),
                 "channels": [str(c) for c in spec.channels], "ignore_label": spec.ignore_label,
                 "regions_class_order": list(spec.regions_class_order) if spec.regions_class_order else None,
                 "hard_map": ("sequential p > 0.5 overwrite in regions_class_order" if spec.has_regions
                              else "argmax over channels")},
        "settings": {"n_bins": grid.n_bins, "thresholds": list(grid.thresholds), "eps": eps,
                     "fine_grid_resolution": grid.resolution},
    }
    return summary


def evaluate(inputs, output_folder=None, *, reference_folder=None, folds: Optional[Sequence] = None,
             dataset_json=None, plans=None, n_bins: int = DEFAULT_BINS,
             thresholds: Sequence[float] = DEFAULT_THRESHOLDS, eps: float = DEFAULT_EPS, num_processes: int = 1,
             chill: bool = False, overwrite: bool = False, plots: bool = True, progress: bool = False,
             name: Optional[str] = None, fixed_threshold: float = 0.5, bands: bool = False,
             surface_tolerance_mm: Optional[float] = None) -> dict:
    """Evaluate one model; returns the summary dict and, with ``output_folder``, writes it (see docs).

    ``inputs``: a trainer folder, fold folder(s), or a prediction folder (then ``reference_folder`` is needed); a
    folder of label maps without probabilities gets the hard and surface metrics only (:mod:`.labelmaps`).
    ``fixed_threshold``: the decision rule ``fixed_T``'s threshold (added to the sweep's thresholds).
    ``bands``: also FP/FN volume and ECE per distance band from the reference surface (:mod:`.bands`; costs a few
    distance transforms per case and class). ``surface_tolerance_mm``: also HD95 and the normalized surface Dice
    at that tolerance of nnU-Net's hard map, per case and class (:mod:`.surface`; None: not computed).
    """
    from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    from nnunet_losses.evaluation.labelmaps import evaluate_label_maps, is_label_map_folder
    # no probabilities: hard and surface metrics only; no references (a test set): the per-case volumes
    if is_label_map_folder(inputs, dataset_json, reference_folder):
        return evaluate_label_maps(inputs[0], output_folder, reference_folder=reference_folder,
                                   dataset_json=dataset_json, plans=plans, chill=chill, overwrite=overwrite,
                                   progress=progress, name=name)
    try:
        grid = BinGrid(n_bins, tuple(sorted({float(t) for t in thresholds} | {float(fixed_threshold)})))
    except ValueError as e:
        raise EvaluationError(f"sweep thresholds / bins: {e}") from None
    source = find_cases(inputs, reference_folder, [str(f) for f in folds] if folds else None, dataset_json, plans,
                        chill)
    if name:
        source.name = name
    dest = None
    if output_folder is not None:
        dest = check_destination(Path(output_folder), source.protected, overwrite,
                                 list(OUTPUT_FILES) + (list(PLOT_FILES) if plots else []), [source.dataset])
    hooks = ([CaseBands(source.spec, grid)] if bands else []) + \
        ([CaseSurface(source.spec, surface_tolerance_mm)] if surface_tolerance_mm is not None else [])
    results = reduce_cases(source, grid, eps, num_processes, progress, extra=CaseHooks(hooks) if hooks else None)
    summary = build_summary(source, results, grid, eps, fixed_threshold)
    if dest is not None:
        from nnunet_losses.evaluation.report import write_evaluation
        with AtomicFolder(dest) as tmp:
            write_evaluation(summary, tmp, plots=plots)
        summary["output_folder"] = str(dest)
    return summary
