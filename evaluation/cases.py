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

FOLD_RE = re.compile(r"^fold_(\d+|all)$")
#: a first spacing this many times larger than the others, on a single-slice array, is nnU-Net's 2D marker
#: (SimpleITKIO writes 999 x the largest in-plane spacing, NaturalImage2DIO 999)
DUMMY_SPACING_RATIO = 100.0


@dataclass
class Case:
    name: str
    fold: Optional[str]
    npz: Path
    reference: Path
    pkl: Optional[Path] = None


@dataclass
class Source:
    """Everything needed to evaluate one model's predictions."""
    cases: List[Case]
    dataset_json: dict
    plans: Optional[dict]
    spec: TaskSpec
    reader_writer_class: type
    name: str
    description: Dict[str, object] = field(default_factory=dict)
    protected: List[Path] = field(default_factory=list)


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


def load_probabilities(path: Path, hint: str = "") -> np.ndarray:
    """The ``probabilities`` (nnU-Net v2) or ``softmax`` (v1) array of an npz file."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: probabilities file is missing{'; ' + hint if hint else ''}")
    from nnunet_losses.evaluation.npz import NpzDamaged, read_npz_array
    try:
        return read_npz_array(path, ("probabilities", "softmax"))[1]
    except KeyError as e:
        keys = e.args[0]
    except (zipfile.BadZipFile, NpzDamaged, zlib.error, OSError, ValueError, EOFError) as e:
        raise EvaluationError(f"{path}: cannot read the npz file ({type(e).__name__}: {e}); it is damaged"
                              f"{'; ' + hint if hint else ''}") from None
    raise EvaluationError(f"{path}: no 'probabilities' (nnU-Net v2) or 'softmax' (v1) array, found {keys}; "
                          f"{hint or 'was it written by nnU-Net with --npz / --save_probabilities?'}")


class _Probabilities:
    """:class:`.npz.StreamedArray` whose errors are one-line :class:`EvaluationError` naming the file."""

    def __init__(self, path: Path, hint: str):
        from nnunet_losses.evaluation.npz import StreamedArray
        self.path, self.hint = path, hint
        with self._translated():
            self._s = StreamedArray(path, ("probabilities", "softmax"))
        self.array = self._s.array

    def _translated(self):
        import contextlib
        from nnunet_losses.evaluation.npz import NpzDamaged

        @contextlib.contextmanager
        def cm():
            try:
                yield
            except KeyError as e:
                raise EvaluationError(f"{self.path}: no 'probabilities' (nnU-Net v2) or 'softmax' (v1) array, found "
                                      f"{e.args[0]}; {self.hint or 'was it written by nnU-Net with --npz?'}") from None
            except (zipfile.BadZipFile, NpzDamaged, zlib.error, OSError, ValueError, EOFError) as e:
                raise EvaluationError(f"{self.path}: cannot read the npz file ({type(e).__name__}: {e}); it is "
                                      f"damaged{'; ' + self.hint if self.hint else ''}") from None
        return cm()

    def wait(self, c: int = -1, stop: int = -1) -> None:
        with self._translated():
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


def nnunet_folders() -> List[Path]:
    return [p for p in (_env_path("nnUNet_raw"), _env_path("nnUNet_preprocessed"), _env_path("nnUNet_results"))
            if p is not None]


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


def _parse_trainer_folder_name(name: str) -> Tuple[str, str, str]:
    parts = name.split("__")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return "TRAINER", "PLANS", "CONFIGURATION"


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
    fold_dirs = []
    for p in paths:
        if p.name == "validation" and FOLD_RE.match(p.parent.name):
            fold_dirs.append(p.parent)
        elif FOLD_RE.match(p.name):
            fold_dirs.append(p)
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
        p = paths[0]
        subs = sorted([d.name[5:] for d in p.iterdir() if d.is_dir() and FOLD_RE.match(d.name)],
                      key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
        if subs:
            if folds:
                wanted = [str(f) for f in folds]
                for f in wanted:
                    if f not in subs:
                        raise EvaluationError(f"{p / ('fold_' + f)}: no such fold folder (found "
                                              f"{['fold_' + s for s in subs]})")
                return p, wanted
            # fold 'all' validates on its own training cases: only when asked for explicitly
            numeric = [s for s in subs if s.isdigit()]
            if not numeric:
                raise EvaluationError(f"{p}: only fold_all found; its validation cases are training cases, "
                                      f"ask for it explicitly with -f all")
            return p, numeric
    return None


def find_cases(inputs: Sequence[str | Path], reference_folder: Optional[str | Path] = None,
               folds: Optional[Sequence[str]] = None, dataset_json: Optional[str | Path] = None,
               plans: Optional[str | Path] = None, chill: bool = False) -> Source:
    """Resolve the inputs to cases (prediction + reference files) and the dataset description; checks that
    every file is there before anything is computed."""
    if not inputs:
        raise EvaluationError("no input folder given")
    trainer = resolve_folds(inputs, folds)
    if trainer is not None:
        return _from_trainer(trainer[0], trainer[1], reference_folder, dataset_json, plans)
    if len(inputs) != 1:
        raise EvaluationError(f"several inputs that are not fold folders: {[str(i) for i in inputs]}; give one "
                              f"prediction folder (with -ref) or one trainer folder")
    return _from_prediction_folder(Path(inputs[0]).resolve(), reference_folder, dataset_json, plans, chill)


def _load_descriptions(folder: Path, dataset_json, plans):
    dj_path = Path(dataset_json) if dataset_json else folder / "dataset.json"
    pl_path = Path(plans) if plans else folder / "plans.json"
    dj = read_json(dj_path, "dataset.json (give it with --dataset-json)")
    pl = read_json(pl_path, "plans.json") if (plans or pl_path.is_file()) else None
    if "file_ending" not in dj or "labels" not in dj:
        raise EvaluationError(f"{dj_path}: not an nnU-Net dataset.json (needs 'labels' and 'file_ending')")
    return dj, dj_path, pl


def _from_trainer(folder: Path, fold_names: List[str], reference_folder, dataset_json, plans) -> Source:
    dj, dj_path, pl = _load_descriptions(folder, dataset_json, plans)
    spec = _spec(dj, dj_path)
    fe = dj["file_ending"]
    trainer_name, plans_name, configuration = _parse_trainer_folder_name(folder.name)
    dataset_name = (pl or {}).get("dataset_name") or folder.parent.name
    pre = _env_path("nnUNet_preprocessed")
    splits = None
    if reference_folder is None:
        if pre is None:
            raise EvaluationError("nnUNet_preprocessed is not set: set it (references are read from "
                                  "nnUNet_preprocessed/<dataset>/gt_segmentations) or give the reference folder "
                                  "with -ref")
        reference_folder = pre / dataset_name / "gt_segmentations"
    if pre is not None and (pre / dataset_name / "splits_final.json").is_file():
        splits = read_json(pre / dataset_name / "splits_final.json", "splits_final.json")
    ref = Path(reference_folder).resolve()
    if not ref.is_dir():
        raise EvaluationError(f"{ref}: reference folder not found (nnU-Net writes gt_segmentations during "
                              f"nnUNetv2_plan_and_preprocess; or give -ref)")

    def rerun(fold: str) -> str:
        return (f"rerun `nnUNetv2_train {dataset_name} {configuration} {fold} -tr {trainer_name} -p {plans_name} "
                f"--val --npz` (validation without --npz writes no probabilities)")

    cases: List[Case] = []
    seen: Dict[str, str] = {}
    for fold in fold_names:
        vdir = folder / f"fold_{fold}" / "validation"
        if not vdir.is_dir():
            raise EvaluationError(f"{vdir}: no validation folder; {rerun(fold)}")
        ids = _case_ids(vdir, fe)
        expected = None
        if splits is not None and fold.isdigit() and int(fold) < len(splits):
            expected = list(splits[int(fold)]["val"])
        if expected is None:
            expected = sorted(ids["npz"] | ids["seg"] | ids["pkl"])
        if not expected:
            raise EvaluationError(f"{vdir}: no validation cases; {rerun(fold)}")
        extra = sorted(ids["npz"] - set(expected))
        if extra:
            raise EvaluationError(f"{vdir / (extra[0] + '.npz')}: case is not in fold {fold}'s validation split "
                                  f"(splits_final.json); remove it or use the matching nnUNet_preprocessed")
        for c in sorted(expected):
            npz = vdir / f"{c}.npz"
            if not npz.is_file():
                raise EvaluationError(f"{npz}: probabilities missing; {rerun(fold)}")
            if c in seen:
                raise EvaluationError(f"{npz}: case {c} is also in fold_{seen[c]}; evaluate these folds separately")
            seen[c] = fold
            r = ref / f"{c}{fe}"
            if not r.is_file():
                raise EvaluationError(f"{npz}: no reference {r}; is nnUNet_preprocessed the one this model was "
                                      f"trained with?")
            pkl = vdir / f"{c}.pkl"
            cases.append(Case(c, fold, npz, r, pkl if pkl.is_file() else None))
    rw = _reader_writer(dj, pl, cases[0].reference if cases else None)
    return Source(cases, dj, pl, spec, rw, name=folder.name,
                  description={"mode": "trainer", "trainer_folder": str(folder), "folds": fold_names,
                               "reference_folder": str(ref), "dataset": dataset_name, "trainer": trainer_name,
                               "plans": plans_name, "configuration": configuration},
                  protected=[folder, ref])


def _from_prediction_folder(folder: Path, reference_folder, dataset_json, plans, chill: bool) -> Source:
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder")
    if reference_folder is None:
        raise EvaluationError(f"{folder}: not a trainer or fold folder; for a prediction folder give the reference "
                              f"folder with -ref")
    ref = Path(reference_folder).resolve()
    if not ref.is_dir():
        raise EvaluationError(f"{ref}: reference folder not found")
    dj, dj_path, pl = _load_descriptions(folder, dataset_json, plans)
    spec = _spec(dj, dj_path)
    fe = dj["file_ending"]
    ids = _case_ids(folder, fe)
    if not ids["npz"]:
        hint = (" (found segmentations only: predict with --save_probabilities)" if ids["seg"] else "")
        raise EvaluationError(f"{folder}: no .npz probabilities{hint}; rerun `nnUNetv2_predict ... "
                              f"--save_probabilities` or, for a training run, `nnUNetv2_train ... --val --npz`")
    missing_npz = sorted(ids["seg"] - ids["npz"])
    if missing_npz:
        raise EvaluationError(f"{folder / (missing_npz[0] + '.npz')}: probabilities missing next to "
                              f"{missing_npz[0]}{fe}; rerun `nnUNetv2_predict ... --save_probabilities`")
    refs = {f.name[: -len(fe)] for f in ref.iterdir() if f.name.endswith(fe)}
    no_ref = sorted(ids["npz"] - refs)
    if no_ref:
        raise EvaluationError(f"{folder / (no_ref[0] + '.npz')}: no reference {ref / (no_ref[0] + fe)}")
    no_pred = sorted(refs - ids["npz"])
    if no_pred and not chill:
        raise EvaluationError(f"{ref / (no_pred[0] + fe)}: reference without prediction {folder / (no_pred[0] + '.npz')} "
                              f"({len(no_pred)} such); predict them or pass --chill to evaluate the predicted cases only")
    cases = [Case(c, None, folder / f"{c}.npz", ref / f"{c}{fe}",
                  folder / f"{c}.pkl" if (folder / f"{c}.pkl").is_file() else None) for c in sorted(ids["npz"])]
    rw = _reader_writer(dj, pl, cases[0].reference)
    return Source(cases, dj, pl, spec, rw, name=folder.name,
                  description={"mode": "predictions", "prediction_folder": str(folder), "reference_folder": str(ref),
                               "references_without_prediction": len(no_pred)},
                  protected=[folder, ref])
