"""Shared fixtures: a throw-away nnU-Net workspace with tiny synthetic datasets, planned once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Empty nnUNet_raw/preprocessed/results folders for one test, set in the environment."""
    dirs = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    for k, p in dirs.items():
        p.mkdir()
        monkeypatch.setenv(f"nnUNet_{k}", str(p))
    return dirs


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op torch thread for a module of tests on tiny tensors (``pytestmark = pytest.mark.usefixtures(
    "single_torch_thread")``): a second thread only adds synchronisation, 3-4x slower on a busy 2-core machine."""
    from loss_cases import one_torch_thread
    with one_torch_thread():
        yield

#: (kind, dim) -> (dataset id, configuration); see nnunet_losses.research.synthetic
DATASETS = {("labels", 3): (901, "3d_fullres"), ("regions", 3): (902, "3d_fullres"), ("ignore", 2): (903, "2d"),
            ("labels", 2): (904, "2d"), ("regions_ignore", 2): (905, "2d")}


def run_cli(args, env=None, timeout=900, check=True) -> subprocess.CompletedProcess:
    """Run an nnU-Net / nnunet-losses console command from this venv; on failure show the tail of its output."""
    cmd = [str(BIN / args[0])] + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
                             f"\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


class NnUNetWorkspace:
    def __init__(self, root: Path):
        self.root = root
        self.raw, self.preprocessed, self.results = root / "raw", root / "preprocessed", root / "results"
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        self._planned = {}

    def env(self, **extra) -> dict:
        """Environment for nnU-Net commands: this workspace's folders, our trainers, CPU-friendly settings."""
        env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results), nnUNet_compile="false", OMP_NUM_THREADS="2",
                   # nnUNetv2_train -device cpu sets torch's threads to the core count whatever OMP_NUM_THREADS
                   # says; OpenMP's default busy-waiting then slows every op ~20x on a shared machine
                   OMP_WAIT_POLICY="PASSIVE",
                   # nnU-Net's export pools default to 8 spawned workers, each importing torch: far too many here
                   nnUNet_def_n_proc="2")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def dataset(self, kind: str = "labels", dim: int = 3):
        """(dataset id, configuration) of a planned and preprocessed synthetic dataset."""
        from nnunet_losses.research.synthetic import write_synthetic_dataset
        key = (kind, dim)
        if key not in self._planned:
            dataset_id, config = DATASETS[key]
            write_synthetic_dataset(self.raw, dataset_id, kind=kind, dim=dim, n_cases=10,
                                    shape=(32, 32, 32) if dim == 3 else (48, 48), seed=dataset_id)
            env = self.env()
            env.pop("nnUNet_n_proc_DA", None)  # 0 (fine for training) crashes nnU-Net's planner
            run_cli(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", config, "-npfp", "2", "-np", "2",
                     "--verify_dataset_integrity"], env=env)
            self._planned[key] = (dataset_id, config)
        return self._planned[key]

    def small_plans(self, dataset_id: int, name: str = "nnUNetPlansSmall", base_features: int = 4,
                    max_features: int = 32) -> str:
        """Plans ``name`` (pass as ``-p``) for a planned dataset: nnUNetPlans with a narrow network (features
        ``base_features * 2**stage`` up to ``max_features``) on the same preprocessed data. About 7x faster
        training steps on a CPU than nnU-Net's 32..320 features. Idempotent."""
        import json
        folder = next(self.preprocessed.glob(f"Dataset{dataset_id:03d}_*"))
        target = folder / f"{name}.json"
        if not target.is_file():
            plans = json.loads((folder / "nnUNetPlans.json").read_text())
            plans["plans_name"] = name
            for cfg in plans["configurations"].values():
                kwargs = cfg.get("architecture", {}).get("arch_kwargs", {})
                if "features_per_stage" in kwargs:
                    kwargs["features_per_stage"] = [min(base_features * 2 ** i, max_features)
                                                    for i in range(len(kwargs["features_per_stage"]))]
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(plans, indent=2))
            tmp.replace(target)
        return name


@pytest.fixture(scope="session")
def nnunet_workspace(tmp_path_factory) -> NnUNetWorkspace:
    return NnUNetWorkspace(tmp_path_factory.mktemp("nnunet"))
