"""Shared machinery of the dataset converters.

A converter (one module per dataset) knows its dataset's official download layout and how to turn one case into
nnU-Net's raw format. Everything else lives here and is the same for every dataset:

* **layout validation** -- :class:`LayoutError` lists *every* missing file or folder at once;
* **the download is never modified** -- sources are only read (copied or decoded), the output may not lie inside the
  source folder, and the dataset is built in a hidden scratch folder next to its final place and renamed at the end,
  so a failed conversion leaves nothing behind that could occupy its dataset ID;
* **dataset IDs** -- a free ID is chosen by scanning ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
  for ``DatasetXXX_*`` folders; a user-given ID that is already used anywhere is refused (never clobbered);
* **dataset.json** -- always written by nnU-Net's own ``generate_dataset_json``;
* **integrity** -- nnU-Net's own ``verify_dataset_integrity`` runs on the result before it is put in place.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

DATASET_DIR_RE = re.compile(r"^Dataset(\d{3})_(.+)$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_LISTED = 40
DOC = "docs/datasets.md"


class LayoutError(FileNotFoundError):
    """The source folder is not laid out as the official download; ``missing`` lists every missing item."""

    def __init__(self, dataset: str, source, missing: Sequence[str], hint: str = ""):
        self.dataset, self.source, self.missing = dataset, Path(source), list(missing)
        lines = [f"{dataset}: {source} is not laid out as the official download; "
                 f"{len(self.missing)} item(s) missing:"]
        lines += [f"  - {m}" for m in self.missing[:MAX_LISTED]]
        if len(self.missing) > MAX_LISTED:
            lines.append(f"  ... and {len(self.missing) - MAX_LISTED} more")
        if hint:
            lines.append(hint)
        lines.append(f"The expected layout of every dataset is described in {DOC}.")
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # OSError would otherwise print its args tuple
        return self.args[0]


class DatasetIDError(RuntimeError):
    """A requested nnU-Net dataset ID is in use (or invalid), or no ID is free."""


class SourceDataError(ValueError):
    """A source file has content the official dataset does not have (unexpected label values, mismatched sizes)."""


@dataclass(frozen=True)
class Variant:
    """One nnU-Net task made from a dataset: its labels (or regions) and where it goes by default."""
    name: str
    suffix: str  # appended to the converter's dataset name, e.g. "WT" -> Dataset521_BraTS2018WT
    labels: Dict[str, object]
    preferred_id: int
    description: str
    regions_class_order: Optional[Tuple[int, ...]] = None
    binary: bool = False


@dataclass
class SourceCase:
    """One case of the download: where its images (one file per channel, or one RGB file) and label live (not an
    evaluated case, which is ``nnunet_losses.evaluation.cases.CaseFiles``)."""
    case_id: str
    images: Tuple[Path, ...]
    label: object = None  # a Path, a tuple of Paths (DSB's per-nucleus masks) or None for unlabelled cases
    extra: dict = field(default_factory=dict)


class Converter:
    """Base class of the converters: subclasses set the class attributes and implement the three methods."""

    key: str = ""                 # CLI / API name
    title: str = ""               # human name
    dataset_name: str = ""        # nnU-Net dataset name (without ID), variant suffix appended
    url: str = ""                 # official source
    release: str = ""             # which release of the dataset the layout is that of
    citation: str = ""            # stored in dataset.json (under "nnunet_losses")
    licence: str = ""
    file_ending: str = ".nii.gz"
    reader_writer: Optional[str] = None  # overwrite_image_reader_writer, None: nnU-Net picks by file ending
    variants: Dict[str, Variant] = {}
    default_variant: str = ""
    default_binary: str = ""
    options: Dict[str, object] = {}  # converter-specific options and their defaults

    def __init__(self, binary=None, **options):
        if binary in (None, False):
            variant = self.default_variant
        elif binary is True or binary == "":
            variant = self.default_binary
        else:
            variant = str(binary).lower()
        binaries = sorted(k for k, v in self.variants.items() if v.binary)
        if variant not in self.variants or (binary not in (None, False) and not self.variants[variant].binary):
            raise ValueError(f"{self.key}: unknown binary task {binary!r}; choose one of {binaries}")
        self.variant = self.variants[variant]
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"{self.key}: unknown option(s) {', '.join(unknown)} (options of {self.key}: {known})")
        self.opts = {**self.options, **options}
        self.check_options()

    # ---- to implement -------------------------------------------------------------------------------------------
    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        """(training cases, test cases) of the download at ``source``; raise :class:`LayoutError` listing all gaps."""
        raise NotImplementedError

    def channel_names(self) -> Dict[int, str]:
        raise NotImplementedError

    def convert_case(self, case: SourceCase, images_dir: Path, labels_dir: Optional[Path]) -> None:
        """Write ``case`` in nnU-Net's format (its label too when ``labels_dir`` is given and the case has one)."""
        raise NotImplementedError

    # ---- optional hooks -----------------------------------------------------------------------------------------
    def check_options(self) -> None:
        pass

    def name(self) -> str:
        return self.dataset_name + self.variant.suffix

    def description(self) -> str:
        return f"{self.title}: {self.variant.description}"

    def metadata(self) -> dict:
        """Stored in dataset.json under "nnunet_losses" (``nnunet-losses package`` reads it back)."""
        return {"dataset": self.key, "variant": self.variant.name, "citation": self.citation}

    # ---- helpers for subclasses ---------------------------------------------------------------------------------
    def layout_error(self, source, missing, hint: str = "") -> LayoutError:
        return LayoutError(self.key, source, missing, hint)


