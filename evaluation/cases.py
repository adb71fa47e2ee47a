"""Finding and reading nnU-Net's own folders: probabilities, case properties and reference segmentations.

Accepted inputs (see docs/evaluation.md):

* a trainer folder ``nnUNet_results/DatasetXXX_Name/Trainer__Plans__Configuration`` -- every ``fold_N`` (or the
  folds asked for) is read from ``fold_N/validation``; references come from
  ``nnUNet_preprocessed/DatasetXXX_Name/gt_segmentations`` (where nnU-Net's own validation reads them) and
  the expected validation cases of each fold from ``splits_final.json`` next to it;
* one or more fold folders ``.../fold_N`` (or ``.../fold_N/validation``) of one trainer folder;
* a prediction folder of ``nnUNetv2_predict --save_probabilities`` plus a reference folder.

Probabilities are nnU-Net's ``<case>.npz`` (key ``probabilities``; nnU-Net v1's ``softmax`` float16 is
accepted), shape ``(C, *image array shape)`` in the reader's axis order; references are read with the
dataset's own reader/writer (``plans_manager.image_reader_writer_class().read_seg``), so both line up by
construction.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.spec import TaskSpec

#: the npz member nnU-Net v2 writes, then v1's
PROBABILITY_KEYS = ("probabilities", "softmax")
FOLD_RE = re.compile(r"^fold_(\d+|all)$")
#: a first spacing this many times larger than the others, on a single-slice array, is nnU-Net's 2D marker
#: (SimpleITKIO writes 999 x the largest in-plane spacing, NaturalImage2DIO 999)
DUMMY_SPACING_RATIO = 100.0


@dataclass
class CaseFiles:
    """The files of one predicted case (the ``Case`` of the dataset converters is another thing: a case to
    convert)."""
    name: str
    fold: Optional[str]
    npz: Path
    reference: Optional[Path]  # None when the cases were found without references (``threshold``)
    pkl: Optional[Path] = None
    #: the command that writes this case's probabilities again, for error messages (:func:`rerun_hint`)
    rerun: str = ""


@dataclass
class Source:
    """Everything needed to evaluate one model's predictions."""
    cases: List[CaseFiles]
    dataset_json: dict
    plans: Optional[dict]
    spec: TaskSpec
    reader_writer_class: type
    name: str
    description: Dict[str, object] = field(default_factory=dict)
    #: every folder the run reads (inputs, references, the folders of dataset.json/plans.json): no output there
    protected: List[Path] = field(default_factory=list)

    @property
    def dataset(self) -> Optional[str]:
        """nnU-Net's dataset name (``Dataset004_Hippocampus``) when known: the plans' or the trainer folder's."""
        return self.description.get("dataset")


# ---------------------------------------------------------------------------------------------------------------
# small readers
# ---------------------------------------------------------------------------------------------------------------
def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EvaluationError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{path}: {what} is not valid JSON ({e})") from None


@contextlib.contextmanager
def _npz_errors(path: Path, hint: str):
    """Reading errors of an npz file as one-line :class:`EvaluationError` naming the file."""
    from nnunet_losses.evaluation.npz import NpzDamaged
    try:
        yield
    except KeyError as e:
        raise EvaluationError(f"{path}: no 'probabilities' (nnU-Net v2) or 'softmax' (v1) array, found "
                              f"{e.args[0]}; {hint or 'was it written by nnU-Net with --npz / --save_probabilities?'}"
                              ) from None
    except (zipfile.BadZipFile, NpzDamaged, zlib.error, OSError, ValueError, EOFError) as e:
        raise EvaluationError(f"{path}: cannot read the npz file ({type(e).__name__}: {e}); it is damaged"
                              f"{'; ' + hint if hint else ''}") from None


def load_probabilities(path: Path, hint: str = "") -> np.ndarray:
    """The ``probabilities`` (nnU-Net v2) or ``softmax`` (v1) array of an npz file."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: probabilities file is missing{'; ' + hint if hint else ''}")
    from nnunet_losses.evaluation.npz import read_npz_array
    with _npz_errors(path, hint):
        return read_npz_array(path, PROBABILITY_KEYS)[1]


class _Probabilities:
    """:class:`.npz.StreamedArray` whose errors are one-line :class:`EvaluationError` naming the file."""

    def __init__(self, path: Path, hint: str):
        from nnunet_losses.evaluation.npz import StreamedArray
        self.path, self.hint = path, hint
        with _npz_errors(path, hint):
            self._s = StreamedArray(path, PROBABILITY_KEYS)
        self.array = self._s.array

    def wait(self, c: int = -1, stop: int = -1) -> None:
        with _npz_errors(self.path, self.hint):
            self._s.wait(c, stop)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._s.__exit__(*exc)


def open_probabilities(path: Path, hint: str = "") -> _Probabilities:
    """Start reading a case's probabilities in a background thread: ``with open_probabilities(f) as p:`` then
    ``p.array`` (allocated, filling) and ``p.wait(channel, stop)`` before reading a part of it."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: probabilities file is missing{'; ' + hint if hint else ''}")
    return _Probabilities(path, hint)


