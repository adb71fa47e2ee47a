"""Our trainers through nnU-Net's own command lines, on CPU: plan -> train -> --val / --c / -pretrained_weights ->
predict -> find_best_configuration, on the synthetic labels-3D, regions-3D and ignore-label-2D datasets.

All runs are started once (two at a time, overlapping with the planning of the next dataset) by the module
fixture ``runs``; each test checks what one run left behind. Short runs through the documented environment
variables (NNUNET_LOSSES_EPOCHS / _ITERATIONS / _VAL_ITERATIONS) and the narrow ``nnUNetPlansSmall`` plans
(conftest), with one BLAS thread per process (two OpenMP threads per process on a shared 2-core machine are
many times slower).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN

pytestmark = pytest.mark.slow

# 2 epochs of 20 iterations: enough for soft Dice / DSC++ to go down reliably on these data (12 are not)
EPOCHS, ITERATIONS = 2, 20
LABELS3, REGIONS3, IGNORE2, REGIONS_IGNORE2 = ("labels", 3), ("regions", 3), ("ignore", 2), ("regions_ignore", 2)
PLANS = "nnUNetPlansSmall"
#: comma-separated job names: run only those (see ``build_jobs``), for working on one trainer test
SELECT_ENV = "NNUNET_LOSSES_TEST_JOBS"


@dataclass
class Job:
    name: str
    dataset: tuple
    #: command line after the executable's dataset id and configuration are filled in (see ``argv``)
    argv: List[str]
    after: Sequence[str] = ()
    env: Dict[str, str] = field(default_factory=dict)
    returncode: Optional[int] = None
    seconds: float = 0.0
    log: Optional[Path] = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def output(self, tail: int = 8000) -> str:
        text = self.log.read_text() if self.log and self.log.is_file() else ""
        return self.error + (text[-tail:] if tail else text)


class Runs:
    """The jobs' results plus the workspace paths the tests need."""

    def __init__(self, ws, datasets, jobs):
        self.ws, self.datasets, self.jobs = ws, datasets, jobs

    def job(self, name) -> Job:
        if name not in self.jobs:
            pytest.skip(f"job {name} not selected by {SELECT_ENV}")
        job = self.jobs[name]
        assert job.ok, f"job {name} failed (exit {job.returncode}):\n{job.output()}"
        return job

    def dataset_name(self, key) -> str:
        return self.datasets[key][2]

    def model_folder(self, key, trainer) -> Path:
        did, cfg, name = self.datasets[key]
        return self.ws.results / name / f"{trainer}__{PLANS}__{cfg}"

    def fold(self, key, trainer, fold=0) -> Path:
        return self.model_folder(key, trainer) / f"fold_{fold}"

    def val_keys(self, key, fold=0) -> List[str]:
        splits = json.loads((self.ws.preprocessed / self.dataset_name(key) / "splits_final.json").read_text())
        return splits[fold]["val"]

    def gt(self, key, case) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(
            self.ws.preprocessed / self.dataset_name(key) / "gt_segmentations" / f"{case}.nii.gz")))


def _train(trainer, *extra) -> List[str]:
    return ["nnUNetv2_train", "{id}", "{cfg}", "0", "-tr", trainer, "-p", PLANS, "-device", "cpu", *extra]


def _predict(trainer, out_name) -> List[str]:
    return ["nnUNetv2_predict", "-i", "{root}/predict_in_{id}", "-o", "{root}/" + out_name, "-d", "{id}", "-c",
            "{cfg}", "-f", "0", "-tr", trainer, "-p", PLANS, "-device", "cpu", "--save_probabilities",
            "-npp", "1", "-nps", "1"]


