"""The study without training: the study file, the run states read from an nnU-Net results layout, the training
command, the submitit executors (SLURM through a recording ``sbatch``; local workers per GPU through submitit's
LocalExecutor), the report document and label names."""
from __future__ import annotations

import json
import os
import pickle
import stat
import sys
from pathlib import Path

import pytest

from nnunet_losses.study import StudyError, load_study
from nnunet_losses.study.config import DEFAULT_FOLDS
from nnunet_losses.study.runs import record_path, run_status, study_status, write_record
from nnunet_losses.study.training import training_command, training_environment

DATASET = "Dataset950_Study"
TRAINERS = ["nnUNetTrainer_CEonly", "nnUNetTrainer_SoftDice"]


def _study_file(folder: Path, extra: str = "", **top) -> Path:
    lines = [f'dataset = 950', 'configuration = "3d_fullres"', f"trainers = {json.dumps(TRAINERS)}",
             'device = "cpu"', f'output = "{folder / "out"}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture
def layout(nnunet_dirs, tmp_path):
    """An nnU-Net dataset with splits_final.json (fold f validates cases c{2f}, c{2f+1}) and an empty results
    folder; returns (study, results trainer folder of the first trainer)."""
    (nnunet_dirs["raw"] / DATASET).mkdir()
    pre = nnunet_dirs["preprocessed"] / DATASET
    pre.mkdir()
    splits = [{"train": [], "val": [f"c{2 * f}", f"c{2 * f + 1}"]} for f in range(5)]
    (pre / "splits_final.json").write_text(json.dumps(splits))
    study = load_study(_study_file(tmp_path, folds=[0, 1]))
    return study, nnunet_dirs["results"] / DATASET / f"{TRAINERS[0]}__nnUNetPlans__3d_fullres"


def _finish(fold_folder: Path, cases, npz=True, summary=False) -> None:
    (fold_folder / "validation").mkdir(parents=True, exist_ok=True)
    (fold_folder / "checkpoint_final.pth").write_bytes(b"x")
    for c in cases:
        if npz:
            (fold_folder / "validation" / f"{c}.npz").write_bytes(b"x")
    if summary:
        (fold_folder / "validation" / "summary.json").write_text("{}")


# ---------------------------------------------------------------------------------------------------------------
# the study file
# ---------------------------------------------------------------------------------------------------------------
def test_study_file_defaults(tmp_path):
    study = load_study(_study_file(tmp_path))
    assert study.folds == [str(f) for f in DEFAULT_FOLDS]
    assert study.baseline == TRAINERS[0] and study.plans == "nnUNetPlans" and study.executor == "local"
    assert study.runs[:2] == [(TRAINERS[0], "0"), (TRAINERS[0], "1")] and len(study.runs) == 10
    assert study.folder == (tmp_path / "out").resolve()


def test_study_file_slurm_options(tmp_path):
    study = load_study(_study_file(tmp_path, extra='[executor]\nkind = "slurm"\n[executor.slurm]\npartition = "gpu"\n'
                                                    'mem_gb = 32\n[executor.slurm.sbatch]\naccount = "abc"\n'))
    assert study.executor == "slurm" and study.slurm.partition == "gpu" and study.slurm.mem_gb == 32
    assert study.slurm.sbatch == {"account": "abc"}


@pytest.mark.parametrize("top, extra, message", [
    ({"baseline": "nnUNetTrainer_X"}, "", "baseline 'nnUNetTrainer_X' is not one of the trainers"),
    ({"folds": []}, "", "folds must be a non-empty list"),
    ({"folds": [0, 0]}, "", "must be distinct fold numbers"),
    ({"epochs": 3}, "", "unknown key 'epochs' in the study file"),
    ({}, '[executor]\nkind = "pbs"\n', "executor kind 'pbs' is not one of"),
    ({}, '[executor]\ngpus = "0,1"\n', "executor gpus must be a list"),
    ({}, '[executor.slurm]\nqueue = "x"\n', "unknown key 'queue' in [executor.slurm]"),
    ({}, '[evaluation]\nn_boot = 0\n', "[evaluation] n_boot must be an integer >= 1, got 0"),
    ({}, '[evaluation]\nn_boot = 2.5\n', "[evaluation] n_boot must be an integer >= 1, got 2.5"),
    ({}, '[evaluation]\nalpha = 1.0\n', "[evaluation] alpha must be a number > 0.0 and < 1.0, got 1.0"),
    ({}, '[evaluation]\nnum_processes = "2"\n', "[evaluation] num_processes must be an integer >= 1"),
    ({}, '[evaluation]\nsurface_tolerance_mm = 0\n', "[evaluation] surface_tolerance_mm must be a number > 0.0"),
])
def test_study_file_errors(tmp_path, top, extra, message):
    with pytest.raises(StudyError, match=None) as e:
        load_study(_study_file(tmp_path, extra=extra, **top))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_study_file_evaluation_settings(tmp_path):
    study = load_study(_study_file(tmp_path, extra='[evaluation]\nsurface_tolerance_mm = 2\nn_boot = 500\n'))
    assert study.surface_tolerance_mm == 2.0 and study.n_boot == 500 and study.alpha == 0.05
    assert load_study(_study_file(tmp_path)).surface_tolerance_mm is None


def test_study_file_missing_and_invalid(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("dataset = \n")
    with pytest.raises(StudyError, match="not valid TOML"):
        load_study(bad)
    bad.write_text('dataset = 1\nconfiguration = "2d"\n')
    with pytest.raises(StudyError, match="missing 'trainers'"):
        load_study(bad)


# ---------------------------------------------------------------------------------------------------------------
# run states
# ---------------------------------------------------------------------------------------------------------------
def test_run_states(layout):
    study, folder = layout
    t = TRAINERS[0]
    assert run_status(study, t, "0", ["c0", "c1"]).state == "missing"
    (folder / "fold_0").mkdir(parents=True)
    assert run_status(study, t, "0", ["c0", "c1"]).state == "interrupted"
    _finish(folder / "fold_0", ["c0"])  # one validation npz short
    assert run_status(study, t, "0", ["c0", "c1"]).state == "interrupted"
    _finish(folder / "fold_0", ["c0", "c1"])
    assert run_status(study, t, "0", ["c0", "c1"]).state == "done"
    # trained elsewhere without --npz: not ours to redo (it would rewrite the validation folder)
    _finish(folder / "fold_1", ["c2", "c3"], npz=False, summary=True)
    s = run_status(study, t, "1", ["c2", "c3"])
    assert s.state == "no_npz" and "--val --npz" in s.detail


def test_run_states_from_records(layout):
    study, folder = layout
    t = TRAINERS[0]
    write_record(study, t, "0", {"state": "running", "pid": os.getpid(), "host": os.uname().nodename, "log": "x"})
    assert run_status(study, t, "0").state == "running"
    write_record(study, t, "0", {"state": "running", "pid": 2 ** 22 + 12345, "host": os.uname().nodename})
    assert run_status(study, t, "0").state == "interrupted"  # killed: the record outlived its process
    write_record(study, t, "0", {"state": "failed", "returncode": 3, "log": "L"})
    s = run_status(study, t, "0")
    assert s.state == "failed" and "exit code 3" in s.detail and s.needs_training
    write_record(study, t, "0", {"state": "running", "pid": 1, "host": "a-cluster-node", "slurm_job": "slurm job 7_1"})
    assert run_status(study, t, "0").state == "running"
    assert record_path(study, t, "0").is_relative_to(study.folder)
    statuses = study_status(study)
    assert set(statuses) == set(study.runs)


def test_training_command_continues_existing_folders(layout):
    study, folder = layout
    s = run_status(study, TRAINERS[0], "0")
    cmd = training_command(study, s)
    assert cmd[1:] == ["950", "3d_fullres", "0", "-tr", TRAINERS[0], "-p", "nnUNetPlans", "--npz", "-device", "cpu"]
    assert Path(cmd[0]).name == "nnUNetv2_train"
    (folder / "fold_0").mkdir(parents=True)
    assert training_command(study, run_status(study, TRAINERS[0], "0"))[-1] == "--c"


def test_training_environment_keeps_user_trainer_folders(layout, monkeypatch):
    from nnunet_losses.trainers import trainer_path
    study, _ = layout
    monkeypatch.setenv("nnUNet_extTrainer", "/my/trainers")
    study.env = {"NNUNET_LOSSES_EPOCHS": "3"}
    env = training_environment(study, gpu=1)
    assert env["nnUNet_extTrainer"].split(os.pathsep) == ["/my/trainers", str(trainer_path())]
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["NNUNET_LOSSES_EPOCHS"] == "3"


def test_study_folder_inside_nnunet_results_is_refused(layout, nnunet_dirs):
    from nnunet_losses.study.pipeline import prepare_folder
    study, _ = layout
    study.folder = nnunet_dirs["results"] / "my_study"
    with pytest.raises(StudyError, match="must not be inside"):
        prepare_folder(study)
    assert not study.folder.exists()
