"""Converters from the seed papers' public datasets, as downloaded, to nnU-Net raw datasets; challenge packaging.

>>> from nnunet_losses.datasets import convert, package
>>> convert("brats2018", "/data/MICCAI_BraTS_2018_Data_Training")             # regions, free ID from 520
>>> convert("brats2018", "/data/MICCAI_BraTS_2018_Data_Training", binary="wt", dataset_id=601)
>>> package("brats2018", "/preds", "/submission", reference="/data/MICCAI_BraTS_2018_Data_Validation")

The same as ``nnunet-losses convert DATASET SOURCE [-d ID] [--binary [TASK]]`` and ``nnunet-losses package``.
Layouts, sources and label encodings: ``docs/datasets.md``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional, Sequence

from nnunet_losses.datasets.converter import Converter, DatasetIDError, LayoutError, SourceDataError, verify_raw_dataset

#: dataset key -> module implementing it
DATASETS = {
    "brats2018": "brats2018",
    "isles2017": "isles2017",
    "isles2018": "isles2018",
    "kits19": "kits19",
    "drive": "drive",
    "bus2017": "bus2017",
    "dsb2018": "dsb2018",
    "isic2018": "isic2018",
    "cvc-clinicdb": "cvc_clinicdb",
}


def _key(name: str) -> str:
    norm = name.lower().replace("_", "").replace("-", "")
    for key in DATASETS:
        if key.replace("-", "") == norm:
            return key
    raise KeyError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def converter_class(dataset: str) -> type:
    module = importlib.import_module(f"{__name__}.{DATASETS[_key(dataset)]}")
    return module.CONVERTER


def get_converter(dataset: str, binary=None, **options) -> Converter:
    return converter_class(dataset)(binary=binary, **options)


def available_datasets() -> list:
    return list(DATASETS)


def convert(dataset: str, source, dataset_id: Optional[int] = None, binary=None, name: Optional[str] = None,
            exclude: Sequence[str] = (), raw_dir=None, num_processes: int = 1, verify: bool = True,
            **options) -> Path:
    """Convert the download of ``dataset`` at ``source`` into ``nnUNet_raw`` and return the new dataset folder.

    dataset_id: use this ID (refused if any nnU-Net folder uses it); default: the first free ID from the dataset's
        preferred one (see ``docs/datasets.md``).
    binary: None for the dataset's default task; True for its default binary task; or a binary task's name
        (BraTS: "wt", "tc", "et"; KiTS19: "kidney", "tumour").
    name: dataset name (default e.g. "BraTS2018WT"); exclude: case IDs to leave out.
    raw_dir: defaults to $nnUNet_raw. verify: run nnU-Net's verify_dataset_integrity before putting it in place.
    options: dataset-specific, e.g. ISLES ``perfusion="maps"|"none"|"raw"``, ``modalities=[...]``;
        KiTS19 ``exclude_flawed=True``.
    """
    from nnunet_losses.datasets.converter import run_conversion
    converter = get_converter(dataset, binary=binary, **options)
    return run_conversion(converter, source, dataset_id=dataset_id, raw_dir=raw_dir, name=name, exclude=exclude,
                          num_processes=num_processes, verify=verify)


def package(challenge: str, predictions, output, reference, variant: Optional[str] = None) -> list:
    """Write predictions as the challenge expects them (names, labels, geometry checked against ``reference``).

    Returns the written files. Refuses to overwrite existing files. See :mod:`nnunet_losses.datasets.packaging`.
    """
    from nnunet_losses.datasets.packaging import package as _package
    return _package(challenge, predictions, output, reference, variant=variant)


__all__ = ["DATASETS", "available_datasets", "convert", "package", "get_converter", "converter_class",
           "LayoutError", "DatasetIDError", "SourceDataError", "verify_raw_dataset"]