def build_jobs() -> List[Job]:
    fewer = {"NNUNET_LOSSES_ITERATIONS": "10"}  # CE-type losses go down quickly; soft Dice / DSC++ need 20
    # DSC++ (gamma 2) on the 3-class 3D labels learns slowest (its FP/FN terms vanish for confident voxels): with
    # 20 iterations a clean-clone CI run once ended flat (0.868 -> 0.871); 40 make "the loss went down" reliable
    more = {"NNUNET_LOSSES_ITERATIONS": "40"}
    ce_ckpt = "{results}/{name}/nnUNetTrainer_CEonly__" + PLANS + "__{cfg}/fold_0/checkpoint_final.pth"
    return [
        Job("CEonly", LABELS3, _train("nnUNetTrainer_CEonly", "--npz"), env=fewer),
        Job("SoftDice", LABELS3, _train("nnUNetTrainer_SoftDice")),
        Job("DSCpp", LABELS3, _train("nnUNetTrainer_DSCpp", "--npz"), env=more),
        Job("LR_CE", LABELS3, _train("nnUNetTrainer_LR_CE", "--npz")),
        Job("Lovasz_ignore", IGNORE2, _train("nnUNetTrainer_Lovasz", "--npz")),
        Job("UNet_SoftDice_ignore", IGNORE2, _train("nnUNetTrainer_UNet_SoftDice", "--npz")),
        Job("wCE_regions", REGIONS3, _train("nnUNetTrainer_wCE", "--npz"), env=fewer),
        Job("DSCpp_regions_ignore", REGIONS_IGNORE2, _train("nnUNetTrainer_DSCpp", "--npz")),
        Job("finetune", LABELS3, _train("nnUNetTrainer_SoftDice_finetune", "-pretrained_weights", ce_ckpt),
            after=["CEonly"]),
        # one more epoch on top of the finished LR run (checkpoint_final): Adam state, plateau schedule, no DS
        Job("LR_CE_continue", LABELS3, _train("nnUNetTrainer_LR_CE", "--npz", "--c"), after=["LR_CE"],
            env={"NNUNET_LOSSES_EPOCHS": str(EPOCHS + 1)}),
        Job("SoftDice_val", LABELS3, _train("nnUNetTrainer_SoftDice", "--val", "--npz"), after=["SoftDice"]),
        Job("predict_CEonly", LABELS3, _predict("nnUNetTrainer_CEonly", "pred_ce"), after=["CEonly"]),
        Job("find_best", LABELS3, ["nnUNetv2_find_best_configuration", "{id}", "-c", "{cfg}", "-tr",
                                   "nnUNetTrainer_CEonly", "-p", PLANS, "-f", "0", "-np", "1",
                                   "--disable_ensembling"], after=["CEonly"]),
    ]


def run_jobs(ws, jobs: List[Job], env: Dict[str, str], parallel: int = 2, timeout: float = 1500):
    """Plan the datasets (in a thread, in order of first use) and run the jobs, ``parallel`` at a time, each as
    soon as its dataset is planned and the jobs it comes ``after`` have succeeded."""
    order = list(dict.fromkeys(job.dataset for job in jobs))
    datasets, failed_plans = {}, {}

    def plan_all():
        for key in order:
            try:
                did, cfg = ws.dataset(*key)
                ws.small_plans(did)
                name = next(ws.raw.glob(f"Dataset{did:03d}_*")).name
                inputs = ws.root / f"predict_in_{did}"
                if not inputs.exists():  # two training cases as "new" images for nnUNetv2_predict
                    inputs.mkdir()
                    for case in ("case_000", "case_001"):
                        shutil.copy(ws.raw / name / "imagesTr" / f"{case}_0000.nii.gz", inputs)
                datasets[key] = (did, cfg, name)
            except BaseException as e:  # reported by the jobs that needed this dataset
                failed_plans[key] = f"planning {key} failed: {e}\n"

    planner = threading.Thread(target=plan_all, daemon=True)
    planner.start()
    pending, running, done = list(jobs), [], {}
    start = time.time()
    while pending or running:
        for job, proc, t0, fh in list(running):
            if proc.poll() is not None:
                fh.close()
                job.returncode, job.seconds = proc.returncode, time.time() - t0
                running.remove((job, proc, t0, fh))
                done[job.name] = job
        for job in list(pending):
            blocked = [a for a in job.after if a in done and not done[a].ok]
            if job.dataset in failed_plans or blocked:
                job.returncode = -1
                job.error = failed_plans.get(job.dataset, "") + "".join(f"needs job {a}, which failed\n"
                                                                        for a in blocked)
                pending.remove(job)
                done[job.name] = job
                continue
            if len(running) >= parallel or job.dataset not in datasets or any(a not in done for a in job.after):
                continue
            did, cfg, name = datasets[job.dataset]
            fill = dict(id=did, cfg=cfg, name=name, root=ws.root, results=ws.results)
            argv = [str(BIN / job.argv[0])] + [a.format(**fill) for a in job.argv[1:]]
            job.log = ws.root / f"job_{job.name}.log"
            fh = open(job.log, "w")
            fh.write(" ".join(argv) + "\n")
            fh.flush()
            proc = subprocess.Popen(argv, env={**env, **job.env}, stdout=fh, stderr=subprocess.STDOUT)
            running.append((job, proc, time.time(), fh))
            pending.remove(job)
        if time.time() - start > timeout:
            for job, proc, _, fh in running:
                proc.kill()
                job.error = f"killed after the {timeout} s budget of all runs\n"
            raise AssertionError(f"trainer runs exceeded {timeout} s")
        time.sleep(0.2)
    planner.join()
    return datasets