def load_properties(path: Optional[Path]) -> Optional[dict]:
    if path is None or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as f:
            props = pickle.load(f)
    except Exception as e:  # noqa: BLE001 -- any unpickling problem is a damaged file
        raise EvaluationError(f"{path}: cannot read the case properties ({type(e).__name__}: {e})") from None
    if not isinstance(props, dict):
        raise EvaluationError(f"{path}: case properties must be a dict, got {type(props).__name__}")
    return props


def load_reference(path: Path, reader_writer) -> Tuple[np.ndarray, dict]:
    """``(integer label map of the image shape, reader properties)`` via the dataset's reader/writer."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: reference segmentation is missing")
    try:
        seg, props = reader_writer.read_seg(str(path))
    except Exception as e:  # noqa: BLE001 -- reader errors vary by format
        raise EvaluationError(f"{path}: cannot read the reference ({type(e).__name__}: {e})") from None
    seg = np.asarray(seg)
    if seg.ndim >= 2 and seg.shape[0] == 1:
        seg = seg[0]
    if np.issubdtype(seg.dtype, np.integer):
        return seg, props
    lo, hi = float(seg.min()) if seg.size else 0.0, float(seg.max()) if seg.size else 0.0
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise EvaluationError(f"{path}: reference contains NaN/inf; it must be an integer label map")
    top = hi
    dtype = np.uint8 if 0 <= top < 256 else (np.uint16 if 0 <= top < 65536 else np.int64)
    ints = seg.astype(dtype)
    flat, iflat = seg.reshape(-1), ints.reshape(-1)
    for s in range(0, flat.size, 1 << 20):  # chunked: no full-size temporaries
        if not np.array_equal(iflat[s:s + (1 << 20)], flat[s:s + (1 << 20)]):
            raise EvaluationError(f"{path}: reference holds non-integer or negative values; it must be a label map")
    return ints, props


def voxel_volume(spacing: Sequence[float], shape: Sequence[int]) -> Tuple[float, str, bool]:
    """``(volume of one voxel, unit, is_2d)``: ml (mm^3 / 1000) for 3D images; for nnU-Net's 2D images
    (single slice whose first spacing is the dummy 999-style value) the pixel area in cm^2 (mm^2 / 100)."""
    sp = [abs(float(s)) for s in spacing]
    if len(sp) == 3 and len(shape) == 3 and shape[0] == 1 and sp[0] >= DUMMY_SPACING_RATIO * max(sp[1:]):
        return float(np.prod(sp[1:])) / 100.0, "cm^2", True
    if len(sp) == 2:
        return float(np.prod(sp)) / 100.0, "cm^2", True
    return float(np.prod(sp)) / 1000.0, "ml", False


# ---------------------------------------------------------------------------------------------------------------
# locating the cases
# ---------------------------------------------------------------------------------------------------------------
def _env_path(name: str) -> Optional[Path]:
    v = os.environ.get(name)
    return Path(v).resolve() if v else None


def rerun_hint(trainer: Optional[dict] = None, fold: Optional[str] = None) -> str:
    """What writes a case's probabilities (again): ``nnUNetv2_train ... --val --npz`` for a trainer folder
    (``trainer``: the ``dataset``, ``configuration``, ``trainer``, ``plans`` of :func:`trainer_identity`),
    else ``nnUNetv2_predict ... --save_probabilities``."""
    if trainer is None:
        return "rerun `nnUNetv2_predict ... --save_probabilities`"
    return (f"rerun `nnUNetv2_train {trainer['dataset']} {trainer['configuration']} {fold} -tr {trainer['trainer']} "
            f"-p {trainer['plans']} --val --npz` (validation without --npz writes no probabilities)")


def _case_ids(folder: Path, file_ending: str) -> Dict[str, set]:
    ids: Dict[str, set] = {"npz": set(), "seg": set(), "pkl": set()}
    for f in folder.iterdir():
        n = f.name
        if n.endswith(".npz"):
            ids["npz"].add(n[:-4])
        elif n.endswith(".pkl"):
            ids["pkl"].add(n[:-4])
        elif n.endswith(file_ending) and n != "summary.json":
            ids["seg"].add(n[: -len(file_ending)])
    return ids


def trainer_identity(folder: Path, plans: Optional[dict]) -> Dict[str, str]:
    """``dataset``, ``trainer``, ``plans``, ``configuration`` of a trainer folder ``Trainer__Plans__Config``."""
    parts = folder.name.split("__")
    trainer, plans_name, configuration = parts if len(parts) == 3 else ("TRAINER", "PLANS", "CONFIGURATION")
    return {"dataset": (plans or {}).get("dataset_name") or folder.parent.name, "trainer": trainer,
            "plans": plans_name, "configuration": configuration}


def _reader_writer(dataset_json: dict, plans: Optional[dict], example_file: Optional[Path]):
    if plans is not None and plans.get("image_reader_writer"):
        from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
        return recursive_find_reader_writer_by_name(plans["image_reader_writer"])
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    if example_file is None:
        raise EvaluationError("cannot determine the image reader/writer: no plans.json and no reference file")
    return determine_reader_writer_from_dataset_json(dataset_json, str(example_file), verbose=False)


def _spec(dataset_json: dict, path: Path) -> TaskSpec:
    try:
        return TaskSpec.from_dataset_json(dataset_json)
    except (AssertionError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise EvaluationError(f"{path}: unusable labels/regions ({type(e).__name__}: {e})") from None


def resolve_folds(inputs: Sequence[str | Path], folds: Optional[Sequence[str]] = None) \
        -> Optional[Tuple[Path, List[str]]]:
    """``(trainer folder, fold names)`` when the inputs are a trainer folder or fold folders, else None."""
    paths = [Path(p).resolve() for p in inputs]
    for p in paths:
        if not p.exists():
            raise EvaluationError(f"{p}: no such folder")
    fold_dirs = [p.parent if p.name == "validation" and FOLD_RE.match(p.parent.name) else p for p in paths
                 if FOLD_RE.match(p.name) or (p.name == "validation" and FOLD_RE.match(p.parent.name))]
    if fold_dirs:
        if len(fold_dirs) != len(paths):
            raise EvaluationError(f"mixing fold folders and other folders: {[str(p) for p in paths]}; give one "
                                  f"trainer folder, or fold folders of one trainer")
        parents = {d.parent for d in fold_dirs}
        if len(parents) != 1:
            raise EvaluationError(f"fold folders of different trainer folders: {sorted(map(str, parents))}; "
                                  f"evaluate each trainer separately and use `nnunet-losses compare`")
        names = [d.name[5:] for d in fold_dirs]
        if folds:
            names = [n for n in names if n in {str(f) for f in folds}]
        return parents.pop(), names
    if len(paths) == 1:
        subs = sorted([d.name[5:] for d in paths[0].iterdir() if d.is_dir() and FOLD_RE.match(d.name)],
                      key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
        if subs:
            return paths[0], _chosen_folds(paths[0], subs, folds)
    return None


def _chosen_folds(folder: Path, found: List[str], folds: Optional[Sequence[str]]) -> List[str]:
    if folds:
        wanted = [str(f) for f in folds]
        for f in wanted:
            if f not in found:
                raise EvaluationError(f"{folder / ('fold_' + f)}: no such fold folder (found "
                                      f"{['fold_' + s for s in found]})")
        return wanted
    # fold 'all' validates on its own training cases: only when asked for explicitly
    numeric = [s for s in found if s.isdigit()]
    if not numeric:
        raise EvaluationError(f"{folder}: only fold_all found; its validation cases are training cases, "
                              f"ask for it explicitly with -f all")
    return numeric


def find_cases(inputs: Sequence[str | Path], reference_folder: Optional[str | Path] = None,
               folds: Optional[Sequence[str]] = None, dataset_json: Optional[str | Path] = None,
               plans: Optional[str | Path] = None, chill: bool = False, references: bool = True) -> Source:
    """Resolve the inputs to cases and the dataset description; checks that every file is there before anything
    is computed. ``references=True`` (``evaluate``): every case needs its reference; ``references=False``
    (``threshold``): no references, but every case needs the ``.pkl`` properties its label map is written
    with."""
    if not inputs:
        raise EvaluationError("no input folder given")
    trainer = resolve_folds(inputs, folds)
    if trainer is not None:
        return _from_trainer(trainer[0], trainer[1], reference_folder, dataset_json, plans, references)
    if len(inputs) != 1:
        raise EvaluationError(f"several inputs that are not fold folders: {[str(i) for i in inputs]}; give one "
                              f"prediction folder (with -ref) or one trainer folder")
    return _from_prediction_folder(Path(inputs[0]).resolve(), reference_folder, dataset_json, plans, chill,
                                   references)


def _load_descriptions(folder: Path, dataset_json, plans):
    dj_path = Path(dataset_json) if dataset_json else folder / "dataset.json"
    pl_path = Path(plans) if plans else folder / "plans.json"
    dj = read_json(dj_path, "dataset.json (give it with -djfile)")
    pl = read_json(pl_path, "plans.json") if (plans or pl_path.is_file()) else None
    if "file_ending" not in dj or "labels" not in dj:
        raise EvaluationError(f"{dj_path}: not an nnU-Net dataset.json (needs 'labels' and 'file_ending')")
    return dj, dj_path, pl


def _description_folders(dataset_json, plans) -> List[Path]:
    """The folders of a dataset.json / plans.json given explicitly (a raw or preprocessed dataset, typically)."""
    return [Path(f).resolve().parent for f in (dataset_json, plans) if f]


def _trainer_references(dataset: str, reference_folder) -> Path:
    """The reference folder of a trainer folder: ``-ref``, else nnU-Net's ``gt_segmentations``."""
    if reference_folder is None:
        pre = _env_path("nnUNet_preprocessed")
        if pre is None:
            raise EvaluationError("nnUNet_preprocessed is not set: set it (references are read from "
                                  "nnUNet_preprocessed/<dataset>/gt_segmentations) or give the reference folder "
                                  "with -ref")
        reference_folder = pre / dataset / "gt_segmentations"
    ref = Path(reference_folder).resolve()
    if not ref.is_dir():
        raise EvaluationError(f"{ref}: reference folder not found (nnU-Net writes gt_segmentations during "
                              f"nnUNetv2_plan_and_preprocess; or give -ref)")
    return ref


