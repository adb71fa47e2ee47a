"""Tiny synthetic datasets in nnU-Net's raw format, for tests and quick demos on a CPU.

Each case is a noisy image of one or two nested blobs; the label map marks them. Variants:

* ``kind="labels"``: labels background/outer/inner (3 classes, nested spheres);
* ``kind="regions"``: the same images, dataset.json declares nnU-Net regions ``whole = [1, 2]`` and
  ``inner = [2]`` with ``regions_class_order`` -- region-based (sigmoid) training;
* ``kind="ignore"``: a binary task where a slab of every label map is marked with the ignore label;
* ``kind="regions_ignore"``: the regions of ``"regions"`` plus an ignore label (3) on a slab of every label map
  (nnU-Net then appends the ignore mask to the region targets as a last channel).

``dim=2`` writes single-slice NIfTI images (shape ``1 x H x W``), which nnU-Net plans as a 2D dataset.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

KINDS = ("labels", "regions", "ignore", "regions_ignore")


def _blob_case(rng: np.random.Generator, shape: Sequence[int], noise: float):
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    radius = rng.uniform(0.18, 0.32) * min(s for s in shape if s > 1)
    center = np.array([rng.uniform(radius, s - radius) if s > 1 else 0 for s in shape], dtype=np.float32)
    dist = np.sqrt(((grid - center.reshape((-1,) + (1,) * len(shape))) ** 2).sum(0))
    label = np.zeros(shape, dtype=np.uint8)
    label[dist < radius] = 1
    label[dist < 0.5 * radius] = 2
    image = label.astype(np.float32) * 1.0 + rng.normal(0, noise, size=shape).astype(np.float32)
    return image, label


def write_synthetic_dataset(raw_root: str | Path, dataset_id: int, kind: str = "labels", n_cases: int = 10,
                            shape: Sequence[int] = (32, 32, 32), dim: int = 3, noise: float = 0.3, seed: int = 0,
                            spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """Write ``Dataset{id:03d}_Synthetic{Kind}{dim}D`` under ``raw_root`` and return its folder.

    Refuses to overwrite an existing dataset folder (it may be the user's data).
    """
    import SimpleITK as sitk

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    shape = tuple(int(s) for s in shape)
    if dim == 2:
        shape = (1,) + shape[-2:]
    name = f"Dataset{dataset_id:03d}_Synthetic{''.join(w.capitalize() for w in kind.split('_'))}{dim}D"
    out = Path(raw_root) / name
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another dataset_id or remove it yourself")
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        image, label = _blob_case(rng, shape, noise)
        if kind == "ignore":
            label = (label > 0).astype(np.uint8)
            label[..., : max(1, shape[-1] // 6)] = 2  # a slab of unannotated voxels
        elif kind == "regions_ignore":
            label[..., : max(1, shape[-1] // 6)] = 3
        case = f"case_{i:03d}"
        for arr, path in ((image, out / "imagesTr" / f"{case}_0000.nii.gz"), (label, out / "labelsTr" / f"{case}.nii.gz")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(float(s) for s in spacing))
            sitk.WriteImage(img, str(path))
    labels = {"labels": {"background": 0, "outer": 1, "inner": 2},
              "regions": {"background": 0, "whole": [1, 2], "inner": [2]},
              "ignore": {"background": 0, "foreground": 1, "ignore": 2},
              "regions_ignore": {"background": 0, "whole": [1, 2], "inner": [2], "ignore": 3}}[kind]
    dataset_json = {"channel_names": {"0": "noise"}, "labels": labels, "numTraining": n_cases,
                    "file_ending": ".nii.gz", "name": name}
    if kind in ("regions", "regions_ignore"):
        dataset_json["regions_class_order"] = [1, 2]
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return out
