"""Shared fixtures: a throw-away nnU-Net workspace with tiny synthetic datasets, planned once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

#: (kind, dim) -> (dataset id, configuration); see nnunet_losses.synthetic
DATASETS = {("labels", 3): (901, "3d_fullres"), ("regions", 3): (902, "3d_fullres"), ("ignore", 2): (903, "2d"),
            ("labels", 2): (904, "2d")}


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
                   nnUNet_results=str(self.results), nnUNet_compile="false", OMP_NUM_THREADS="2")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def dataset(self, kind: str = "labels", dim: int = 3):
        """(dataset id, configuration) of a planned and preprocessed synthetic dataset."""
        from nnunet_losses.synthetic import write_synthetic_dataset
        key = (kind, dim)
        if key not in self._planned:
            dataset_id, config = DATASETS[key]
            write_synthetic_dataset(self.raw, dataset_id, kind=kind, dim=dim, n_cases=10,
                                    shape=(32, 32, 32) if dim == 3 else (48, 48), seed=dataset_id)
            run_cli(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", config, "-npfp", "2", "-np", "2",
                     "--verify_dataset_integrity"], env=self.env())
            self._planned[key] = (dataset_id, config)
        return self._planned[key]


@pytest.fixture(scope="session")
def nnunet_workspace(tmp_path_factory) -> NnUNetWorkspace:
    return NnUNetWorkspace(tmp_path_factory.mktemp("nnunet"))