def _splits(dataset: str) -> Optional[list]:
    pre = _env_path("nnUNet_preprocessed")
    if pre is not None and (pre / dataset / "splits_final.json").is_file():
        return read_json(pre / dataset / "splits_final.json", "splits_final.json")
    return None


def _properties(folder: Path, case: str, required: bool, hint: str) -> Optional[Path]:
    pkl = folder / f"{case}.pkl"
    if pkl.is_file():
        return pkl
    if required:
        raise EvaluationError(f"{pkl}: case properties missing (nnU-Net writes them next to the npz); {hint}")
    return None


def _from_trainer(folder: Path, fold_names: List[str], reference_folder, dataset_json, plans,
                  references: bool) -> Source:
    dj, dj_path, pl = _load_descriptions(folder, dataset_json, plans)
    spec = _spec(dj, dj_path)
    identity = trainer_identity(folder, pl)
    if not fold_names:
        raise EvaluationError(f"{folder}: none of the folds asked for is among the inputs")
    ref = _trainer_references(identity["dataset"], reference_folder) if references else None
    splits = _splits(identity["dataset"])
    cases: List[CaseFiles] = []
    seen: Dict[str, str] = {}
    for fold in fold_names:
        expected = None
        if splits is not None and fold.isdigit() and int(fold) < len(splits):
            expected = list(splits[int(fold)]["val"])
        cases += _fold_cases(folder / f"fold_{fold}" / "validation", fold, dj["file_ending"], expected, ref, seen,
                             rerun_hint(identity, fold))
    example = cases[0].reference if references else next(cases[0].npz.parent.glob("*" + dj["file_ending"]), None)
    description = {"mode": "trainer", "trainer_folder": str(folder), "folds": fold_names, **identity}
    if ref is not None:
        description["reference_folder"] = str(ref)
    return Source(cases, dj, pl, spec, _reader_writer(dj, pl, example), name=folder.name, description=description,
                  protected=[folder] + ([ref] if ref is not None else []) +
                  _description_folders(dataset_json, plans))


