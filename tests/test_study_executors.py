"""The study's executors through submitit, without a cluster or GPUs: the SLURM path with a recording ``sbatch``
on PATH (the job array of trainer x fold, its options, the report job's dependency, the pickled calls), the local
path with one submitit LocalExecutor worker per GPU (``CUDA_VISIBLE_DEVICES``) running a stand-in training
command that writes what nnU-Net would (this checks the executor, the real trainings are in
test_study_nnunet.py)."""
from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from test_study import DATASET, TRAINERS, _study_file  # noqa: F401 (layout fixture below)
from test_study import layout  # noqa: F401

from nnunet_losses.study import load_study
from nnunet_losses.study.runs import read_record, study_status


def _executable(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` that keeps a copy of every submission file and answers with job ids 4242, 4243, ...; ``srun``
    only has to exist (submitit looks for it)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch_calls"
    bin_dir.mkdir()
    record.mkdir()
    _executable(bin_dir / "sbatch", f"""
        #!/bin/bash
        n=$(ls {record} | wc -l)
        cp "${{@: -1}}" {record}/submission_$n.sh
        echo "Submitted batch job $((4242 + n))"
        """)
    _executable(bin_dir / "srun", "#!/bin/bash\nexit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_slurm_job_array_and_dependent_report(layout, fake_slurm, tmp_path):
    from submitit.core.utils import DelayedSubmission
    from nnunet_losses.study import finish_study, run_study
    from nnunet_losses.study.training import train_run
    study = load_study(_study_file(tmp_path, folds=[0, 1], extra=textwrap.dedent("""
        [executor]
        kind = "slurm"
        [executor.slurm]
        partition = "gpu-a100"
        time_min = 720
        gpus_per_node = 1
        cpus_per_task = 6
        mem_gb = 48
        setup = ["module load cuda/12.1"]
        [executor.slurm.sbatch]
        account = "lossproject"
        """)))
    result = run_study(study, progress=False)["submitted"]
    assert result == {"array_job": "4242", "report_job": "4243", "n_trainings": 4}
    array, report = (fake_slurm / "submission_0.sh").read_text(), (fake_slurm / "submission_1.sh").read_text()
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --partition=gpu-a100", "#SBATCH --time=720",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=6", "#SBATCH --mem=48GB",
                 "#SBATCH --account=lossproject", "#SBATCH --job-name=nnunet-losses-train", "module load cuda/12.1"):
        assert line in array.splitlines(), line
    assert "#SBATCH --dependency=afterany:4242" in report.splitlines()
    assert "#SBATCH --job-name=nnunet-losses-report" in report and "--array" not in report
    assert "--gpus-per-node" not in report  # the report job needs no GPU
    # the array's tasks are the four trainings, in order; the dependent job is the report
    calls = []
    for i in range(4):
        pkl = next((study.folder / "submitit" / "slurm" / f"4242_{i}").glob("*_submitted.pkl"))
        d = DelayedSubmission.load(pkl)
        calls.append((d.function, d.args[1:]))
    assert calls == [(train_run, (t, f)) for t in TRAINERS for f in ("0", "1")]
    d = DelayedSubmission.load(next((study.folder / "submitit" / "slurm" / "4243").glob("*_submitted.pkl")))
    assert d.function is finish_study and d.args[0].folder == study.folder


def test_slurm_submits_only_what_is_missing(layout, fake_slurm, tmp_path):
    from nnunet_losses.study import run_study
    from test_study import _finish
    study, folder = layout
    study.executor = "slurm"
    _finish(folder / "fold_0", ["c0", "c1"])
    assert run_study(study, progress=False)["submitted"]["n_trainings"] == 3
    assert "#SBATCH --array=0-2%3" in (fake_slurm / "submission_0.sh").read_text()


@pytest.mark.slow
def test_local_workers_one_per_gpu(layout, tmp_path):
    """Two GPUs -> two submitit workers; each run trained once, on its worker's GPU only."""
    study, _ = layout
    calls = tmp_path / "calls.jsonl"
    fake = _executable(tmp_path / "fake_nnUNetv2_train", f"""
        #!{sys.executable}
        # stands in for nnUNetv2_train DATASET CONFIG FOLD -tr T -p P --npz ...: writes what a finished run leaves
        import json, os, sys
        from pathlib import Path
        fold, trainer = sys.argv[3], sys.argv[5]
        out = Path(os.environ["nnUNet_results"]) / "{DATASET}" / f"{{trainer}}__nnUNetPlans__3d_fullres" / f"fold_{{fold}}"
        (out / "validation").mkdir(parents=True)
        (out / "checkpoint_final.pth").write_bytes(b"x")
        for c in (f"c{{2 * int(fold)}}", f"c{{2 * int(fold) + 1}}"):
            (out / "validation" / f"{{c}}.npz").write_bytes(b"x")
        with open("{calls}", "a") as f:
            f.write(json.dumps({{"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")
        """)
    study.train_command = str(fake)
    study.gpus = [0, 1]
    from nnunet_losses.study.executors import run_on_local_gpus
    steps = []
    states = run_on_local_gpus(study, study.runs, steps.append, poll_s=0.2)
    assert states == ["done"] * 4 and len(steps) == 4
    rows = [json.loads(line) for line in calls.read_text().splitlines()]
    assert sorted((r["argv"][4], r["argv"][2]) for r in rows) == sorted(study.runs)
    by_gpu = {g: sorted((r["argv"][4], r["argv"][2]) for r in rows if r["gpu"] == g) for g in ("0", "1")}
    assert by_gpu == {"0": sorted(study.runs[0::2]), "1": sorted(study.runs[1::2])}
    assert all(s.state == "done" for s in study_status(study).values())
    assert {read_record(study, t, f)["cuda_visible_devices"] for t, f in study.runs} == {"0", "1"}
