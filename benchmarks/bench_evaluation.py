"""Evaluation time over the bare ``np.load`` time of the same probability files, and peak memory.

Run from the repository root::

    .venv/bin/python benchmarks/bench_evaluation.py                  # 8 cases, 3 x 160^3 (49 MB each)
    .venv/bin/python benchmarks/bench_evaluation.py --quick          # seconds, numbers meaningless
    .venv/bin/python benchmarks/bench_evaluation.py --cases 6 --shape 128 128 128 --classes 4 --reps 5

What is measured
----------------
A prediction folder like ``nnUNetv2_predict --save_probabilities`` writes it (``<case>.npz`` with float32
``probabilities`` saved by ``np.savez_compressed``, as nnU-Net does; references as ``.nii.gz``; dataset.json),
with realistic probability maps: smooth logits inside a crop box, exact one-hot background padding outside.

* **bare load**: ``np.load(f)["probabilities"]`` of every file, one after the other -- the unavoidable cost of
  reading nnU-Net's compressed npz files (zlib inflate);
* **our npz reader**: ``evaluation.npz.read_npz_array`` of every file, what ``evaluate`` reads them with (ISA-L's
  inflate where the ``isal`` package is installed, which pyproject.toml does on x86_64/aarch64; else zlib);
* **evaluate**: ``nnunet_losses.evaluation.evaluate(folder, reference_folder=...)`` without writing files: reading
  the npz and the references (dataset reader/writer), every statistic, the summary -- with ``num_processes=1``
  (a background thread inflates each npz while the reduction walks through the part already there) and with
  ``-np`` worker processes;
* **evaluate w/o decision rules**: the same with the voxel decision rules' cuts switched off -- the evaluation
  before they were added; the ratio is their cost;
* **calibration fit**: the voxel samples ``calibrate`` takes from every case (4000 per reference label), then
  temperature, vector and Dirichlet scaling fitted cross-fitted on 5 folds (round robin) plus the final map.

Every repetition runs each variant once in a rotating order (the machine may be shared); the medians are
reported. **Peak memory** is measured in a fresh process with ``tracemalloc`` (numpy registers its buffers with
it): the high-water mark of Python/numpy memory during ``evaluate(num_processes=1)``, divided by the size of one
case's probability array. (SimpleITK's own C++ buffers of a reference image are not traced; they are one
channel of the image size, once per case.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_case(shape, k, seed):
    import scipy.ndimage as ndi
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij"))
    d = np.sqrt((g ** 2).sum(0))
    noise = ndi.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 3) * 20
    r = rng.uniform(0.25, 0.4)
    logits = [(d - r) * 30]
    for i in range(1, k):
        logits.append((r / i - d) * 30 + noise * (1 + 0.1 * i))
    logits = np.stack(logits)
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    p = p.astype(np.float32)
    m = max(1, shape[0] // 12)  # crop box padding: exact one-hot background
    p[:, :m] = 0
    p[0, :m] = 1
    ref = np.zeros(shape, np.uint8)
    for i in range(1, k):
        ref[d < r / i] = i
    return p, ref


def write_dataset(folder: Path, n, shape, k):
    import SimpleITK as sitk
    pred, gt = folder / "pred", folder / "gt"
    pred.mkdir(parents=True)
    gt.mkdir()
    labels = {"background": 0, **{f"c{i}": i for i in range(1, k)}}
    (pred / "dataset.json").write_text(json.dumps({"channel_names": {"0": "x"}, "labels": labels, "numTraining": n,
                                                   "file_ending": ".nii.gz"}))
    for i in range(n):
        p, ref = make_case(shape, k, i)
        np.savez_compressed(pred / f"case_{i:03d}.npz", probabilities=p)
        img = sitk.GetImageFromArray(ref)
        img.SetSpacing((0.8, 0.8, 1.5))
        sitk.WriteImage(img, str(gt / f"case_{i:03d}.nii.gz"))
    return pred, gt


def _cpu() -> float:
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def bare_load(pred: Path):
    for f in sorted(pred.glob("*.npz")):
        a = np.load(f)["probabilities"]
        del a


def own_reader(pred: Path):
    from nnunet_losses.evaluation.npz import read_npz_array
    for f in sorted(pred.glob("*.npz")):
        _, a = read_npz_array(f, ("probabilities",))
        del a


def run_eval(pred: Path, gt: Path, nproc: int):
    from nnunet_losses.evaluation import evaluate
    evaluate(pred, reference_folder=gt, num_processes=nproc, plots=False)


def run_eval_without_rules(pred: Path, gt: Path):
    """``evaluate`` as it was before the voxel decision rules (their cuts replaced by nothing): the baseline the
    rules' cost is measured against (the Poisson-binomial volume and threshold rules cost no voxel work)."""
    import importlib
    ev = importlib.import_module("nnunet_losses.evaluation.evaluate")  # the module (the package exports a function)
    real = ev.case_cuts
    ev.case_cuts = lambda p, ref, spec, hists=None: {k: {} for k in spec.keys}
    try:
        run_eval(pred, gt, 1)
    finally:
        ev.case_cuts = real


