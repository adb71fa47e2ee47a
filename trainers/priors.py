"""Class priors for weighted cross-entropy, computed from the fold's training labels and cached next to the plans.

The priors are the label (or region) frequencies of the *preprocessed* segmentations of the fold's training
cases -- what the network is trained on. Voxels with the ignore label are left out; voxels outside nnU-Net's
crop/nonzero mask (label -1 in the preprocessed data) count as background, as nnU-Net's data augmentation maps
them to 0.

Cache: ``$nnUNet_preprocessed/<Dataset>/nnunet_losses_class_priors.json``, one entry per
``<plans>/<configuration>/fold_<f>``. An entry is computed once and reused; it is recomputed only when it is
missing or was made for other training cases (a changed ``splits_final.json``) or other labels/regions. Other
entries and other files are never touched; the file is rewritten atomically under a lock.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

CACHE_FILE = "nnunet_losses_class_priors.json"
#: priors are clipped to [EPS, 1 - EPS] so that a class missing from a fold gets a large, finite weight
EPS = 1e-6


def cache_key(plans_name: str, configuration: str, fold) -> str:
    return f"{plans_name}/{configuration}/fold_{fold}"


def class_definition(label_manager) -> Dict[str, object]:
    """What the priors are frequencies of: the softmax classes or the sigmoid regions (with the ignore label)."""
    if label_manager.has_regions:
        regions = [[int(r)] if np.isscalar(r) else [int(x) for x in r] for r in label_manager.foreground_regions]
        return {"mode": "regions", "regions": regions, "ignore_label": label_manager.ignore_label}
    return {"mode": "labels", "num_classes": int(label_manager.num_segmentation_heads),
            "ignore_label": label_manager.ignore_label}


def count_voxels(segmentations, definition: Dict[str, object]) -> (List[int], int):
    """(count per class or region, number of valid voxels) over an iterable of label maps."""
    ignore = definition["ignore_label"]
    if definition["mode"] == "labels":
        counts = np.zeros(definition["num_classes"], dtype=np.int64)
    else:
        counts = np.zeros(len(definition["regions"]), dtype=np.int64)
    total = 0
    for seg in segmentations:
        s = np.asarray(seg).reshape(-1).astype(np.int64)
        if ignore is not None:
            s = s[s != ignore]
        s = np.where(s < 0, 0, s)
        total += s.size
        if definition["mode"] == "labels":
            binc = np.bincount(s, minlength=len(counts))
            if len(binc) > len(counts):
                raise ValueError(f"training labels contain {len(binc) - 1} but the dataset has {len(counts)} classes")
            counts += binc
        else:
            for i, region in enumerate(definition["regions"]):
                counts[i] += int(np.isin(s, region).sum())
    return [int(c) for c in counts], int(total)


def priors_from_counts(counts: Sequence[int], total: int) -> List[float]:
    if total <= 0:
        raise ValueError("no valid (non-ignored) training voxels to compute class priors from")
    return [float(np.clip(c / total, EPS, 1 - EPS)) for c in counts]


def _keys_digest(keys: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(sorted(str(k) for k in keys)).encode()).hexdigest()


@contextmanager
def _locked(folder: Path):
    """Exclusive lock on ``folder`` itself (POSIX ``flock`` on the directory: no lock file is left behind)."""
    try:
        import fcntl
        fd = os.open(str(folder), os.O_RDONLY)
    except (ImportError, OSError):  # pragma: no cover - Windows or a folder that cannot be opened
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_cache(path: Path) -> Dict[str, object]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("entries", None), dict):
        raise ValueError(f"{path} is not an nnunet-losses class-prior cache")
    return data


def load_or_compute_priors(folder: Path, key: str, definition: Dict[str, object], train_keys: Sequence[str],
                           load_segmentation, log=print) -> List[float]:
    """Class priors for ``key`` from the cache in ``folder``, computing (and caching) them if needed.

    ``load_segmentation(case_key)`` returns the preprocessed label map of a training case.
    """
    path = Path(folder) / CACHE_FILE
    digest = _keys_digest(train_keys)
    try:
        cached = _read_cache(path)["entries"].get(key) if path.is_file() else None
    except (ValueError, json.JSONDecodeError) as e:
        log(f"nnunet-losses: WARNING: cannot read class-prior cache {path} ({e}); computing without caching")
        cached, path = None, None
    if cached and cached.get("training_cases_sha1") == digest and cached.get("classes") == definition:
        log(f"nnunet-losses: class priors from cache {path} [{key}]")
        return [float(p) for p in cached["priors"]]

    log(f"nnunet-losses: computing class priors from {len(train_keys)} training cases [{key}]")
    counts, total = count_voxels((load_segmentation(k) for k in train_keys), definition)
    priors = priors_from_counts(counts, total)
    if path is None:
        return priors
    entry = {"priors": priors, "voxel_counts": counts, "valid_voxels": total, "classes": definition,
             "num_training_cases": len(train_keys), "training_cases_sha1": digest}
    try:
        with _locked(path.parent):
            data = _read_cache(path) or {"description": "class priors for weighted CE, written by nnunet-losses "
                                                        "(nnunet_losses.trainers.priors); safe to delete",
                                         "entries": {}}
            data["entries"][key] = entry
            fd, tmp = tempfile.mkstemp(prefix=CACHE_FILE, suffix=".tmp", dir=str(path.parent))
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2)
            os.replace(tmp, path)
        log(f"nnunet-losses: class priors cached in {path} [{key}]")
    except (OSError, ValueError, json.JSONDecodeError) as e:
        log(f"nnunet-losses: WARNING: could not cache class priors in {path} ({e})")
    return priors


def trainer_class_priors(trainer) -> List[float]:
    """Class priors of ``trainer``'s fold (cached), logged together with the resulting weighted-CE weights."""
    from nnunet_losses.functional import class_weights_from_priors

    if trainer.dataset_class is None:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        trainer.dataset_class = infer_dataset_class(trainer.preprocessed_dataset_folder)
    train_keys, _ = trainer.do_split()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, train_keys)

    def load_segmentation(case_key):
        return np.asarray(dataset.load_case(case_key)[1][:])

    definition = class_definition(trainer.label_manager)
    key = cache_key(trainer.plans_manager.plans_name, trainer.configuration_name, trainer.fold)
    priors = load_or_compute_priors(Path(trainer.preprocessed_dataset_folder_base), key, definition, train_keys,
                                    load_segmentation, log=trainer.print_to_log_file)
    weights, neg_weights = class_weights_from_priors(priors, definition["mode"] == "regions")
    msg = f"nnunet-losses: weighted CE, class priors {[round(p, 6) for p in priors]}, weights " \
          f"{[round(float(w), 4) for w in weights]}"
    if neg_weights is not None:
        msg += f" (region voxels), background weights {[round(float(w), 4) for w in neg_weights]}"
    trainer.print_to_log_file(msg)
    return priors
