r"""Phantom nnU-Net raw datasets with *known* inherent uncertainty: the expected reference volume of every case is exact.

The Sect. 2.2 situation of Bertels et al. 2020 (*Optimization with soft Dice can lead to a volumetric bias*), made into images (see :mod:`nnunet_losses.research.theory` and ``docs/theory.md``):

* a certain **core** (γ; label 1 in every draw): a disc (2D) or ball (3D) of radius ``r`` drawn per case from
  ``radius_range`` (mm, for scale studies);
* an **uncertain ring** (β) around it of ``mu`` times the core's volume (outer radius ``r (1 + mu)^(1/d)``), cut into
  ``n_subregions`` equal angular sectors (wedges around the z axis in 3D), each of which is drawn into the reference
  **independently per case** with probability ``p``;
* **background** (α) everywhere else.

The image shows where the regions are but not whether a sector was drawn in: core at intensity 1, every ring sector
at the same ``uncertain_intensity`` (0.5) whether drawn in or not, background 0, plus Gaussian noise (sd ``noise``).
The best any model can do for a ring voxel is therefore p (CE) -- or, by the paper's theory, 0 or 1 for soft Dice.

``variant="voxel"``: each voxel is its own independent region. The probability map is the Gaussian-blurred
(``blur`` mm) map core = 1, ring = p, background = 0; every voxel's label is drawn independently from it, and the
image is that probability map plus noise.

Outputs, in ``<raw_root>/Dataset{id:03d}_{name}/``: ``imagesTr/case_XXX_0000.nii.gz`` (float32),
``labelsTr/case_XXX.nii.gz`` (uint8, 0/1), ``dataset.json`` (one channel, labels background/structure),
``probabilitiesTr/case_XXX.nii.gz`` (float32, P(voxel is structure)) and the sidecar ``phantom.json``: generator
settings plus, per case, ``expected_volume_ml`` (= Σ probability x voxel volume, exact), ``reference_volume_ml``
(the drawn label map), voxel counts, the drawn sectors, and ``probability_map``, the probability map's path relative
to the dataset folder. Volumes in ml are ``count x prod(spacing) / 1000`` with spacing in mm (for 2D, the slice
thickness ``spacing[0]`` counts too).

Spacing is given in array order ``(z, y, x)`` like nnU-Net's (for 2D ``(y, x)`` takes slice thickness 1 mm, or give
three values); geometry is built in mm, so anisotropic spacing gives physically round objects. 2D datasets are
written as single-slice volumes ``1 x H x W``, which nnU-Net plans as 2D. The generator refuses to write over an
existing dataset folder or to reuse a dataset id that another folder in ``raw_root`` already has.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from nnunet_losses.research import PAPER

VARIANTS = ("regions", "voxel")
SIDECAR = "phantom.json"
PROBABILITY_FOLDER = "probabilitiesTr"
#: K rater label maps per case, ``<case>_rater<k>.nii.gz`` (the format of nnunet_losses.trainers.multirater)
RATER_FOLDER = "ratersTr"


def _spacing_zyx(spacing: Optional[Sequence[float]], dim: int) -> Tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    spacing = tuple(float(s) for s in spacing)
    if dim == 2 and len(spacing) == 2:
        spacing = (1.0,) + spacing
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be {dim} (or 3) positive values in array order (z, y, x), got {spacing}")
    return spacing


def _shape(shape: Optional[Sequence[int]], dim: int) -> Tuple[int, int, int]:
    if shape is None:
        shape = (64, 64) if dim == 2 else (32, 32, 32)
    shape = tuple(int(s) for s in shape)
    if dim == 2:
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise ValueError(f"a 2D shape needs 2 values (H, W), got {shape}")
        return (1,) + shape
    if len(shape) != 3:
        raise ValueError(f"a 3D shape needs 3 values (Z, Y, X), got {shape}")
    return shape


def phantom_case(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], dim: int,
                 variant: str = "regions", p: float = 0.5, n_subregions: int = 4, mu: float = 1.0,
                 radius_range: Sequence[float] = (6.0, 10.0), noise: float = 0.1, blur: float = 1.5,
                 uncertain_intensity: float = 0.5) -> dict:
    """One case: ``image`` (float32), ``label`` (uint8), ``probability`` (float32) arrays of ``shape`` (z, y, x)
    plus its metadata (voxel counts, drawn sectors, radius, centre in mm)."""
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=np.float64)
    axes = (1, 2) if dim == 2 else (0, 1, 2)
    r = float(rng.uniform(*radius_range))
    r_out = r * (1.0 + mu) ** (1.0 / len(axes))
    extent = np.array([shape[a] * spacing[a] for a in axes])
    margin = r_out + np.array([spacing[a] for a in axes])  # keep one voxel of background around the object
    if np.any(2 * margin > extent):
        raise ValueError(f"an object of outer radius {r_out:.2f} mm (core {r:.2f} mm, mu={mu}) does not fit into "
                         f"an image of {extent.tolist()} mm; use a larger shape or a smaller radius_range")
    center = np.array([rng.uniform(m, e - m) for m, e in zip(margin, extent)])
    # voxel centres in mm, array order; for 2D only (y, x) matter
    coords = np.meshgrid(*[(np.arange(shape[a]) + 0.5) * spacing[a] for a in range(3)], indexing="ij")
    d2 = sum((coords[a] - c) ** 2 for a, c in zip(axes, center))
    dist = np.sqrt(d2)
    core = dist < r
    ring = (dist >= r) & (dist < r_out)
    rotation = float(rng.uniform(0.0, 2.0 * np.pi))
    angle = np.arctan2(coords[1] - center[-2], coords[2] - center[-1])
    sector = np.floor(np.mod(angle - rotation, 2.0 * np.pi) / (2.0 * np.pi) * n_subregions).astype(np.int64)
    sector = np.clip(sector, 0, n_subregions - 1)
    ring_counts = [int(np.count_nonzero(ring & (sector == j))) for j in range(n_subregions)]
    if mu > 0 and variant == "regions" and min(ring_counts) == 0:
        raise ValueError(f"some of the {n_subregions} uncertain sub-regions are empty (ring voxels per sub-region: "
                         f"{ring_counts}); use larger objects or fewer sub-regions")
    base = core.astype(np.float64) + p * ring
    if variant == "regions":
        drawn = rng.random(n_subregions) < p
        label = core | (ring & drawn[sector])
        probability = base.astype(np.float32)
        image = core * 1.0 + ring * uncertain_intensity
        extra = {"drawn": [bool(x) for x in drawn], "uncertain_voxels": ring_counts}
    elif variant == "voxel":
        from scipy.ndimage import gaussian_filter
        sigma = [0.0 if (dim == 2 and a == 0) else blur / spacing[a] for a in range(3)]
        probability = np.clip(gaussian_filter(base, sigma=sigma, mode="constant"), 0.0, 1.0).astype(np.float32)
        label = rng.random(shape) < probability
        image = probability.astype(np.float64)
        extra = {"uncertain_voxels_total": int(np.count_nonzero((probability > 0) & (probability < 1)))}
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    image = (image + rng.normal(0.0, noise, size=shape)).astype(np.float32)
    meta = {"core_radius_mm": r, "outer_radius_mm": r_out, "center_mm": [float(c) for c in center],
            "rotation_rad": rotation, "core_voxels": int(np.count_nonzero(core)),
            "ring_voxels": int(np.count_nonzero(ring)),
            "mu_realised": float(np.count_nonzero(ring) / max(1, np.count_nonzero(core))), **extra}
    return {"image": image, "label": label.astype(np.uint8), "probability": probability, "meta": meta,
            "core": core, "sector": np.where(ring, sector, -1)}


def draw_raters(rng: np.random.Generator, case: dict, variant: str, p: float, n_subregions: int,
                n_raters: int) -> np.ndarray:
    """``(K, *shape)`` uint8 label maps of K raters of one case: rater 0 is the case's ``label``, raters 1..K-1 are
    independent new draws from the same model (regions: every ring sector drawn in with probability ``p``;
    voxel: every voxel with its probability), so the per-voxel probability map is the raters' expectation."""
    raters = [case["label"]]
    for _ in range(1, n_raters):
        if variant == "regions":
            drawn = np.append(rng.random(n_subregions) < p, False)  # index -1 (outside the ring): never drawn
            label = case["core"] | drawn[case["sector"]]
        else:
            label = rng.random(case["probability"].shape) < case["probability"]
        raters.append(label.astype(np.uint8))
    return np.stack(raters)