@pytest.fixture(scope="module")
def runs(nnunet_workspace) -> Runs:
    from nnunet_losses.trainers import trainer_path
    ws = nnunet_workspace
    env = ws.env(nnUNet_extTrainer=trainer_path(), nnUNet_n_proc_DA=0, nnUNet_def_n_proc=1, OMP_NUM_THREADS=1,
                 MKL_NUM_THREADS=1, NNUNET_LOSSES_EPOCHS=EPOCHS, NNUNET_LOSSES_ITERATIONS=ITERATIONS,
                 NNUNET_LOSSES_VAL_ITERATIONS=1)
    jobs = build_jobs()
    selected = os.environ.get(SELECT_ENV)
    if selected:  # development: run only some jobs (and what they come after); the tests of the others skip
        wanted = set(selected.split(","))
        for job in reversed(jobs):
            if job.name in wanted:
                wanted.update(job.after)
        jobs = [job for job in jobs if job.name in wanted]
    t0 = time.time()
    datasets = run_jobs(ws, jobs, env)
    summary = ", ".join(f"{j.name} {j.seconds:.0f}s" for j in jobs)
    print(f"\n[trainer runs] {time.time() - t0:.0f} s wall in all: {summary}")
    return Runs(ws, datasets, {j.name: j for j in jobs})


def load_checkpoint(folder: Path, name="checkpoint_final.pth") -> dict:
    return torch.load(folder / name, map_location="cpu", weights_only=False)


def check_training(runs: Runs, key, trainer, softmax=True, n_epochs=EPOCHS, n_channels=3, loss_down=True) -> dict:
    """Checkpoint names our trainer, the training loss went down, validation exports have the right shapes."""
    fold = runs.fold(key, trainer)
    ckpt = load_checkpoint(fold)
    assert ckpt["trainer_name"] == trainer
    assert ckpt["init_args"]["configuration"] == runs.datasets[key][1]
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == n_epochs and all(np.isfinite(losses))
    assert losses[-1] < losses[0] or not loss_down, f"{trainer}: training loss did not go down: {losses}"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["foreground_mean"]["Dice"])
    for case in runs.val_keys(key):
        gt = runs.gt(key, case)
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(fold / "validation" / f"{case}.nii.gz")))
        assert seg.shape == gt.shape
        npz = fold / "validation" / f"{case}.npz"
        if npz.is_file():
            check_probabilities(np.load(npz)["probabilities"], seg, softmax, n_channels)
    return ckpt


def check_probabilities(probs: np.ndarray, seg: np.ndarray, softmax: bool, n_channels: int = 3):
    assert probs.shape == (n_channels,) + seg.shape
    assert np.all(np.isfinite(probs)) and probs.min() >= 0 and probs.max() <= 1 + 1e-3
    if softmax:
        np.testing.assert_allclose(probs.astype(np.float64).sum(0), 1.0, atol=2e-3)
        np.testing.assert_array_equal(probs.argmax(0), seg)


# ------------------------------------------------------------------------------------------------------------
# labels, 3D
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainer,job", [("nnUNetTrainer_CEonly", "CEonly"), ("nnUNetTrainer_DSCpp", "DSCpp")])
def test_train_labels_3d(runs, trainer, job):
    runs.job(job)
    check_training(runs, LABELS3, trainer)
    log = "".join(p.read_text() for p in runs.fold(LABELS3, trainer).glob("training_log_*.txt"))
    assert "nnunet-losses short run" in log and "num_iterations_per_epoch=" in log
    assert "nnunet-losses: loss" in log