# ------------------------------------------------------------------------------------------------------------------
# nnU-Net folders and dataset IDs
# ------------------------------------------------------------------------------------------------------------------
def nnunet_folders(raw_dir=None) -> Tuple[Path, List[Path]]:
    """(nnUNet_raw, every nnU-Net folder whose dataset IDs count as used)."""
    raw = raw_dir if raw_dir is not None else os.environ.get("nnUNet_raw")
    if not raw:
        raise RuntimeError("nnUNet_raw is not set: export nnUNet_raw (and nnUNet_preprocessed, nnUNet_results), "
                           "see nnU-Net's documentation/set_environment_variables.md, or pass raw_dir")
    folders = [Path(raw)] + [Path(os.environ[v]) for v in ("nnUNet_preprocessed", "nnUNet_results")
                             if os.environ.get(v)]
    return Path(raw), folders


def used_dataset_ids(folders: Iterable[Path]) -> Dict[int, List[Path]]:
    """Dataset ID -> the ``DatasetXXX_*`` folders using it, in all the given nnU-Net folders."""
    used: Dict[int, List[Path]] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for child in sorted(Path(folder).iterdir()):
            m = DATASET_DIR_RE.match(child.name)
            if m and child.is_dir():
                used.setdefault(int(m.group(1)), []).append(child)
    return used


def assign_dataset_id(preferred: int, requested: Optional[int], folders: Iterable[Path]) -> int:
    """``requested`` if it is free (else :class:`DatasetIDError`), otherwise the first free ID from ``preferred``."""
    used = used_dataset_ids(folders)
    if requested is not None:
        requested = int(requested)
        if not 1 <= requested <= 999:
            raise DatasetIDError(f"dataset ID must be in 1..999, got {requested}")
        if requested in used:
            where = ", ".join(str(p) for p in used[requested])
            raise DatasetIDError(f"dataset ID {requested} is already used by {where}; refusing to overwrite it. "
                                 f"Choose another -d ID, or leave it out to get a free one.")
        return requested
    for candidate in list(range(preferred, 1000)) + list(range(1, preferred)):
        if candidate not in used:
            return candidate
    raise DatasetIDError("every dataset ID 1..999 is in use")