def _write(arr: np.ndarray, path: Path, spacing_zyx: Sequence[float]) -> None:
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_zyx))))  # SimpleITK wants (x, y, z)
    sitk.WriteImage(img, str(path), True)


def _check_settings(dim: int, variant: str, p: float, n_subregions: int, mu: float, radius_range, n_cases: int,
                    dataset_id: int, n_raters: int) -> Tuple[float, float]:
    """Raise a one-line ``ValueError`` for a setting the generator cannot use; return the radius range."""
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if int(n_subregions) != n_subregions or n_subregions < 1:
        raise ValueError(f"n_subregions must be a positive integer, got {n_subregions}")
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    lo, hi = (float(x) for x in radius_range)
    if not 0 < lo <= hi:
        raise ValueError(f"radius_range must be (min, max) with 0 < min <= max, got {radius_range}")
    if int(n_raters) != n_raters or n_raters < 0 or n_raters == 1:
        raise ValueError(f"n_raters must be 0 (no raters) or an integer >= 2, got {n_raters}")
    if n_cases < 1 or not 0 < int(dataset_id) < 1000:
        raise ValueError("need n_cases >= 1 and 0 < dataset_id < 1000")
    return lo, hi


def _dataset_folder(raw_root: Path, dataset_id: int, name: str) -> Path:
    """``raw_root/DatasetXXX_name``, refused if the name is not a plain folder name (``../x`` would write outside
    ``raw_root``) or the id is used in raw, preprocessed or results (nnU-Net could not tell the datasets apart)."""
    from nnunet_losses.datasets.converter import NAME_RE, used_dataset_ids
    if not NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r} may only contain letters, digits, '_', '-' and '.' (it names a "
                         f"folder inside {raw_root})")
    out = raw_root / f"Dataset{int(dataset_id):03d}_{name}"
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another dataset_id or remove it yourself")
    folders = [raw_root] + [Path(os.environ[v]) for v in ("nnUNet_preprocessed", "nnUNet_results") if os.environ.get(v)]
    clash = used_dataset_ids(folders).get(int(dataset_id))
    if clash:
        raise FileExistsError(f"dataset id {dataset_id} is already used by {', '.join(map(str, clash))}; "
                              f"choose another id")
    return out


