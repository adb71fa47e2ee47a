"""The Done-when study, for real: 2 of our trainers x 2 folds of the tiny synthetic 3D labels dataset, trained by
nnU-Net's own ``nnUNetv2_train --npz`` through ``nnunet-losses study run``; the study is killed (SIGKILL to its
process group) while nnU-Net trains the second run and resumed; the finished run is not trained again, nothing
in nnUNet_results is lost, and the report holds the numbers ``evaluate``/``compare`` give for the same folders."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, run_cli

pytestmark = pytest.mark.slow

TRAINERS = ["nnUNetTrainer_CEonly", "nnUNetTrainer_SoftDice"]
N_BOOT = 500


def _study_toml(folder: Path, dataset_id: int, config: str, plans: str) -> Path:
    path = folder / "tiny_study.toml"
    path.write_text(f"""
dataset = {dataset_id}
configuration = "{config}"
plans = "{plans}"
trainers = {json.dumps(TRAINERS)}
folds = [0, 1]
device = "cpu"
output = "{folder / 'study'}"

[env]
NNUNET_LOSSES_EPOCHS = "1"
NNUNET_LOSSES_ITERATIONS = "2"
NNUNET_LOSSES_VAL_ITERATIONS = "1"
nnUNet_n_proc_DA = "0"
nnUNet_def_n_proc = "1"
OMP_NUM_THREADS = "1"

