"""report.md, report.html (self-contained) and report.json (the table's numbers) of a study."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, List

from nnunet_losses.evaluation.spec import class_key
from nnunet_losses.study.config import Study
from nnunet_losses.study.document import Document, Figure, Heading, Paragraph, Table, to_html, to_markdown
from nnunet_losses.study.figures import write_figures
from nnunet_losses.study.table import cell, fmt, main_table

#: the paired metrics shown in the pairwise table (compare's comparison.md has them all)
PAIRWISE_METRICS = ("Dice", "dV", "dV_soft", "abs_dV", "NLL", "Brier", "ECE", "classwise_ECE")


def label_names(dataset_json: dict) -> Dict[str, str]:
    """Class key (``"1"``, ``"(1, 2)"``) -> the name dataset.json gives it."""
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        value = tuple(value) if isinstance(value, (list, tuple)) and len(value) != 1 else (
            value[0] if isinstance(value, (list, tuple)) else value)
        names[class_key(value)] = name
    return names


def _dataset_json(summary: dict) -> dict:
    folder = summary.get("source", {}).get("trainer_folder")
    path = Path(folder) / "dataset.json" if folder else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _p(v) -> str:
    return "NaN" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")


def _status_table(study: Study, statuses) -> Table:
    rows = [[t] + [statuses[(t, f)].state for f in study.folds] for t in study.trainers]
    return Table(["trainer"] + [f"fold {f}" for f in study.folds], rows)


def _vs_baseline(table: dict) -> Table:
    rows = []
    for r in table["rows"]:
        for t, s in r["significance"].items():
            rows.append([r["label"], t, f"{fmt(s['mean_diff'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]",
                         _p(s["p_bootstrap_holm"]), _p(s["p_wilcoxon_holm"]), "yes" if s["significant"] else ""])
    return Table(["metric", "trainer", f"trainer - {table['baseline']} [95% CI]", "p bootstrap (Holm)",
                  "p Wilcoxon (Holm)", "significant"], rows)


def _pairwise(comparison: dict, baseline: str, names: Dict[str, str]) -> Table:
    rows = [[r["model_a"], r["model_b"], r["metric"], names.get(r["class"], r["class"]),
             f"{fmt(r['mean_diff'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]", _p(r["p_bootstrap_holm"]),
             r["better"]]
            for r in comparison["paired"] if r["model_a"] != baseline and r["metric"] in PAIRWISE_METRICS]
    return Table(["A", "B", "metric", "class", "B - A [95% CI]", "p bootstrap (Holm)", "better"], rows)


def build_document(study: Study, summaries: Dict[str, dict], comparison: dict, statuses, folds: List[str],
                   figures: List[Path], names: Dict[str, str], table: dict) -> Document:
    first = next(iter(summaries.values()))
    doc = Document(f"Loss study: {first['source'].get('dataset', study.dataset)}, {study.configuration}")
    doc.add(Paragraph(f"Trainers {', '.join(summaries)}; baseline {study.baseline}; plans {study.plans}. Evaluated "
                      f"on the validation cases of folds {', '.join(folds)} ({comparison['n_cases']} cases, the "
                      f"same for every trainer); volumes in {first['volume_unit']}. Written "
                      f"{time.strftime('%Y-%m-%d %H:%M')} by nnunet-losses study."),
            Heading("Runs"), _status_table(study, statuses),
            Heading("Results per trainer"),
            Paragraph(f"Means over cases (Dice: cases with an empty reference and prediction left out, as "
                      f"nnU-Net). ▲/▼: significantly higher/lower than the baseline {study.baseline} (paired "
                      f"bootstrap over cases, {comparison['n_boot']} resamples, Holm-adjusted across classes, "
                      f"alpha {comparison['alpha']}); details below. dV = V pred - V ref: hard from nnU-Net's "
                      f"segmentation, soft from the summed probabilities."),
            Table(["metric"] + table["trainers"], [[r["label"]] + [cell(r, t) for t in table["trainers"]]
                                                   for r in table["rows"]]))
    if len(summaries) > 1:
        doc.add(Heading("Against the baseline"), _vs_baseline(table))
    if len(summaries) > 2:
        doc.add(Heading("Other pairs"), _pairwise(comparison, study.baseline, names))
    doc.add(Heading("Figures"))
    captions = {"volume_error_per_case": "hard volume error per case, every trainer",
                "reliability": "reliability diagrams with the voxels per bin",
                "dice_vs_threshold": "Dice against the threshold", "dice_per_size_decile": "Dice per size decile",
                "bland_altman": "Bland-Altman plot of predicted against reference volume"}
    for f in figures:
        doc.add(Figure(f, captions.get(f.stem, f.stem)))
    doc.add(Paragraph("Every number per case and the full paired tests: evaluation/<trainer>/ (summary.json, "
                      "per_case.csv) and comparison/ (comparison.md, comparison.csv)."))
    return doc


def _extras_section(doc: Document, extras: Dict[str, dict], names: Dict[str, str]) -> None:
    """Post-processed and ensemble folders: label maps only, so the hard and surface rows (no significance:
    compare needs every model's probabilities)."""
    table = main_table(extras, {}, None, names)
    doc.add(Heading("Post-processed and ensemble predictions"),
            Paragraph("Label maps without probabilities (nnUNetv2_apply_postprocessing, find_best_configuration / "
                      "nnUNetv2_ensemble): hard metrics against nnU-Net's references, cases as found in each folder; "
                      "soft and calibration metrics do not exist for them."),
            Table(["metric"] + table["trainers"], [[r["label"]] + [cell(r, t) for t in table["trainers"]]
                                                   for r in table["rows"]]))


def write_report(study: Study, summaries: Dict[str, dict], comparison: dict, statuses, folds: List[str],
                 extras: Dict[str, dict] = None) -> dict:
    names = label_names(_dataset_json(next(iter(summaries.values()))))
    table = main_table(summaries, comparison, study.baseline, names)
    figures = write_figures(summaries, comparison, names, study.folder / "figures")
    doc = build_document(study, summaries, comparison, statuses, folds, figures, names, table)
    if extras:
        _extras_section(doc, extras, names)
    (study.folder / "report.md").write_text(to_markdown(doc, study.folder))
    (study.folder / "report.html").write_text(to_html(doc))
    extra_table = main_table(extras, {}, None, names) if extras else None
    (study.folder / "report.json").write_text(json.dumps({"folds": folds, "table": table, "extras": extra_table},
                                                         indent=2))
    return {"markdown": str(study.folder / "report.md"), "html": str(study.folder / "report.html"),
            "json": str(study.folder / "report.json"), "table": table}