def _theory(variant: str, p: float, n_subregions: int, mu: float) -> Optional[dict]:
    """The volume-bias paper's prediction for the ring (regions variant only; mu = 0 has no ring)."""
    if variant != "regions" or mu <= 0:
        return None
    from nnunet_losses.research.theory import flip_threshold, optimal_p_hat_soft_dice
    return {"note": f"{PAPER} Sect. 2.2 with alpha = background, gamma = core, beta = ring; image-wise soft Dice "
                    "with one p_hat for all ring voxels (nnU-Net's batch Dice over patches is not this)",
            "flip_threshold": flip_threshold(int(n_subregions), float(mu), tol=1e-8),
            "sd_optimal_p_hat": float(optimal_p_hat_soft_dice(p, int(n_subregions), mu)),
            "ce_optimal_p_hat": float(p)}


def _write_case(out: Path, cid: str, case: dict, raters: Optional[np.ndarray], spacing3, voxel_ml: float,
                theory: Optional[dict], p: float, n_subregions: int) -> dict:
    """Write one case's image, label, probability map (and raters); return its sidecar record."""
    _write(case["image"], out / "imagesTr" / f"{cid}_0000.nii.gz", spacing3)
    _write(case["label"], out / "labelsTr" / f"{cid}.nii.gz", spacing3)
    _write(case["probability"], out / PROBABILITY_FOLDER / f"{cid}.nii.gz", spacing3)
    meta = case["meta"]
    expected_voxels = float(case["probability"].astype(np.float64).sum())
    reference_voxels = int(case["label"].sum())
    rec = {"expected_volume_ml": expected_voxels * voxel_ml, "reference_volume_ml": reference_voxels * voxel_ml,
           "expected_voxels": expected_voxels, "reference_voxels": reference_voxels,
           "probability_map": f"{PROBABILITY_FOLDER}/{cid}.nii.gz", **meta}
    if raters is not None:
        rec["raters"] = []
        for k, rater in enumerate(raters):
            _write(rater, out / RATER_FOLDER / f"{cid}_rater{k}.nii.gz", spacing3)
            rec["raters"].append(f"{RATER_FOLDER}/{cid}_rater{k}.nii.gz")
        rec["rater_volumes_ml"] = [float(r.sum()) * voxel_ml for r in raters]
    if theory is not None:
        from nnunet_losses.research.theory import optimal_p_hat_soft_dice
        p_sd = float(optimal_p_hat_soft_dice(p, int(n_subregions), max(meta["mu_realised"], 1e-12)))
        rec["theory_sd_optimal_p_hat"] = p_sd
        rec["theory_sd_volume_ml"] = (meta["core_voxels"] + p_sd * meta["ring_voxels"]) * voxel_ml
    return rec


