"""Challenge packaging: nnU-Net predictions (or thresholded label maps) -> what a challenge's submission expects.

For every prediction file ``CASE<ending>`` in the predictions folder:

* its **reference** -- the case's image in the official download (or nnU-Net's ``imagesTs/CASE_0000``) -- is found;
* its **labels** are checked (only the values the task can produce) and mapped back to the challenge's encoding;
* its **geometry** (size; for NIfTI also spacing, origin, direction) must match the reference; the output gets the
  reference's geometry exactly;
* it is written under the challenge's **file name**.

Everything is checked before anything is written; existing output files are never overwritten; the files are written
into a scratch folder and moved into place only when all succeeded.

Challenges and tasks ("variants"; read from the predictions folder's dataset.json, which nnU-Net copies there, when
the dataset was made by ``nnunet-losses convert``):

* ``brats2018``: ``CASE.nii.gz`` with BraTS labels 0/1/2/4. ``regions`` (nnU-Net's region-based output 0..3) is
  mapped back by nnU-Net's own ``convert_labels_back_to_BraTS``. Binary tasks cannot express the other BraTS
  labels: ``wt`` is written as label 2, ``tc`` as 1, ``et`` as 4 -- only the score of that region is meaningful.
* ``kits19``: ``prediction_XXXXX.nii.gz`` (nnU-Net's KiTS19 submission naming, ``case`` -> ``prediction``) with
  labels 0/1 kidney/2 tumour; ``kidney`` is written as 1 (only the kidney+tumour composite score is meaningful),
  ``tumour`` as 2.
* ``isic2018``: ``ISIC_NNNNNNN_segmentation.png`` with 0/255, the size of the input image.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_losses.datasets.converter import MAX_LISTED, first_existing


class PackagingError(ValueError):
    """Something prevents a correct submission; the message lists every problem found."""

    def __init__(self, challenge: str, problems: Sequence[str]):
        self.problems = list(problems)
        lines = [f"{challenge}: nothing written, {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Task:
    inputs: Tuple[int, ...]  # label values a prediction of this task may contain
    to_challenge: Callable[[np.ndarray], np.ndarray]


def _brats_back(seg: np.ndarray) -> np.ndarray:
    from nnunetv2.dataset_conversion.Dataset042_BraTS18 import convert_labels_back_to_BraTS
    return convert_labels_back_to_BraTS(seg)


def _binary_as(value: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda seg: (seg > 0).astype(np.uint8) * np.uint8(value)


class Challenge:
    key = ""
    pred_ending = ".nii.gz"
    #: the challenge's case identifiers (a file of another dataset in the predictions folder is an error)
    case_id = re.compile(".*")
    case_example = ""
    tasks: Dict[str, Task] = {}
    default_task = ""

    def out_name(self, case: str) -> str:
        raise NotImplementedError

    def reference_candidates(self, ref: Path, case: str) -> List[Path]:
        raise NotImplementedError


class BraTS2018(Challenge):
    key = "brats2018"
    case_id = re.compile(r"^Brats18_[A-Za-z0-9_]+_\d+$")
    case_example = "Brats18_CBICA_AAB_1"
    tasks = {"regions": Task((0, 1, 2, 3), _brats_back), "wt": Task((0, 1), _binary_as(2)),
             "tc": Task((0, 1), _binary_as(1)), "et": Task((0, 1), _binary_as(4))}
    default_task = "regions"

    def out_name(self, case):
        return f"{case}.nii.gz"

    def reference_candidates(self, ref, case):
        out = []
        for base in (ref, ref / "HGG", ref / "LGG", ref / "MICCAI_BraTS_2018_Data_Validation",
                     ref / "MICCAI_BraTS_2018_Data_Training" / "HGG", ref / "MICCAI_BraTS_2018_Data_Training" / "LGG"):
            out += [base / case / f"{case}_t1.nii.gz", base / case / f"{case}_t1.nii"]
        return out + [ref / f"{case}_0000.nii.gz"]


class KiTS19(Challenge):
    key = "kits19"
    case_id = re.compile(r"^case_\d{5}$")
    case_example = "case_00210"
    tasks = {"multiclass": Task((0, 1, 2), lambda seg: seg.astype(np.uint8)), "kidney": Task((0, 1), _binary_as(1)),
             "tumour": Task((0, 1), _binary_as(2))}
    default_task = "multiclass"

    def out_name(self, case):
        return case.replace("case", "prediction", 1) + ".nii.gz"

    def reference_candidates(self, ref, case):
        return [ref / case / "imaging.nii.gz", ref / "data" / case / "imaging.nii.gz", ref / f"{case}_0000.nii.gz"]


class ISIC2018(Challenge):
    key = "isic2018"
    case_id = re.compile(r"^ISIC_\d{7}$")
    case_example = "ISIC_0000000"
    pred_ending = ".png"
    tasks = {"lesion": Task((0, 1), lambda seg: (seg > 0).astype(np.uint8) * np.uint8(255))}
    default_task = "lesion"

    def out_name(self, case):
        return f"{case}_segmentation.png"

    def reference_candidates(self, ref, case):
        out = []
        for base in [ref] + [ref / f"ISIC2018_Task1-2_{s}_Input" for s in ("Test", "Validation", "Training")]:
            out += [base / f"{case}.jpg", base / f"{case}.jpeg"]
        return out + [ref / f"{case}_0000.png"]


CHALLENGES = {c.key: c for c in (BraTS2018, KiTS19, ISIC2018)}


# ---- geometry -----------------------------------------------------------------------------------------------------
def _geometry(path: Path) -> dict:
    """Size (and for NIfTI spacing, origin, direction) read from the header only."""
    if path.name.lower().endswith((".nii.gz", ".nii")):
        import SimpleITK as sitk
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return {"size": tuple(reader.GetSize()), "spacing": reader.GetSpacing(), "origin": reader.GetOrigin(),
                "direction": reader.GetDirection()}
    from PIL import Image
    with Image.open(path) as img:
        return {"size": tuple(img.size)}


def _geometry_problems(pred: dict, ref: dict) -> List[str]:
    if pred["size"] != ref["size"]:
        return [f"size {pred['size']} != reference {ref['size']}"]
    problems = []
    for key, atol in (("spacing", 1e-4), ("origin", 1e-3), ("direction", 1e-4)):
        if key in ref and not np.allclose(pred[key], ref[key], rtol=1e-5, atol=atol):
            problems.append(f"{key} {tuple(np.round(pred[key], 5))} != reference {tuple(np.round(ref[key], 5))}")
    return problems


def _read_labels(path: Path) -> np.ndarray:
    if path.name.lower().endswith((".nii.gz", ".nii")):
        import SimpleITK as sitk
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img)


def _write(arr: np.ndarray, ref_geometry: dict, dst: Path) -> None:
    if dst.name.endswith(".nii.gz"):
        import SimpleITK as sitk
        out = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.uint8))
        out.SetSpacing(ref_geometry["spacing"])
        out.SetOrigin(ref_geometry["origin"])
        out.SetDirection(ref_geometry["direction"])
        sitk.WriteImage(out, str(dst), useCompression=True)
    else:
        from PIL import Image
        Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(dst)


def _labels_of(dataset_json: dict) -> int:
    """Number of label values an nnU-Net dataset.json declares (background included, the ignore label not)."""
    return sum(1 for k in dataset_json.get("labels", {}) if k != "ignore")


def _task(ch: Challenge, predictions: Path, variant: Optional[str]) -> Tuple[str, Task]:
    """The task the predictions are for: from the ``nnunet_losses`` record of their dataset.json (written by
    ``convert``, copied by nnU-Net and ``threshold``), else ``variant``; never a silent default -- a binary
    tumour map packaged as the multi-class task would be scored as kidney."""
    meta_file = predictions / "dataset.json"
    dataset_json = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    meta = (dataset_json or {}).get("nnunet_losses") or {}
    if meta and meta.get("dataset") != ch.key:
        raise PackagingError(ch.key, [f"{meta_file} says these are predictions for {meta.get('dataset')!r}"])
    detected = meta.get("variant")
    if variant is not None and detected is not None and variant != detected:
        raise PackagingError(ch.key, [f"--variant {variant} but {meta_file} says {detected}"])
    name = variant or detected
    if name is None and dataset_json is None:
        raise PackagingError(ch.key, [f"{meta_file} is missing, so the task of these predictions is unknown "
                                      f"(nnU-Net and `nnunet-losses threshold` write one); name it with --variant "
                                      f"({', '.join(sorted(ch.tasks))})"])
    name = name or ch.default_task
    if name not in ch.tasks:
        raise PackagingError(ch.key, [f"unknown task {name!r}; {ch.key} has {sorted(ch.tasks)}"])
    task = ch.tasks[name]
    if dataset_json is not None and _labels_of(dataset_json) != len(task.inputs):
        raise PackagingError(ch.key, [f"{meta_file} declares {_labels_of(dataset_json)} labels, task {name!r} has "
                                      f"{len(task.inputs)} ({list(task.inputs)}); name the task with --variant"])
    return name, task


def _plan(ch: Challenge, predictions: Path, output: Path, reference: Path):
    """``([(prediction, reference geometry, output file)], problems)``: names, references and geometry checked."""
    preds = sorted(p for p in predictions.iterdir() if p.is_file() and p.name.endswith(ch.pred_ending)
                   and not p.name.startswith("."))
    if not preds:
        return [], [f"no *{ch.pred_ending} predictions in {predictions}"]
    problems: List[str] = []
    plan = []
    for p in preds:
        case = p.name[: -len(ch.pred_ending)]
        if not ch.case_id.match(case):
            problems.append(f"{p.name}: {ch.key} case IDs look like {ch.case_example}, got {case}")
            continue
        out = output / ch.out_name(case)
        if out.exists():
            problems.append(f"{out} exists; refusing to overwrite it")
        candidates = ch.reference_candidates(reference, case)
        ref = first_existing(*candidates)
        if ref is None:
            problems.append(f"{p.name}: no reference image for {case} in {reference} (looked for "
                            f"{', '.join(str(c.relative_to(reference)) for c in candidates[:2])}, ...)")
            continue
        ref_geometry = _geometry(ref)
        for g in _geometry_problems(_geometry(p), ref_geometry):
            problems.append(f"{p.name}: {g} ({ref})")
        plan.append((p, ref_geometry, out))
    if len({o for _, _, o in plan}) != len(plan):
        problems.append("several predictions map to the same output name")
    return plan, problems


def _write_all(ch: Challenge, task_name: str, task: Task, plan, output: Path) -> List[Path]:
    """Convert every planned file into a scratch folder, then move them into place (all or nothing)."""
    output.mkdir(parents=True, exist_ok=True)
    scratch = output / f".package-{os.getpid()}"
    scratch.mkdir()
    problems: List[str] = []
    try:
        for p, ref_geometry, out in plan:
            seg = _read_labels(p)
            bad = [v for v in np.unique(seg).tolist() if v not in task.inputs]
            if bad:
                problems.append(f"{p.name}: label value(s) {bad}; task {task_name!r} predictions have {task.inputs}")
                continue
            _write(task.to_challenge(seg), ref_geometry, scratch / out.name)
        if problems:
            raise PackagingError(ch.key, problems)
        written = []
        for _, _, out in plan:
            if out.exists():
                raise PackagingError(ch.key, [f"{out} appeared while packaging; refusing to overwrite it"])
            (scratch / out.name).rename(out)
            written.append(out)
        return written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def package(challenge: str, predictions, output, reference, variant: Optional[str] = None) -> List[Path]:
    """Package the predictions in ``predictions`` for ``challenge`` into ``output``; return the written files."""
    if challenge not in CHALLENGES:
        raise KeyError(f"unknown challenge {challenge!r}; available: {', '.join(CHALLENGES)}")
    ch = CHALLENGES[challenge]()
    predictions, output, reference = Path(predictions), Path(output), Path(reference)
    for what, folder in (("predictions", predictions), ("reference", reference)):
        if not folder.is_dir():
            raise PackagingError(challenge, [f"{what} folder {folder} does not exist"])
    task_name, task = _task(ch, predictions, variant)
    plan, problems = _plan(ch, predictions, output, reference)
    if problems:
        raise PackagingError(challenge, problems)
    return _write_all(ch, task_name, task, plan, output)