def _fold_cases(vdir: Path, fold: str, file_ending: str, expected: Optional[List[str]], ref: Optional[Path],
                seen: Dict[str, str], hint: str) -> List[CaseFiles]:
    """The cases of one fold's validation folder: those of the split when known, else those found."""
    if not vdir.is_dir():
        raise EvaluationError(f"{vdir}: no validation folder; {hint}")
    ids = _case_ids(vdir, file_ending)
    if expected is None:
        expected = sorted(ids["npz"] | ids["seg"] | ids["pkl"])
    if not expected:
        raise EvaluationError(f"{vdir}: no validation cases; {hint}")
    extra = sorted(ids["npz"] - set(expected))
    if extra:
        raise EvaluationError(f"{vdir / (extra[0] + '.npz')}: case is not in fold {fold}'s validation split "
                              f"(splits_final.json); remove it or use the matching nnUNet_preprocessed")
    cases = []
    for c in sorted(expected):
        npz = vdir / f"{c}.npz"
        if not npz.is_file():
            raise EvaluationError(f"{npz}: probabilities missing; {hint}")
        if c in seen:
            raise EvaluationError(f"{npz}: case {c} is also in fold_{seen[c]}; evaluate these folds separately")
        seen[c] = fold
        r = None
        if ref is not None:
            r = ref / f"{c}{file_ending}"
            if not r.is_file():
                raise EvaluationError(f"{npz}: no reference {r}; is nnUNet_preprocessed the one this model was "
                                      f"trained with?")
        cases.append(CaseFiles(c, fold, npz, r, _properties(vdir, c, ref is None, hint), hint))
    return cases