# ------------------------------------------------------------------------------------------------------------------
# nnU-Net's integrity check
# ------------------------------------------------------------------------------------------------------------------
class _SerialPool:
    """Stands in for a multiprocessing pool: runs ``starmap`` in this process."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, iterable):
        return [fn(*args) for args in iterable]

    def close(self):
        pass

    def join(self):
        pass


class _SerialMultiprocessing:
    @staticmethod
    def get_context(method=None):
        return _SerialMultiprocessing

    Pool = _SerialPool


def verify_raw_dataset(folder: Path, num_processes: int = 1) -> None:
    """nnU-Net's ``verify_dataset_integrity`` (what ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` runs).

    With ``num_processes <= 1`` nnU-Net's own check runs in this process (its worker pools replaced by a serial
    stand-in), which saves starting interpreters that each import torch; the checks themselves are unchanged.
    """
    from unittest import mock

    import nnunetv2.utilities.utils as nnunet_utils
    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    if num_processes > 1:
        vdi.verify_dataset_integrity(str(folder), num_processes)
        return
    with mock.patch.object(vdi, "multiprocessing", _SerialMultiprocessing), \
            mock.patch.object(nnunet_utils, "Pool", _SerialPool):
        vdi.verify_dataset_integrity(str(folder), 1)


# ------------------------------------------------------------------------------------------------------------------
# the conversion itself
# ------------------------------------------------------------------------------------------------------------------
def _convert_one(converter: Converter, case: SourceCase, images_dir: str, labels_dir: Optional[str]) -> None:
    converter.convert_case(case, Path(images_dir), Path(labels_dir) if labels_dir else None)


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def _select_cases(converter: Converter, source: Path, exclude: Sequence[str]):
    """(training cases, test cases) of the download, without the ``exclude``d case IDs (which must exist)."""
    if not source.is_dir():
        raise converter.layout_error(source, [f"{source} (the folder itself does not exist)"])
    train, test = converter.find_cases(source)
    exclude = [str(e) for e in exclude]
    known = {c.case_id for c in train + test}
    unknown = [e for e in exclude if e not in known]
    if unknown:
        raise ValueError(f"{converter.key}: cannot exclude unknown case(s) {unknown}; "
                         f"case IDs look like {sorted(known)[:3]}")
    train = [c for c in train if c.case_id not in exclude]
    test = [c for c in test if c.case_id not in exclude]
    if not train:
        raise converter.layout_error(source, ["training cases (none left)"])
    return train, test


def previous_conversions(raw: Path, converter: Converter, n_train: int, n_test: int) -> List[Path]:
    """The datasets in ``raw`` this converter already wrote from the same cases: same dataset, task, channels and
    case counts in their dataset.json (other options or ``exclude`` lists make other datasets)."""
    import json
    channels = {str(k): v for k, v in converter.channel_names().items()}
    found = []
    for folder in sorted(raw.glob("Dataset[0-9][0-9][0-9]_*")) if raw.is_dir() else []:
        try:
            meta = json.loads((folder / "dataset.json").read_text())
            ours = meta.get("nnunet_losses") or {}
        except (OSError, ValueError, AttributeError):
            continue  # not ours, or unreadable: it cannot be a previous conversion of this task
        if (ours.get("dataset"), ours.get("variant")) == (converter.key, converter.variant.name) and \
                meta.get("channel_names") == channels and meta.get("numTraining") == n_train and \
                meta.get("numTest", 0) == n_test:
            found.append(folder)
    return found


def _target_folder(converter: Converter, source: Path, raw_dir, name: Optional[str], dataset_id: Optional[int],
                   n_train: int, n_test: int) -> Path:
    """``nnUNet_raw/DatasetXXX_Name``: a free ID, never inside the download, never a silent second copy."""
    raw, folders = nnunet_folders(raw_dir)
    raw = raw.expanduser().resolve()
    if _is_within(raw, source):
        raise ValueError(f"nnUNet_raw ({raw}) lies inside the source folder {source}; "
                         f"the download must not be modified -- put nnUNet_raw elsewhere")
    name = name or converter.name()
    if not NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r} may only contain letters, digits, '_', '-' and '.'")
    if dataset_id is None:
        done = previous_conversions(raw, converter, n_train, n_test)
        if done:
            raise DatasetIDError(f"{converter.key} ({converter.variant.name}) was already converted to "
                                 f"{', '.join(map(str, done))}; use that dataset, or give -d ID to convert it "
                                 f"again under another ID")
    dataset_id = assign_dataset_id(converter.variant.preferred_id, dataset_id, folders)
    return raw / f"Dataset{dataset_id:03d}_{name}"


def _write_cases(converter: Converter, folder: Path, train, test, num_processes: int) -> None:
    """imagesTr/labelsTr (and imagesTs, labelsTs where the test cases have labels) in ``folder``."""
    images_tr, labels_tr = folder / "imagesTr", folder / "labelsTr"
    images_tr.mkdir(parents=True)
    labels_tr.mkdir()
    jobs = [(converter, c, str(images_tr), str(labels_tr)) for c in train]
    if test:
        images_ts = folder / "imagesTs"
        images_ts.mkdir()
        labels_ts = folder / "labelsTs"
        if any(c.label is not None for c in test):
            labels_ts.mkdir()
        jobs += [(converter, c, str(images_ts), str(labels_ts) if c.label is not None else None) for c in test]
    if num_processes > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            pool.starmap(_convert_one, jobs)
    else:
        for job in jobs:
            _convert_one(*job)


def _write_dataset_json(converter: Converter, folder: Path, dataset_name: str, n_train: int, n_test: int) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunet_losses import __version__
    v = converter.variant
    generate_dataset_json(str(folder), channel_names=dict(converter.channel_names()),
                          labels={k: (tuple(x) if isinstance(x, (tuple, list)) else x) for k, x in v.labels.items()},
                          num_training_cases=n_train, file_ending=converter.file_ending,
                          regions_class_order=v.regions_class_order, dataset_name=dataset_name,
                          reference=converter.url, release=converter.release, description=converter.description(),
                          overwrite_image_reader_writer=converter.reader_writer, license=converter.licence,
                          converted_by=f"nnunet-losses {__version__} ({converter.__module__})",
                          numTest=n_test, nnunet_losses=converter.metadata())


def run_conversion(converter: Converter, source, dataset_id: Optional[int] = None, raw_dir=None,
                   name: Optional[str] = None, exclude: Sequence[str] = (), num_processes: int = 1,
                   verify: bool = True) -> Path:
    """Convert the download at ``source`` into ``nnUNet_raw/DatasetXXX_Name`` and return that folder.

    Without ``dataset_id``, a task this converter has already converted into nnUNet_raw is refused
    (:class:`DatasetIDError`) instead of being written again under the next free ID.
    """
    source = Path(source).expanduser().resolve()
    train, test = _select_cases(converter, source, exclude)
    final = _target_folder(converter, source, raw_dir, name, dataset_id, len(train), len(test))
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{final.name}.incomplete-{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        _write_cases(converter, scratch, train, test, num_processes)
        _write_dataset_json(converter, scratch, final.name, len(train), len(test))
        if verify:
            verify_raw_dataset(scratch, num_processes)
        if final.exists():  # appeared while we were converting
            raise DatasetIDError(f"{final} appeared during the conversion; refusing to overwrite it")
        scratch.rename(final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------------------------
# file helpers shared by the converters
# ------------------------------------------------------------------------------------------------------------------
def first_existing(*candidates: Path) -> Optional[Path]:
    for c in candidates:
        if c.exists():
            return c
    return None


def visible_dirs(folder: Path) -> List[Path]:
    """Sub-folders, without macOS archive debris (``__MACOSX``, ``._*``) and hidden folders."""
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "__MACOSX")))


def visible_files(folder: Path, suffixes: Sequence[str]) -> List[Path]:
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes))


def nifti_stem(path: Path) -> str:
    n = path.name
    return n[:-7] if n.endswith(".nii.gz") else n[:-4] if n.endswith(".nii") else path.stem


def copy_nifti(src: Path, dst: Path) -> None:
    """``dst`` (.nii.gz) from ``src``: a byte copy when ``src`` is .nii.gz, else re-encoded by SimpleITK."""
    if src.name.endswith(".nii.gz"):
        shutil.copyfile(src, dst)
    else:
        import SimpleITK as sitk
        sitk.WriteImage(read_3d(src), str(dst), useCompression=True)


def read_3d(path: Path):
    """A SimpleITK image of ``path``, with trailing singleton dimensions (x, y, z, 1) dropped."""
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if img.GetDimension() != 3:
        raise SourceDataError(f"{path}: expected a 3D image, found {img.GetDimension()}D of size {img.GetSize()}")
    return img


def write_label_like(mask: np.ndarray, like, dst: Path) -> None:
    """Write a label array (z, y, x) as uint8 with the geometry of the SimpleITK image ``like``."""
    import SimpleITK as sitk
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    out.CopyInformation(like)
    sitk.WriteImage(out, str(dst), useCompression=True)


def check_label_values(arr: np.ndarray, allowed: Sequence[int], path: Path) -> None:
    found = np.unique(arr)
    bad = [v for v in found.tolist() if v not in set(allowed)]
    if bad:
        raise SourceDataError(f"{path}: unexpected label value(s) {bad}; the official labels are {list(allowed)}")


# ---- 2D natural images (nnU-Net's NaturalImage2DIO convention: CASE_0000.png holding RGB or grey, label CASE.png)
def _open(path: Path):
    from PIL import Image
    img = Image.open(path)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise SourceDataError(f"{path}: {img.mode} image; the official dataset has 8-bit images")
    return img


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; an alpha channel (DSB's RGBA PNGs) is dropped, grey is repeated."""
    return np.asarray(_open(path).convert("RGB"))


