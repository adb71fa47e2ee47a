"""All-or-nothing output folders and the files written into them (JSON, CSV).

Outputs are written to a hidden temporary folder next to the destination and moved into place only when
everything succeeded, so an error (bad input found halfway through, a full disk) leaves nothing behind. The
destination must not be inside nnU-Net's folders or the folders the run reads (:mod:`.safety`), and existing
files are replaced only with ``overwrite=True``.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.formatting import csv_cell
from nnunet_losses.evaluation.safety import check_output_location


def check_destination(dest: Path, protected: Sequence[Path], overwrite: bool,
                      names: Optional[Iterable[str]] = None, dataset_names: Iterable[str] = ()) -> Path:
    """Refuse destinations in (or around) the folders the run reads or in nnU-Net's trees
    (:func:`.safety.check_output_location`), and existing outputs unless ``overwrite``."""
    dest = check_output_location(dest, protected, dataset_names)
    if dest.exists() and not dest.is_dir():
        raise EvaluationError(f"{dest}: exists and is not a folder")
    if dest.is_dir() and not overwrite:
        clash = [n for n in names if (dest / n).exists()] if names is not None else list(os.listdir(dest))
        if clash:
            raise EvaluationError(f"{dest / clash[0]}: already exists ({len(clash)} existing output file(s)); "
                                  f"pass --overwrite to replace them")
    return dest


class AtomicFolder:
    """``with AtomicFolder(dest) as tmp:`` write into ``tmp``; on success the files move to ``dest``."""

    def __init__(self, dest: Path):
        self.dest = Path(dest).resolve()
        self.tmp: Optional[Path] = None

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dest.parent / f".{self.dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                if not self.dest.exists():
                    os.replace(self.tmp, self.dest)
                    return False
                for root, _dirs, files in os.walk(self.tmp):
                    rel = Path(root).relative_to(self.tmp)
                    (self.dest / rel).mkdir(parents=True, exist_ok=True)
                    for f in files:
                        os.replace(Path(root) / f, self.dest / rel / f)
            return False
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)


def jsonable(obj):
    """Numpy scalars/arrays to Python; keeps NaN (written as ``NaN``, as nnU-Net's own summary.json)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj, path: Path, sort_keys: bool = True) -> None:
    with open(path, "w") as f:
        json.dump(jsonable(obj), f, indent=4, sort_keys=sort_keys)


def write_csv(rows: List[dict], path: Path, columns: Optional[List[str]] = None) -> None:
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: csv_cell(jsonable(r.get(k, ""))) for k in columns})