def write_phantom_dataset(raw_root, dataset_id: int, *, name: Optional[str] = None, dim: int = 2,
                          variant: str = "regions", p: float = 0.5, n_subregions: int = 4, mu: float = 1.0,
                          n_cases: int = 20, shape: Optional[Sequence[int]] = None,
                          spacing: Optional[Sequence[float]] = None, radius_range: Sequence[float] = (6.0, 10.0),
                          noise: float = 0.1, blur: float = 1.5, uncertain_intensity: float = 0.5,
                          seed: int = 0, n_raters: int = 0) -> Path:
    """Write a phantom dataset ``Dataset{id:03d}_{name}`` under ``raw_root`` and return its folder (see module doc).

    ``p``: probability that an uncertain sub-region (or, for ``variant="voxel"``, the ring) is structure;
    ``n_subregions``: N independent sectors of the ring; ``mu``: ring volume / core volume; ``radius_range``: core
    radius in mm, uniform per case; ``noise``: sd of the Gaussian image noise; ``blur``: sd in mm of the Gaussian
    blur of the voxel variant's probability map; ``seed``: everything is drawn from ``numpy.random.default_rng(seed)``.
    ``n_raters`` K >= 2: also write ``ratersTr/case_XXX_rater<k>.nii.gz``, K independent draws of the reference
    (rater 0 is ``labelsTr``; the multi-rater format of ``nnunet_losses.trainers.multirater``), from a second
    random stream, so the other files are those of ``n_raters=0``.
    The dataset id must be free in ``raw_root`` and in ``$nnUNet_preprocessed``/``$nnUNet_results`` where set.
    """
    lo, hi = _check_settings(dim, variant, p, n_subregions, mu, radius_range, n_cases, dataset_id,
                             n_raters)
    shape3, spacing3 = _shape(shape, dim), _spacing_zyx(spacing, dim)
    out = _dataset_folder(Path(raw_root), dataset_id, name or f"Phantom{variant.capitalize()}{dim}D")
    rng = np.random.default_rng(seed)
    cases = [phantom_case(rng, shape3, spacing3, dim, variant, p, int(n_subregions), mu, (lo, hi), noise, blur,
                          uncertain_intensity) for _ in range(n_cases)]  # draw all first: nothing half-written
    rater_rng = np.random.default_rng([seed, 1])
    raters = [draw_raters(rater_rng, case, variant, p, int(n_subregions), int(n_raters)) if n_raters else None
              for case in cases]
    voxel_ml = float(np.prod(spacing3)) / 1000.0
    theory = _theory(variant, p, n_subregions, mu)
    for sub in ("imagesTr", "labelsTr", PROBABILITY_FOLDER) + ((RATER_FOLDER,) if n_raters else ()):
        (out / sub).mkdir(parents=True, exist_ok=False)
    records = {f"case_{i:03d}": _write_case(out, f"case_{i:03d}", case, raters[i], spacing3, voxel_ml, theory, p,
                                            n_subregions) for i, case in enumerate(cases)}
    dataset_json = {"channel_names": {"0": "phantom"}, "labels": {"background": 0, "structure": 1},
                    "numTraining": n_cases, "file_ending": ".nii.gz", "name": out.name,
                    "description": f"nnunet_losses phantom ({variant}, {dim}D): p={p}, N={n_subregions}, mu={mu}; "
                                   f"expected volumes in {SIDECAR}"}
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    sidecar = {"generator": "nnunet_losses.research.phantom", "variant": variant, "dim": dim, "p": p,
               "n_subregions": int(n_subregions), "mu": mu, "n_cases": n_cases, "shape_zyx": list(shape3),
               "spacing_zyx_mm": list(spacing3), "voxel_volume_ml": voxel_ml, "radius_range_mm": [lo, hi],
               "n_raters": int(n_raters), "noise": noise, "blur_mm": blur if variant == "voxel" else None,
               "uncertain_intensity": uncertain_intensity if variant == "regions" else None, "seed": seed,
               "volume_unit": "ml = voxels x prod(spacing_zyx_mm) / 1000",
               "probability_map_note": "paths relative to this file's folder; float32 P(voxel is structure)",
               "theory": theory, "cases": records}
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    return out


def load_sidecar(dataset_folder) -> dict:
    """The phantom's ``phantom.json`` with each case's ``probability_map`` made an absolute path."""
    folder = Path(dataset_folder)
    data = json.loads((folder / SIDECAR).read_text())
    for rec in data["cases"].values():
        rec["probability_map"] = str(folder / rec["probability_map"])
        if "raters" in rec:
            rec["raters"] = [str(folder / r) for r in rec["raters"]]
    return data