def read_gray(path: Path) -> np.ndarray:
    """(H, W) uint8 (RGB converted by ITU-R 601 luma, which leaves grey stored as RGB unchanged)."""
    return np.asarray(_open(path).convert("L"))


def read_mask(path: Path) -> np.ndarray:
    """A binary (H, W) bool mask from an 8-bit mask file (0/255 or 0/1; RGB or palette masks via their grey value).

    Pixels >= 128 are foreground (values 0/1: value 1), so the few intermediate values some masks have at their
    borders (CVC-ClinicDB, ISIC) go to the nearer class.
    """
    img = _open(path)
    arr = np.asarray(img.convert("L") if img.mode not in ("L",) else img)
    if arr.max() <= 1:
        return arr == 1
    return arr >= 128


def write_png(arr: np.ndarray, dst: Path) -> None:
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(dst)


def write_2d_case(image: np.ndarray, mask: Optional[np.ndarray], case_id: str, images_dir: Path,
                  labels_dir: Optional[Path], image_path: Path, mask_path=None) -> None:
    """``images_dir/CASE_0000.png`` (+ ``labels_dir/CASE.png`` with 0/1) after checking that their sizes match."""
    if mask is not None and mask.shape != image.shape[:2]:
        raise SourceDataError(f"{case_id}: image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask "
                              f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}")
    write_png(image, images_dir / f"{case_id}_0000.png")
    if mask is not None and labels_dir is not None:
        write_png(mask.astype(np.uint8), labels_dir / f"{case_id}.png")


