"""Evaluation of a label-map-only folder (no probabilities): ours against nnU-Net's ``nnUNetv2_evaluate_folder``
(``nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder``) on the same folder, side by side.

    .venv/bin/python benchmarks/bench_labelmaps.py [--cases 8] [--shape 128 128 128] [--reps 3] [-np 1]

* **nnU-Net**: ``compute_metrics_on_folder`` (Dice, IoU, TP/FP/FN/TN per class; writes its summary.json);
* **ours, same metrics**: ``evaluate_label_maps(..., tolerance_mm=None)``: the same per-class counts plus
  volumes and dV (written to memory only);
* **ours + surface**: the same with HD95 and NSD at 1 mm (MONAI), reported separately.

Cases: nested ellipsoids (labels 1, 2) as reference, the prediction a perturbed copy, .nii.gz with anisotropic
spacing. Each repetition runs every variant once in a rotating order (medians; the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from timing import print_ratio_table, time_variants  # benchmarks/timing.py, beside this script


def make_folder(root: Path, n_cases: int, shape) -> tuple:
    import SimpleITK as sitk
    from scipy import ndimage
    pred_dir, ref_dir = root / "pred", root / "gt"
    pred_dir.mkdir()
    ref_dir.mkdir()
    (pred_dir / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "lesion": 2},
                                                       "file_ending": ".nii.gz", "channel_names": {"0": "CT"},
                                                       "numTraining": n_cases}))
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    for i in range(n_cases):
        rng = np.random.default_rng(i)
        c = rng.uniform(-0.2, 0.2, 3)[:, None, None, None]
        d = np.sqrt((((g - c) / rng.uniform(0.4, 0.7, 3)[:, None, None, None]) ** 2).sum(0))
        ref = (d < 1).astype(np.uint8) + (d < 0.4)
        pred = ndimage.binary_dilation(ref > 0, iterations=1).astype(np.uint8) + (d < 0.45)
        for arr, folder in ((ref, ref_dir), (pred, pred_dir)):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((0.8, 0.8, 2.5))
            sitk.WriteImage(img, str(folder / f"case{i:03d}.nii.gz"))
    return pred_dir, ref_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=[96, 128, 128])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-np", type=int, default=1, dest="num_processes", help="nnU-Net's worker processes")
    a = p.parse_args()
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_losses.evaluation.labelmaps import evaluate_label_maps
    root = Path(tempfile.mkdtemp(prefix="bench_labelmaps_"))
    pred_dir, ref_dir = make_folder(root, a.cases, a.shape)
    variants = {
        "nnU-Net compute_metrics_on_folder": lambda: compute_metrics_on_folder(
            str(ref_dir), str(pred_dir), str(root / "nnunet_summary.json"), SimpleITKIO(), ".nii.gz", [1, 2],
            num_processes=a.num_processes),
        "ours, same metrics (+ volumes)": lambda: evaluate_label_maps(pred_dir, reference_folder=ref_dir,
                                                                      tolerance_mm=None),
        "ours + HD95/NSD (surface)": lambda: evaluate_label_maps(pred_dir, reference_folder=ref_dir),
    }
    medians = time_variants(variants, a.reps)
    print(f"{a.cases} cases {tuple(a.shape)}, labels 1/2, nnU-Net -np {a.num_processes}, {a.reps} repetitions "
          f"(medians)")
    print_ratio_table(medians, "nnU-Net")
    return 0


if __name__ == "__main__":
    sys.exit(main())