def test_val_reruns_validation(runs):
    """``--val`` after training: validation again from checkpoint_final (here with --npz, not used in training)."""
    runs.job("SoftDice")
    job = runs.job("SoftDice_val")
    check_training(runs, LABELS3, "nnUNetTrainer_SoftDice")
    for case in runs.val_keys(LABELS3):
        assert (runs.fold(LABELS3, "nnUNetTrainer_SoftDice") / "validation" / f"{case}.npz").is_file()
    assert "Mean Validation Dice" in job.output(tail=0) and "Epoch 0" not in job.output(tail=0)


def test_baseline_3d_and_continue_training(runs):
    """The paper's LR model in 3D (one 1x1x1 convolution, Adam lr 1, no deep supervision), then ``--c``: the
    finished run continues from checkpoint_final for one more epoch and keeps its history."""
    runs.job("LR_CE")
    job = runs.job("LR_CE_continue")
    ckpt = check_training(runs, LABELS3, "nnUNetTrainer_LR_CE", n_epochs=EPOCHS + 1)
    assert ckpt["current_epoch"] == EPOCHS + 1
    assert f"Epoch {EPOCHS}" in job.output(tail=0) and "Epoch 0" not in job.output(tail=0)
    assert set(ckpt["network_weights"]) == {"decoder.classifier.weight", "decoder.classifier.bias"}
    assert ckpt["network_weights"]["decoder.classifier.weight"].shape == (3, 1, 1, 1, 1)
    group = ckpt["optimizer_state"]["param_groups"][0]
    assert "betas" in group and group["lr"] == pytest.approx(1.0)  # Adam, the paper's lr for LR


def test_finetune_from_ce(runs):
    """Bertels et al. 2019's protocol: CE run -> -pretrained_weights -> fine-tune with soft Dice, Adam lr 1e-4."""
    job = runs.job("finetune")
    assert "Loading pretrained weights" in job.output(tail=0)
    # 40 Adam steps at lr 1e-4 do not move soft Dice reliably; what matters is where the weights come from
    ckpt = check_training(runs, LABELS3, "nnUNetTrainer_SoftDice_finetune", loss_down=False)
    group = ckpt["optimizer_state"]["param_groups"][0]
    assert "betas" in group and group["lr"] == pytest.approx(1e-4) and group["weight_decay"] == 0
    # every weight but nnU-Net's seg_layers (re-initialised by nnU-Net) continued from the CE run, in small steps
    ce = load_checkpoint(runs.fold(LABELS3, "nnUNetTrainer_CEonly"))["network_weights"]
    ft = ckpt["network_weights"]
    steps = EPOCHS * ITERATIONS
    for k, w in ce.items():
        if ".seg_layers." not in k:
            assert (ft[k] - w).abs().max() <= 3 * steps * 1e-4, k
    assert any((ft[k] - w).abs().max() > 0.05 for k, w in ce.items() if ".seg_layers." in k)


def test_predict_softmax(runs):
    runs.job("predict_CEonly")
    out = runs.ws.root / "pred_ce"
    for case in ("case_000", "case_001"):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        assert seg.shape == (32, 32, 32)
        check_probabilities(np.load(out / f"{case}.npz")["probabilities"], seg, softmax=True)


def test_find_best_configuration(runs):
    runs.job("find_best")
    folder = runs.ws.results / runs.dataset_name(LABELS3)
    instructions = (folder / "inference_instructions.txt").read_text()
    assert "nnUNetTrainer_CEonly" in instructions


# ------------------------------------------------------------------------------------------------------------
# ignore label, 2D; regions, 3D
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainer,job", [("nnUNetTrainer_Lovasz", "Lovasz_ignore"),
                                         ("nnUNetTrainer_UNet_SoftDice", "UNet_SoftDice_ignore")])