RGB_CHANNELS = {0: "R", 1: "G", 2: "B"}  # as nnU-Net's Dataset120_RoadSegmentation



class Mask2DConverter(Converter):
    """2D image datasets with one image file and one binary (0/255) mask per case, stored as nnU-Net's
    ``NaturalImage2DIO`` PNGs: RGB by default, one grey channel when ``channels`` names one channel."""

    file_ending = ".png"
    reader_writer = "NaturalImage2DIO"
    channels: Dict[int, str] = RGB_CHANNELS

    def channel_names(self):
        return dict(self.channels)

    def convert_case(self, case: SourceCase, images_dir: Path, labels_dir: Optional[Path]) -> None:
        image = (read_rgb if len(self.channels) == 3 else read_gray)(case.images[0])
        mask = read_mask(case.label) if case.label is not None and labels_dir is not None else None
        write_2d_case(image, mask, case.case_id, images_dir, labels_dir, case.images[0], case.label)


def case_with_label(case_id: str, image: Path, label: Path, required: bool, missing: List[str], shown: str) -> SourceCase:
    """The case of ``image`` with ``label`` if that file exists; if not, a case without label, and ``shown`` (the
    label's path as the user should read it) is added to ``missing`` when the label is ``required``."""
    if label.is_file():
        return SourceCase(case_id, (image,), label)
    if required:
        missing.append(shown)
    return SourceCase(case_id, (image,), None)