def _from_prediction_folder(folder: Path, reference_folder, dataset_json, plans, chill: bool,
                            references: bool) -> Source:
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder")
    if references and reference_folder is None:
        raise EvaluationError(f"{folder}: not a trainer or fold folder; for a prediction folder give the reference "
                              f"folder with -ref")
    dj, dj_path, pl = _load_descriptions(folder, dataset_json, plans)
    spec = _spec(dj, dj_path)
    fe = dj["file_ending"]
    ids = _case_ids(folder, fe)
    hint = rerun_hint()
    if not ids["npz"]:
        found = " (found segmentations only: predict with --save_probabilities)" if ids["seg"] else ""
        raise EvaluationError(f"{folder}: no .npz probabilities{found}; {hint} or, for a training run, "
                              f"`nnUNetv2_train ... --val --npz`")
    missing_npz = sorted(ids["seg"] - ids["npz"])
    if missing_npz:
        raise EvaluationError(f"{folder / (missing_npz[0] + '.npz')}: probabilities missing next to "
                              f"{missing_npz[0]}{fe}; {hint}")
    names = sorted(ids["npz"])
    ref, description = None, {"mode": "predictions", "prediction_folder": str(folder),
                              "dataset": (pl or {}).get("dataset_name"), "plans": (pl or {}).get("plans_name")}
    if references:
        ref = Path(reference_folder).resolve()
        description.update(reference_folder=str(ref),
                           references_without_prediction=_check_references(folder, ref, names, fe, chill))
    cases = [CaseFiles(c, None, folder / f"{c}.npz", ref / f"{c}{fe}" if ref is not None else None,
                       _properties(folder, c, not references, hint), hint) for c in names]
    example = cases[0].reference if references else next(folder.glob("*" + fe), None)
    return Source(cases, dj, pl, spec, _reader_writer(dj, pl, example), name=folder.name, description=description,
                  protected=[folder] + ([ref] if ref is not None else []) +
                  _description_folders(dataset_json, plans))


def _check_references(folder: Path, ref: Path, names: List[str], file_ending: str, chill: bool) -> int:
    """Every prediction needs a reference; references without prediction need ``chill``; returns their count."""
    if not ref.is_dir():
        raise EvaluationError(f"{ref}: reference folder not found")
    refs = {f.name[: -len(file_ending)] for f in ref.iterdir() if f.name.endswith(file_ending)}
    no_ref = sorted(set(names) - refs)
    if no_ref:
        raise EvaluationError(f"{folder / (no_ref[0] + '.npz')}: no reference {ref / (no_ref[0] + file_ending)}")
    no_pred = sorted(refs - set(names))
    if no_pred and not chill:
        raise EvaluationError(f"{ref / (no_pred[0] + file_ending)}: reference without prediction "
                              f"{folder / (no_pred[0] + '.npz')} ({len(no_pred)} such); predict them or pass --chill "
                              f"to evaluate the predicted cases only")
    return len(no_pred)