def calibration_fit_times(pred: Path, gt: Path, n_folds: int = 5) -> list:
    """Seconds to fit each calibration method cross-fitted on ``n_folds`` folds (round robin) plus the final map,
    from the voxel samples ``calibrate`` takes (default 4000 per reference label and case)."""
    import SimpleITK as sitk
    from nnunet_losses.evaluation.calibrate import DEFAULT_PER_LABEL, CaseSampler, fit_crossfitted
    from nnunet_losses.evaluation.calibration import METHODS, VoxelSamples, fit_calibration
    from nnunet_losses.evaluation.cases import CaseFiles
    from nnunet_losses.evaluation.spec import TaskSpec
    dj = json.loads((pred / "dataset.json").read_text())
    spec = TaskSpec.from_dataset_json(dj)
    sampler = CaseSampler(spec, DEFAULT_PER_LABEL, 0)
    samples = []
    for f in sorted(pred.glob("*.npz")):
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(gt / f"{f.stem}.nii.gz")))
        samples.append(sampler(CaseFiles(f.stem, None, f, None), np.load(f)["probabilities"], ref)["samples"])
    groups = [list(range(g, len(samples), n_folds)) for g in range(min(n_folds, len(samples)))]
    rows = []
    for method in METHODS:
        t = time.perf_counter()
        fit_crossfitted(method, samples, groups, spec)
        fit_calibration(method, VoxelSamples.concat(samples), spec)
        rows.append((method, time.perf_counter() - t, sum(len(s.labels) for s in samples)))
    return rows


def memory_child(pred: str, gt: str) -> None:
    import tracemalloc
    from nnunet_losses.evaluation import evaluate
    evaluate(Path(pred), reference_folder=Path(gt), num_processes=1, plots=False)  # imports, caches: not traced
    tracemalloc.start()
    evaluate(Path(pred), reference_folder=Path(gt), num_processes=1, plots=False)
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"peak_bytes": peak}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=[160, 160, 160])
    ap.add_argument("--classes", type=int, default=3, help="softmax channels (background included)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-np", type=int, default=2, help="worker processes for the parallel variant")
    ap.add_argument("--quick", action="store_true", help="3 tiny cases, 1 repetition")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        return memory_child(*args.memory_child)
    if args.quick:
        args.cases, args.shape, args.reps = 3, [48, 48, 48], 1
    import torch  # noqa: F401  (imported by evaluate anyway; keep its import out of the timings)
    from nnunet_losses.evaluation import evaluate  # noqa: F401
    from nnunet_losses.evaluation import npz
    inflater = "ISA-L" if npz._inflater.__name__.startswith("isal") else "zlib"
    with tempfile.TemporaryDirectory() as tmp:
        pred, gt = write_dataset(Path(tmp), args.cases, tuple(args.shape), args.classes)
        case_bytes = args.classes * int(np.prod(args.shape)) * 4
        disk = sum(f.stat().st_size for f in pred.glob("*.npz"))
        variants = {"bare np.load": lambda: bare_load(pred),
                    f"our npz reader ({inflater})": lambda: own_reader(pred),
                    "evaluate (1 process)": lambda: run_eval(pred, gt, 1),
                    "evaluate w/o decision rules": lambda: run_eval_without_rules(pred, gt),
                    f"evaluate ({args.np} processes)": lambda: run_eval(pred, gt, args.np)}
        run_eval(pred, gt, 1)  # warm-up (page cache, imports)
        times = {k: [] for k in variants}
        cpu = {k: [] for k in variants}
        names = list(variants)
        load0 = os.getloadavg()[0]
        for r in range(args.reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                c0, t = _cpu(), time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(_cpu() - c0)
        load1 = os.getloadavg()[0]
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(pred), str(gt)], capture_output=True,
                             text=True, check=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
        fits = calibration_fit_times(pred, gt)
    print(f"# bench_evaluation: {args.cases} cases, probabilities {args.classes} x {' x '.join(map(str, args.shape))} "
          f"float32 ({case_bytes / 2**20:.1f} MiB each, {disk / args.cases / 2**20:.1f} MiB compressed on disk)")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"{args.reps} repetitions (median); load average {load0:.1f} before, {load1:.1f} after")
    base, base_cpu = med["bare np.load"], med_cpu["bare np.load"]
    print(f"{'variant':28s} {'wall [s]':>9s} {'per case':>9s} {'x bare load':>12s} {'CPU [s]':>9s} {'x CPU':>7s}")
    for k, v in med.items():
        print(f"{k:28s} {v:9.3f} {v / args.cases:9.3f} {v / base:12.2f} {med_cpu[k]:9.3f} "
              f"{med_cpu[k] / base_cpu:7.2f}")
    print("# CPU = user + system time of this process and its worker processes (the work done, whatever the "
          "machine's load); wall includes overlap of reading and reducing")
    print(f"peak traced memory of evaluate (1 process): {peak / 2**20:.1f} MiB = {peak / case_bytes:.2f} x one case's "
          f"probability array")
    print(f"decision rules (dice_optimal, rankseg_rma, volume_matched): evaluate takes "
          f"{med['evaluate (1 process)'] / med['evaluate w/o decision rules']:.2f} x the wall time (CPU "
          f"{med_cpu['evaluate (1 process)'] / med_cpu['evaluate w/o decision rules']:.2f} x) of evaluate without them "
          f"(target <= 1.5)")
    for method, sec, n in fits:
        print(f"calibration fit, {method:11s}: {sec:6.2f} s for 5 cross-fitted folds + the final map "
              f"({n} sampled voxels)")


if __name__ == "__main__":
    main()