[evaluation]
n_boot = {N_BOOT}
""")
    return path


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _wait_for_second_run(study_folder: Path, proc: subprocess.Popen, results: Path, timeout: float = 900) -> None:
    """Until the study records the second run (CE, fold 1) as running and nnU-Net has created its fold folder."""
    record = study_folder / "runs" / TRAINERS[0] / "fold_1.json"
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the study ended before it could be killed"
        if record.is_file() and json.loads(record.read_text())["state"] == "running" and \
                any(results.rglob(f"{TRAINERS[0]}__*/fold_1/training_log_*.txt")):
            return
        time.sleep(0.5)
    raise AssertionError("the second training did not start")


@pytest.fixture(scope="module")
def study_run(nnunet_workspace, tmp_path_factory):
    ws = nnunet_workspace
    did, cfg = ws.dataset("labels", 3)
    plans = ws.small_plans(did)
    folder = tmp_path_factory.mktemp("study")
    toml = _study_toml(folder, did, cfg, plans)
    env = ws.env()
    log = open(folder / "first_run.log", "w")
    proc = subprocess.Popen([str(BIN / "nnunet-losses"), "study", "run", str(toml), "--no_progress"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_second_run(folder / "study", proc, ws.results)
        time.sleep(3)  # inside nnU-Net's training of the second run
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    status_killed = run_cli(["nnunet-losses", "study", "status", toml], env=env).stdout
    before = _files(ws.results)
    resumed = run_cli(["nnunet-losses", "study", "run", toml, "--no_progress"], env=env, timeout=1800)
    return {"ws": ws, "toml": toml, "folder": folder / "study", "env": env, "status_killed": status_killed,
            "results_before_resume": before, "resumed": resumed}


def _state(status_text: str, trainer: str, fold: str) -> str:
    for line in status_text.splitlines():
        parts = line.split()
        if parts[:2] == [trainer, fold]:
            return parts[2]
    raise AssertionError(f"no status line for {trainer} fold {fold}:\n{status_text}")


def test_killed_study_resumes_without_retraining(study_run):
    killed = study_run["status_killed"]
    assert _state(killed, TRAINERS[0], "0") == "done"
    assert _state(killed, TRAINERS[0], "1") == "interrupted"
    assert _state(killed, TRAINERS[1], "0") == "missing"
    ws = study_run["ws"]
    after = _files(ws.results)
    before = study_run["results_before_resume"]
    assert set(before) <= set(after), "a file in nnUNet_results disappeared"
    done_first = [f for f in before if f"{TRAINERS[0]}__" in f and "/fold_0/" in f]
    assert done_first and all(after[f] == before[f] for f in done_first), "the finished run was trained again"
    # the interrupted run was continued with nnU-Net's --c (it had no checkpoint yet, so nnU-Net started it anew)
    log = (study_run["folder"] / "logs" / f"{TRAINERS[0]}__fold_1.log").read_text()
    attempts = [line for line in log.splitlines() if line.startswith("===== ")]
    assert len(attempts) == 2 and not attempts[0].endswith("--c") and attempts[1].endswith("--c")
    status = run_cli(["nnunet-losses", "study", "status", study_run["toml"]], env=study_run["env"]).stdout
    assert status.strip().splitlines()[-1] == "4 done"


def test_report_holds_evaluate_and_compare_numbers(study_run, tmp_path, monkeypatch):
    from nnunet_losses.evaluation import compare, evaluate
    from nnunet_losses.study.table import cell
    folder = study_run["folder"]
    ws = study_run["ws"]
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, study_run["env"][k])
    report = json.loads((folder / "report.json").read_text())
    markdown = (folder / "report.md").read_text()
    assert report["folds"] == ["0", "1"]
    trainer_folders = {t: next(ws.results.glob(f"Dataset901_*/{t}__nnUNetPlansSmall__3d_fullres")) for t in TRAINERS}
    summaries = {t: evaluate(trainer_folders[t], tmp_path / t, folds=["0", "1"], name=t) for t in TRAINERS}
    comparison = compare([tmp_path / t for t in TRAINERS], names=TRAINERS, n_boot=N_BOOT)
    rows = {r["label"]: r for r in report["table"]["rows"]}
    expected = {
        "mean Dice (over classes)": lambda s: s["foreground_mean"]["Dice"],
        "Dice outer": lambda s: s["mean"]["1"]["Dice"],
        "Dice inner": lambda s: s["mean"]["2"]["Dice"],
        "hard dV inner (ml)": lambda s: s["mean"]["2"]["dV"],
        "hard dV outer (% of reference)": lambda s: 100 * s["mean"]["1"]["rel_dV"],
        "soft dV outer (ml)": lambda s: s["mean"]["1"]["dV_soft"],
        "mean |soft dV| inner (ml)": lambda s: s["mean"]["2"]["abs_dV_soft"],
        "NLL (case mean)": lambda s: s["calibration"]["per_case"]["NLL"]["mean"],
        "Brier (case mean)": lambda s: s["calibration"]["per_case"]["Brier"]["mean"],
        "top-label ECE, 15 bins (case mean)": lambda s: s["calibration"]["per_case"]["top_label_ECE"]["mean"],
        "top-label ECE, 15 bins (all voxels pooled)": lambda s: s["calibration"]["pooled"]["top_label_ECE"],
        "one-vs-rest ECE inner, 15 bins (case mean)": lambda s: s["mean"]["2"]["one_vs_rest_ECE"],
        "classwise ECE, 15 bins (all voxels pooled)": lambda s: s["calibration"]["pooled"]["classwise_ECE"],
        "best threshold inner (max mean Dice, in-sample: optimistic)": lambda s: s["threshold_sweep"]["per_class"]["2"]["best_threshold"],
    }
    for label, get in expected.items():
        for t in TRAINERS:
            assert rows[label]["values"][t] == pytest.approx(get(summaries[t]), rel=1e-12, abs=1e-15), (label, t)
            md_label = label.replace("|", "\\|")  # report.md escapes the table's separator
            assert cell(rows[label], t) in markdown.split(f"| {md_label} |")[1].split("\n")[0], (label, t)
    # significance against the baseline: compare's paired rows (baseline = A, trainer = B)
    paired = {(r["metric"], r["class"]): r for r in comparison["paired"]
              if r["model_a"] == TRAINERS[0] and r["model_b"] == TRAINERS[1]}
    for label, (metric, key) in {"Dice outer": ("Dice", "1"), "hard dV inner (ml)": ("dV", "2"),
                                 "NLL (case mean)": ("NLL", "all"),
                                 "top-label ECE, 15 bins (case mean)": ("top_label_ECE", "all")}.items():
        sig = rows[label]["significance"][TRAINERS[1]]
        for field in ("mean_diff", "ci_low", "ci_high", "p_bootstrap_holm", "p_wilcoxon_holm"):
            assert sig[field] == pytest.approx(paired[(metric, key)][field], rel=1e-12), (label, field)
    # label names from dataset.json, every figure embedded
    html = (folder / "report.html").read_text()
    assert "Dice outer" in html and html.count('src="data:image/png;base64,') == 5 and 'src="figures' not in html
    first = (folder / "report.json").read_text()
    run_cli(["nnunet-losses", "study", "report", study_run["toml"]], env=study_run["env"])
    assert (folder / "report.json").read_text() == first, "report changed on a re-run"


def test_ensemble_and_postprocessed_folders_in_the_report(study_run, tmp_path):
    """nnU-Net's find_best_configuration ensembles the two trainers' cross-validation and determines
    post-processing; both label-map folders, named in the study file, appear in the report with nnU-Net's own
    Dice and n_pred/n_ref (its summary.json, computed by compute_metrics_on_folder) and with dV from those counts."""
    ws, env = study_run["ws"], study_run["env"]
    run_cli(["nnUNetv2_find_best_configuration", "901", "-c", "3d_fullres", "-tr", *TRAINERS, "-p",
             "nnUNetPlansSmall", "-f", "0", "1", "-np", "1"], env=env, timeout=1800)
    ensemble = next(ws.results.glob("Dataset901_*/ensembles/ensemble___*"))
    # post-processing is determined for the best model or ensemble, whichever nnU-Net picked
    info = json.loads(next(ws.results.glob("Dataset901_*/inference_information.json")).read_text())
    postprocessed = Path(info["best_model_or_ensemble"]["postprocessing_file"]).parent / "postprocessed"
    folders = {"ensemble": ensemble, "best_postprocessed": postprocessed}
    toml = study_run["toml"].read_text().replace(
        "[evaluation]", "[evaluation]\nextra_folders = { " + ", ".join(f'{k} = "{v}"' for k, v in folders.items())
        + " }")
    toml = re.sub(r"(?m)^output = .*$", f'output = "{tmp_path / "study"}"', toml)
    path = tmp_path / "with_extras.toml"
    path.write_text(toml)
    run_cli(["nnunet-losses", "study", "report", path], env=env)
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    rows = {r["label"]: r for r in report["extras"]["rows"]}
    ml = None
    for name, folder in folders.items():
        nnunet = json.loads((folder / "summary.json").read_text())
        assert rows["mean Dice (over classes)"]["values"][name] == pytest.approx(nnunet["foreground_mean"]["Dice"])
        for key, label in (("1", "outer"), ("2", "inner")):
            assert rows[f"Dice {label}"]["values"][name] == pytest.approx(nnunet["mean"][key]["Dice"])
            ours = json.loads((tmp_path / "study" / "evaluation" / f"extra_{name}" / "summary.json").read_text())
            ml = ours["metric_per_case"][0]["voxel_volume"]
            dv = [(c["metrics"][key]["n_pred"] - c["metrics"][key]["n_ref"]) * ml for c in nnunet["metric_per_case"]]
            assert rows[f"hard dV {label} (ml)"]["values"][name] == pytest.approx(sum(dv) / len(dv))
            assert "soft dV" not in " ".join(rows) and rows[f"HD95 {label} (mm)"]["values"][name] > 0
    assert "Post-processed and ensemble predictions" in (tmp_path / "study" / "report.md").read_text()
