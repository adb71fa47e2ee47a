"""Soft-target trainers through nnU-Net's own command lines on CPU, on a K = 3 rater phantom (2D): boundary label
smoothing, distillation from a teacher trained in the same module, multi-rater training on the rater mean; then
our evaluation against the phantom's probability map. Plus in-process steps that check that every rater gets the
image's augmentation and that the sampled-rater mode trains.

All runs are started once by the module fixture ``runs`` (two at a time); short runs through the
NNUNET_LOSSES_* variables and the narrow ``nnUNetPlansSmall`` plans (conftest)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import BIN, run_cli

pytestmark = pytest.mark.slow

DATASET_ID, CONFIG, PLANS, K = 906, "2d", "nnUNetPlansSmall", 3
TEACHER = "nnUNetTrainer_CEonly"
#: job name -> (trainer, extra environment); the second wave runs after the first (the student after its teacher)
WAVES = [{"teacher": (TEACHER, {}), "smoothing": ("nnUNetTrainer_BoundarySmoothing_DML", {})},
         {"distill": ("nnUNetTrainer_Distill_SoftDice", {"NNUNET_LOSSES_TEACHER": "{teacher_folder}"}),
          "raters": ("nnUNetTrainer_MultiRaterMean_DML", {})}]


@pytest.fixture(scope="module")
def phantom(nnunet_workspace):
    """The K = 3 rater phantom, planned (2D) with the narrow plans: (workspace, raw dataset folder)."""
    from nnunet_losses.research.phantom import write_phantom_dataset
    ws = nnunet_workspace
    raw = next(ws.raw.glob(f"Dataset{DATASET_ID:03d}_*"), None)
    if raw is None:
        raw = write_phantom_dataset(ws.raw, DATASET_ID, name="RaterPhantom", dim=2, p=0.5, n_cases=10,
                                    shape=(48, 48), radius_range=(5, 8), n_raters=K, seed=11)
        env = ws.env()
        env.pop("nnUNet_n_proc_DA", None)  # 0 crashes nnU-Net's planner
        run_cli(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", CONFIG, "-npfp", "1", "-np", "1",
                 "--verify_dataset_integrity"], env=env)
    ws.small_plans(DATASET_ID)
    return ws, raw


def model_folder(ws, raw, trainer):
    return ws.results / raw.name / f"{trainer}__{PLANS}__{CONFIG}"


@pytest.fixture(scope="module")
def runs(phantom):
    from nnunet_losses.trainers import trainer_path
    ws, raw = phantom
    env = ws.env(nnUNet_extTrainer=trainer_path(), nnUNet_n_proc_DA=0, nnUNet_def_n_proc=1, OMP_NUM_THREADS=1,
                 MKL_NUM_THREADS=1, NNUNET_LOSSES_EPOCHS=2, NNUNET_LOSSES_ITERATIONS=10,
                 NNUNET_LOSSES_VAL_ITERATIONS=1)
    fill = {"teacher_folder": str(model_folder(ws, raw, TEACHER))}
    logs = {}
    for wave in WAVES:
        procs = {}
        for name, (trainer, extra) in wave.items():
            logs[name] = ws.root / f"soft_{name}.log"
            fh = open(logs[name], "w")
            cmd = [str(BIN / "nnUNetv2_train"), str(DATASET_ID), CONFIG, "0", "-tr", trainer, "-p", PLANS,
                   "-device", "cpu", "--npz"]
            procs[name] = (subprocess.Popen(cmd, env={**env, **{k: v.format(**fill) for k, v in extra.items()}},
                                            stdout=fh, stderr=subprocess.STDOUT), fh)
        for name, (proc, fh) in procs.items():
            proc.wait(timeout=1200)
            fh.close()
            assert proc.returncode == 0, f"{name} failed:\n{logs[name].read_text()[-6000:]}"
    return ws, raw, logs


def training_log(folder) -> str:
    return "".join(p.read_text() for p in (folder / "fold_0").glob("training_log_*.txt"))


def check_run(ws, raw, trainer) -> str:
    folder = model_folder(ws, raw, trainer)
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == trainer
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert np.isfinite(json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())
                       ["foreground_mean"]["Dice"])
    return training_log(folder)


def test_boundary_smoothing(runs):
    ws, raw, _ = runs
    log = check_run(ws, raw, "nnUNetTrainer_BoundarySmoothing_DML")
    assert "nnunet-losses: loss 'dml'" in log
    assert "training target: boundary label smoothing (epsilon 0.5 in a 3-voxel band" in log


def test_distillation_from_a_teacher_of_the_same_test(runs):
    ws, raw, logs = runs
    log = check_run(ws, raw, "nnUNetTrainer_Distill_SoftDice")
    assert "nnunet-losses: loss 'softdice'" in log and "training target: knowledge distillation" in log
    assert str(model_folder(ws, raw, TEACHER)) in log


def test_multirater_mean_and_soft_reference_evaluation(runs):
    from nnunet_losses.evaluation.soft_reference import evaluate_soft_reference
    ws, raw, _ = runs
    trainer = "nnUNetTrainer_MultiRaterMean_DML"
    log = check_run(ws, raw, trainer)
    assert "training target: multi-rater soft target" in log
    cache = ws.preprocessed / raw.name / "nnunet_losses_raters" / "nnUNetPlans_2d"
    assert len(list(cache.glob("*.npy"))) == 10 and np.load(next(cache.glob("*.npy"))).shape[0] == K
    val = model_folder(ws, raw, trainer) / "fold_0" / "validation"
    res = evaluate_soft_reference(val, raw)
    meta = json.loads((raw / "phantom.json").read_text())
    assert res["reference"] == "probabilities" and len(res["per_case"]) == 2
    for case in res["per_case"]:
        cls = case["classes"]["1"]
        assert cls["expected_reference_volume"] == pytest.approx(meta["cases"][case["case"]]["expected_volume_ml"])
        assert np.isfinite([cls["dV_soft"], cls["dV_hard"], cls["calibration_error"], case["brier"]]).all()
    assert evaluate_soft_reference(val, raw, kind="raters")["reference"] == "raters"


# ------------------------------------------------------------------------------------------------ in-process
@pytest.fixture
def in_process(phantom, monkeypatch):
    ws, raw = phantom
    for k, v in ws.env(nnUNet_n_proc_DA=0, nnUNet_def_n_proc=1).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ws, raw
    torch.set_num_threads(threads)


def make(ws, raw, cls):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    folder = ws.preprocessed / raw.name
    plans = load_json(str(folder / f"{PLANS}.json"))
    plans["continue_training"] = False
    return cls(plans, CONFIG, 1, load_json(str(folder / "dataset.json")), device=torch.device("cpu"))


@pytest.mark.parametrize("name", ["nnUNetTrainer_MultiRaterSample_CEonly", "nnUNetTrainer_MultiRaterMean_SoftDice"])
def test_raters_share_the_augmentation(in_process, name):
    """Rater 0 is labelsTr, so after nnU-Net's augmentation channel 1 (rater 0) must equal channel 0 voxel for
    voxel at every deep-supervision scale; then one real training step."""
    import nnunet_losses.trainers as T
    ws, raw = in_process
    trainer = make(ws, raw, T.TRAINERS[name])
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    for _ in range(3):
        batch = next(trainer.dataloader_train)
        assert batch["target"][0].shape[1] == 1 + K
        for t in batch["target"]:
            torch.testing.assert_close(t[:, 1], t[:, 0], rtol=0, atol=0)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    assert np.isfinite(trainer.train_step(batch)["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))
    assert np.isfinite(trainer.validation_step(next(trainer.dataloader_val))["loss"])


def test_distillation_needs_a_teacher(in_process, monkeypatch):
    import nnunet_losses.trainers as T
    ws, raw = in_process
    monkeypatch.delenv("NNUNET_LOSSES_TEACHER", raising=False)
    trainer = make(ws, raw, T.TRAINERS["nnUNetTrainer_Distill_CEonly"])
    trainer.initialize()  # nnUNetv2_train --val needs no teacher; training does (on_train_start loads it)
    with pytest.raises(ValueError, match="needs a teacher: set NNUNET_LOSSES_TEACHER"):
        trainer.load_teacher()
    monkeypatch.setenv("NNUNET_LOSSES_TEACHER", str(ws.root / "no_such_model"))
    with pytest.raises(FileNotFoundError, match="teacher checkpoint"):
        trainer.load_teacher()


def test_boundary_smoothing_step_with_ignore_label(nnunet_workspace, monkeypatch):
    """The synthetic ignore-label dataset (2D): the smoothed target carries the loss core's ignore channel, and a
    real training step on nnU-Net's batch runs."""
    import nnunet_losses.trainers as T
    from batchgenerators.utilities.file_and_folder_operations import load_json
    ws = nnunet_workspace
    did, cfg = ws.dataset("ignore", 2)
    plans_name = ws.small_plans(did)
    for k, v in ws.env(nnUNet_n_proc_DA=0, nnUNet_def_n_proc=1).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    folder = next(ws.preprocessed.glob(f"Dataset{did:03d}_*"))
    plans = load_json(str(folder / f"{plans_name}.json"))
    plans["continue_training"] = False
    trainer = T.TRAINERS["nnUNetTrainer_BoundarySmoothing_DML"](plans, cfg, 1, load_json(str(folder / "dataset.json")),
                                                                device=torch.device("cpu"))
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    # nnU-Net's random crops can miss every ignored voxel (it happened in CI): take the first batch that has some
    for _ in range(50):
        batch = next(trainer.dataloader_train)
        ignored = (batch["target"][0] == trainer.label_manager.ignore_label).float()
        if ignored.sum() > 0:
            break
    soft = trainer.training_target(batch["data"], batch["target"])
    assert ignored.sum() > 0 and soft[0].shape[1] == trainer.label_manager.num_segmentation_heads + 1
    torch.testing.assert_close(soft[0][:, -1:], ignored)
    assert np.isfinite(trainer.train_step(batch)["loss"])