def test_train_ignore_label_2d(runs, trainer, job):
    runs.job(job)
    ckpt = check_training(runs, IGNORE2, trainer, n_channels=2)
    for case in runs.val_keys(IGNORE2):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(runs.fold(IGNORE2, trainer) / "validation" / f"{case}.nii.gz")))
        assert seg.shape == (1, 48, 48) and set(np.unique(seg)) <= {0, 1}  # the ignore label is never predicted
    if "_UNet_" in trainer:
        assert any(k.startswith("encoder.stages.2.") for k in ckpt["network_weights"])
        assert ckpt["network_weights"]["decoder.classifier.weight"].shape == (2, 10, 1, 1)  # 2D, 2 classes


def test_predict_baseline_2d(runs, monkeypatch, tmp_path):
    """nnUNetv2_predict's code path (trainer lookup by the checkpoint's name, build_network_architecture,
    sliding window with mirroring, export), without its worker processes."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_losses.trainers import trainer_path
    runs.job("UNet_SoftDice_ignore")
    monkeypatch.setenv("nnUNet_extTrainer", trainer_path())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(
            str(runs.model_folder(IGNORE2, "nnUNetTrainer_UNet_SoftDice")), use_folds=(0,))
        did = runs.datasets[IGNORE2][0]
        predictor.predict_from_files_sequential(str(runs.ws.root / f"predict_in_{did}"), str(tmp_path),
                                                save_probabilities=True)
    finally:
        torch.set_num_threads(threads)
    for case in ("case_000", "case_001"):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{case}.nii.gz")))
        assert seg.shape == (1, 48, 48)
        check_probabilities(np.load(tmp_path / f"{case}.npz")["probabilities"], seg, softmax=True, n_channels=2)


def test_train_regions_wce(runs):
    """Region-based (sigmoid) training with weighted CE: priors computed once, cached, logged."""
    runs.job("wCE_regions")
    trainer = "nnUNetTrainer_wCE"
    check_training(runs, REGIONS3, trainer, softmax=False, n_channels=2)  # 2 sigmoid regions
    for case in runs.val_keys(REGIONS3):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(runs.fold(REGIONS3, trainer) / "validation" / f"{case}.nii.gz")))
        assert set(np.unique(seg)) <= {0, 1, 2}
    cache = json.loads((runs.ws.preprocessed / runs.dataset_name(REGIONS3) / "nnunet_losses_class_priors.json")
                       .read_text())
    entry = cache["entries"][f"{PLANS}/3d_fullres/fold_0"]
    assert entry["classes"]["mode"] == "regions" and len(entry["priors"]) == 2
    assert entry["priors"][0] > entry["priors"][1] > 0  # "whole" contains "inner"
    log = "".join(p.read_text() for p in runs.fold(REGIONS3, trainer).glob("training_log_*.txt"))
    assert "weighted CE, class priors" in log and "background weights" in log


def test_train_regions_with_ignore_label_2d(runs, monkeypatch, tmp_path):
    """Regions *and* an ignore label: nnU-Net appends the ignore mask to the region targets as a last channel,
    which the loss must drop and use as its mask. Training, validation export, then our evaluation of the fold
    (ignored voxels excluded from every metric)."""
    from nnunet_losses.evaluation import evaluate
    runs.job("DSCpp_regions_ignore")
    trainer = "nnUNetTrainer_DSCpp"
    check_training(runs, REGIONS_IGNORE2, trainer, softmax=False, n_channels=2)  # 2 sigmoid regions, no ignore
    log = "".join(p.read_text() for p in runs.fold(REGIONS_IGNORE2, trainer).glob("training_log_*.txt"))
    assert "DSCppLoss(region_based=True, ignore_label=3," in log, log[-3000:]
    for k, v in (("nnUNet_raw", runs.ws.raw), ("nnUNet_preprocessed", runs.ws.preprocessed),
                 ("nnUNet_results", runs.ws.results)):
        monkeypatch.setenv(k, str(v))
    summary = evaluate([runs.fold(REGIONS_IGNORE2, trainer)], tmp_path / "eval", plots=False)
    assert len(summary["metric_per_case"]) == len(runs.val_keys(REGIONS_IGNORE2))
    for c in summary["metric_per_case"]:
        gt = runs.gt(REGIONS_IGNORE2, Path(c["reference_file"]).name.split(".")[0])
        assert c["n_ignored"] == int((gt == 3).sum()) > 0
        assert c["n_voxels"] == int((gt != 3).sum())
