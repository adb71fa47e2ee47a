"""Evaluation on real nnU-Net folders: tiny CPU trainings (nnU-Net's default trainer, 1 epoch of a few
iterations, see tests/evaluation_ext) of the synthetic labels-3D, regions-3D and ignore-2D datasets, then
``evaluate`` / ``compare`` / ``threshold`` against nnU-Net's own summary.json and exported segmentations."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, run_cli

pytestmark = pytest.mark.slow

EXT = Path(__file__).resolve().parent / "evaluation_ext"
TINY = "nnUNetTrainer_EvalTiny"
#: a second "model" for the paired comparison without a third training: TINY's fold-0 probabilities sharpened
#: (p^3, renormalised) in a trainer folder of its own -- same cases, different calibration and volumes
TINY_B = "nnUNetTrainer_EvalTinySharp"
#: (kind, dim) -> trainings (trainer, fold); fold 1 exercises the "all folds" path
RUNS = {("labels", 3): [(TINY, 0), (TINY, 1)],
        ("regions", 3): [(TINY, 0)],
        ("ignore", 2): [(TINY, 0)]}


def _sharpened_copy(src: Path, dst: Path) -> None:
    (dst / "fold_0" / "validation").mkdir(parents=True)
    for f in ("dataset.json", "plans.json"):
        shutil.copy(src / f, dst / f)
    for pkl in (src / "fold_0" / "validation").glob("*.pkl"):
        shutil.copy(pkl, dst / "fold_0" / "validation" / pkl.name)
        p = np.load(pkl.with_suffix(".npz"))["probabilities"].astype(np.float64) ** 3
        p /= p.sum(0)
        np.savez_compressed(dst / "fold_0" / "validation" / pkl.with_suffix(".npz").name,
                            probabilities=p.astype(np.float32))


class Trained:
    def __init__(self, ws, datasets):
        self.ws = ws
        self.datasets = datasets  # (kind, dim) -> (id, configuration, dataset name)

    def folder(self, key, trainer=TINY) -> Path:
        did, cfg, name = self.datasets[key]
        return self.ws.results / name / f"{trainer}__nnUNetPlans__{cfg}"

    def gt(self, key) -> Path:
        return self.ws.preprocessed / self.datasets[key][2] / "gt_segmentations"


@pytest.fixture(scope="session")
def trained(nnunet_workspace):
    """Plan the three datasets and train all runs, two at a time, overlapping with the next planning."""
    ws = nnunet_workspace
    env = ws.env(nnUNet_extTrainer=EXT, nnUNet_n_proc_DA=0, nnUNet_def_n_proc=1, OMP_NUM_THREADS=1)
    running, datasets = [], {}

    def reap(limit):
        while True:
            for proc, cmd, log in list(running):
                if proc.poll() is not None:
                    running.remove((proc, cmd, log))
                    if proc.returncode != 0:
                        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{log.read_text()[-6000:]}")
            if len(running) <= limit:
                return
            time.sleep(0.2)

    for key, runs in RUNS.items():
        did, cfg = ws.dataset(*key)
        name = next(ws.raw.glob(f"Dataset{did:03d}_*")).name
        datasets[key] = (did, cfg, name)
        for trainer, fold in runs:
            out = ws.results / name / f"{trainer}__nnUNetPlans__{cfg}" / f"fold_{fold}" / "validation" / "summary.json"
            if out.is_file():
                continue
            reap(1)
            cmd = [str(BIN / "nnUNetv2_train"), str(did), cfg, str(fold), "-tr", trainer, "-device", "cpu", "--npz"]
            log = ws.root / f"train_{did}_{trainer}_{fold}.log"
            proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
            running.append((proc, cmd, log))
    reap(0)
    did, cfg, name = datasets[("labels", 3)]
    sharp = ws.results / name / f"{TINY_B}__nnUNetPlans__{cfg}"
    if not sharp.exists():
        _sharpened_copy(ws.results / name / f"{TINY}__nnUNetPlans__{cfg}", sharp)
    return Trained(ws, datasets)


@pytest.fixture
def nnunet_env(trained, monkeypatch):
    """nnU-Net's folders in this process's environment (the API reads nnUNet_preprocessed like nnU-Net)."""
    ws = trained.ws
    for k, v in (("nnUNet_raw", ws.raw), ("nnUNet_preprocessed", ws.preprocessed), ("nnUNet_results", ws.results)):
        monkeypatch.setenv(k, str(v))
    return trained


def nnunet_summaries(folder: Path, folds):
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json
    out = {}
    for f in folds:
        s = load_summary_json(str(folder / f"fold_{f}" / "validation" / "summary.json"))
        for c in s["metric_per_case"]:
            out[Path(c["prediction_file"]).name.split(".")[0]] = (f, c["metrics"], s["mean"])
    return out


def assert_matches_nnunet(summary, folder, folds):
    """Our hard-map counts/Dice/IoU are nnU-Net's, case for case (nnU-Net computed them from its .nii.gz)."""
    ref = nnunet_summaries(folder, folds)
    assert sorted(c["case"] for c in summary["metric_per_case"]) == sorted(ref)
    from nnunetv2.evaluation.evaluate_predictions import key_to_label_or_region
    for c in summary["metric_per_case"]:
        fold, metrics, _ = ref[c["case"]]
        assert str(fold) == c["fold"]
        for k, ours in c["metrics"].items():
            theirs = metrics[key_to_label_or_region(k)]
            for m in ("TP", "FP", "FN", "TN", "n_pred", "n_ref"):
                assert ours[m] == theirs[m], (c["case"], k, m)
            for m in ("Dice", "IoU"):
                assert (math.isnan(ours[m]) and math.isnan(theirs[m])) or ours[m] == pytest.approx(theirs[m]), m


def test_labels_all_folds_match_nnunet_and_brute_force(nnunet_env, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from sklearn.metrics import brier_score_loss, log_loss
    from nnunet_losses.evaluation import evaluate
    key = ("labels", 3)
    folder = nnunet_env.folder(key)
    s = evaluate(folder, tmp_path / "ev", plots=False)
    assert s["source"]["folds"] == ["0", "1"] and s["n_cases"] == 4
    splits = json.loads((nnunet_env.ws.preprocessed / nnunet_env.datasets[key][2] / "splits_final.json").read_text())
    for f in (0, 1):
        assert sorted(c["case"] for c in s["metric_per_case"] if c["fold"] == str(f)) == sorted(splits[f]["val"])
    assert_matches_nnunet(s, folder, [0, 1])
    # nnU-Net can read it; keys become ints again; its fold means are our per-fold means
    loaded = load_summary_json(str(tmp_path / "ev" / "summary.json"))
    assert set(loaded["mean"]) == {1, 2} and set(loaded["metric_per_case"][0]["metrics"]) == {1, 2}
    for f in (0, 1):
        theirs = load_summary_json(str(folder / f"fold_{f}" / "validation" / "summary.json"))
        assert s["per_fold"][str(f)]["foreground_mean"]["Dice"] == pytest.approx(theirs["foreground_mean"]["Dice"])
    dice = [c["metrics"]["1"]["Dice"] for c in s["metric_per_case"]]
    assert s["mean"]["1"]["Dice"] == pytest.approx(np.nanmean(dice))
    # one real case by brute force from the raw files
    c = s["metric_per_case"][0]
    p = np.load(c["prediction_file"])["probabilities"].astype(np.float64)
    seg, props = SimpleITKIO().read_seg(c["reference_file"])
    y = seg[0].astype(int).ravel()
    P = p.reshape(3, -1)
    vox = np.prod(props["spacing"]) / 1000
    assert c["metrics"]["1"]["V_ref"] == pytest.approx((y == 1).sum() * vox)
    assert c["metrics"]["2"]["V_soft"] == pytest.approx(P[2].sum() * vox, rel=1e-6)
    assert c["metrics"]["2"]["Brier"] == pytest.approx(brier_score_loss(y == 2, P[2]), rel=1e-7)
    eps = np.finfo(np.float32).eps
    Pc = np.clip(P, eps, 1)
    assert c["calibration"]["NLL"] == pytest.approx(log_loss(y, (Pc / Pc.sum(0)).T, labels=[0, 1, 2]), rel=1e-4)
    assert s["volume_unit"] == "ml"


def test_regions_match_nnunet(nnunet_env, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json
    from sklearn.metrics import log_loss
    from nnunet_losses.evaluation import evaluate
    folder = nnunet_env.folder(("regions", 3))
    s = evaluate(folder, tmp_path / "ev", plots=False)
    assert s["task"]["type"] == "regions" and list(s["mean"]) == ["(1, 2)", "(2,)"]
    assert_matches_nnunet(s, folder, [0])
    loaded = load_summary_json(str(tmp_path / "ev" / "summary.json"))
    assert set(loaded["mean"]) == {(1, 2), (2,)}
    c = s["metric_per_case"][0]
    p = np.load(c["prediction_file"])["probabilities"].astype(np.float64)
    assert p.shape[0] == 2  # no background channel
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    y = SimpleITKIO().read_seg(c["reference_file"])[0][0].ravel()
    q = np.clip(p[0].ravel(), np.finfo(np.float32).eps, 1 - np.finfo(np.float32).eps)
    assert c["metrics"]["(1, 2)"]["NLL"] == pytest.approx(log_loss(y > 0, q), rel=1e-4)


def test_ignore_label_2d_matches_nnunet(nnunet_env, tmp_path):
    from nnunet_losses.evaluation import evaluate
    folder = nnunet_env.folder(("ignore", 2))
    s = evaluate(folder, tmp_path / "ev", plots=False)
    assert_matches_nnunet(s, folder, [0])
    for c in s["metric_per_case"]:
        assert c["n_ignored"] > 0 and c["n_voxels"] + c["n_ignored"] == int(np.prod(c["shape"]))
        m = c["metrics"]["1"]
        assert m["TP"] + m["FP"] + m["FN"] + m["TN"] == c["n_voxels"]
    assert s["calibration"]["pooled"]["n_voxels"] == sum(c["n_voxels"] for c in s["metric_per_case"])


def _sitk(path):
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


@pytest.mark.parametrize("key", [("labels", 3), ("regions", 3), ("ignore", 2)])
def test_threshold_export_nnunet_rule_is_nnunets_export(nnunet_env, tmp_path, key):
    from nnunet_losses.evaluation import export_thresholded
    folder = nnunet_env.folder(key)
    info = export_thresholded(folder, tmp_path / "sub", nnunet_rule=True)  # every fold of the trainer
    theirs = sorted(folder.glob("fold_*/validation/*.nii.gz"))
    assert info["n_cases"] == len(theirs) == len(list(folder.glob("fold_*/validation/*.npz"))) > 0
    for f in theirs:
        a, sa, oa, da = _sitk(tmp_path / "sub" / f.name)
        b, sb, ob, db = _sitk(f)
        np.testing.assert_array_equal(a, b)
        assert (sa, oa, da) == (sb, ob, db)
        assert a.dtype == b.dtype


def test_threshold_export_custom_and_best_thresholds(nnunet_env, tmp_path):
    from nnunet_losses.evaluation import evaluate, export_thresholded
    key = ("labels", 3)
    folder = nnunet_env.folder(key)
    export_thresholded([folder / "fold_0"], tmp_path / "t03", thresholds=[0.3])
    for npz in sorted((folder / "fold_0" / "validation").glob("*.npz")):
        p = np.load(npz)["probabilities"]
        expect = np.zeros(p.shape[1:], np.uint8)
        best = np.zeros(p.shape[1:], np.float32)
        for c in (1, 2):
            win = (p[c] > 0.3) & (p[c] > best)
            expect[win], best[win] = c, p[c][win]
        arr, *geom = _sitk(tmp_path / "t03" / (npz.stem + ".nii.gz"))
        np.testing.assert_array_equal(arr, expect)
        _, *geom_ref = _sitk(nnunet_env.gt(key) / (npz.stem + ".nii.gz"))
        assert geom == geom_ref
    evaluate(folder, tmp_path / "ev", folds=[0], plots=False)
    info = export_thresholded(folder, tmp_path / "best", best_from=tmp_path / "ev", folds=[0])
    sweep = json.loads((tmp_path / "ev" / "summary.json").read_text())["threshold_sweep"]["per_class"]
    assert info["thresholds"] == {k: sweep[k]["best_threshold"] for k in ("1", "2")}
    assert json.loads((tmp_path / "best" / "thresholds.json").read_text())["rule"] == "best thresholds of the sweep"


def test_cli_end_to_end(nnunet_env, tmp_path, capsys):
    from nnunet_losses.cli import main
    ws = nnunet_env.ws
    did = nnunet_env.datasets[("labels", 3)][0]
    a, b, cmp_, sub = tmp_path / "A", tmp_path / "B", tmp_path / "cmp", tmp_path / "sub"
    for sc in ("evaluate", "compare", "threshold"):
        with pytest.raises(SystemExit) as e:
            main([sc, "-h"])
        assert e.value.code == 0
        h = capsys.readouterr().out
        assert "usage: nnunet-losses " + sc in h and "-o FOLDER" in h
    # the installed console script, nnU-Net-style dataset/configuration/trainer lookup
    out = run_cli(["nnunet-losses", "evaluate", "-d", did, "-c", "3d_fullres", "-tr", TINY, "-f", "0", "-o", a, "-q"],
                  env=ws.env()).stdout
    assert "foreground mean Dice" in out and "best T" in out
    assert main(["evaluate", "-i", str(nnunet_env.folder(("labels", 3), TINY_B)), "-o", str(b), "-q"]) == 0
    assert main(["compare", "-i", str(a), str(b), "-o", str(cmp_), "--n_boot", "2000"]) == 0
    assert main(["threshold", "-i", str(nnunet_env.folder(("labels", 3)) / "fold_0"), "-o", str(sub),
                 "--best_from", str(a), "-q"]) == 0
    for f in ("summary.json", "per_case.csv", "threshold_sweep.csv", "size_deciles.csv", "reliability.csv",
              "summary.md", "reliability_diagram.png", "dice_vs_threshold.png", "dice_vs_size_decile.png",
              "volume_error.png"):
        assert (a / f).is_file(), f
    for f in ("reliability_diagram.png", "volume_error.png"):
        assert (a / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (cmp_ / "comparison.md").read_text()
    assert TINY in md and TINY_B in md and "B - A" in md and "| dV (ml) | 1 |" in md
    import csv
    rows = list(csv.DictReader(open(cmp_ / "comparison.csv")))
    assert {r["metric"] for r in rows} >= {"Dice", "dV", "abs_dV", "Brier", "one_vs_rest_ECE", "top_label_ECE",
                                           "classwise_ECE", "NLL"}
    assert all(r["p_bootstrap_holm"] for r in rows)
    assert (cmp_ / "volume_error_per_trainer.png").is_file()
    assert sorted(p.name for p in sub.iterdir()) == sorted(
        [p.name for p in (nnunet_env.folder(("labels", 3)) / "fold_0" / "validation").glob("*.nii.gz")] +
        ["thresholds.json", "dataset.json"])
    assert json.loads((sub / "dataset.json").read_text()) == json.loads(
        (nnunet_env.folder(("labels", 3)) / "dataset.json").read_text())
    rows = list(csv.DictReader(open(a / "per_case.csv")))
    assert len(rows) == 2 * 2
    assert {"dV", "soft_Dice", "one_vs_rest_ECE", "case_NLL", "case_top_label_ECE"} <= set(rows[0])


def test_prediction_folder_mode_and_parallel_workers(nnunet_env, tmp_path):
    from nnunet_losses.evaluation import EvaluationError, evaluate
    folder = nnunet_env.folder(("labels", 3))
    pred = tmp_path / "pred"  # what nnUNetv2_predict --save_probabilities writes
    shutil.copytree(folder / "fold_0" / "validation", pred, ignore=shutil.ignore_patterns("summary.json"))
    shutil.copy(folder / "dataset.json", pred)
    shutil.copy(folder / "plans.json", pred)
    gt = nnunet_env.gt(("labels", 3))
    with pytest.raises(EvaluationError, match="reference without prediction.*--chill"):
        evaluate(pred, reference_folder=gt)
    a = evaluate(pred, reference_folder=gt, chill=True)
    b = evaluate(folder, folds=[0], num_processes=2)
    assert [c["case"] for c in a["metric_per_case"]] == [c["case"] for c in b["metric_per_case"]]
    for ca, cb in zip(a["metric_per_case"], b["metric_per_case"]):
        assert ca["metrics"] == cb["metrics"] and ca["calibration"] == cb["calibration"]
    assert json.dumps(a["threshold_sweep"], sort_keys=True) == json.dumps(b["threshold_sweep"], sort_keys=True)


def _copy_trainer(folder: Path, dest: Path) -> Path:
    out = dest / folder.parent.name / folder.name
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("*.pth"))
    return out


def test_bad_inputs_are_one_line_errors_and_write_nothing(nnunet_env, tmp_path):
    from nnunet_losses.cli import main
    from nnunet_losses.evaluation import EvaluationError, compare, evaluate
    folder = _copy_trainer(nnunet_env.folder(("labels", 3)), tmp_path / "copy")
    out = tmp_path / "out"
    v0 = folder / "fold_0" / "validation"
    npz = sorted(v0.glob("*.npz"))
    keep = tmp_path / "keep.npz"
    shutil.move(npz[0], keep)

    def fails(match, dest=out, **kw):
        with pytest.raises(EvaluationError, match=match) as e:
            evaluate(folder, dest, plots=False, **kw)
        assert "\n" not in str(e.value)
        assert not dest.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
        return str(e.value)

    msg = fails(r"probabilities missing.*--val --npz")
    assert str(npz[0]) in msg and f"nnUNetv2_train {nnunet_env.datasets[('labels', 3)][2]} 3d_fullres 0 -tr {TINY}" in msg
    # the command line: status 1 (bad input), the message on stderr
    import io, contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["evaluate", "-i", str(folder), "-o", str(out), "-q"]) == 1
    assert "nnunet-losses evaluate: error:" in err.getvalue() and npz[0].name in err.getvalue()
    shutil.move(keep, npz[0])
    p = np.load(npz[1])["probabilities"]
    for damage, match in (("nan", "NaN"), ("sum", "do not sum to 1"), ("shape", "do not match"),
                          ("v1", None)):
        q = p.copy()
        if damage == "nan":
            q[1, 3, 3, 3] = np.nan
        elif damage == "sum":
            q[:, 3, 3, 3] = 0.5
        elif damage == "shape":
            q = q[:, 1:]
        if damage == "v1":  # nnU-Net v1 files: key 'softmax', float16
            np.savez_compressed(npz[1], softmax=q.astype(np.float16))
            s = evaluate(folder, plots=False)
            assert s["n_cases"] == 4
        else:
            np.savez_compressed(npz[1], probabilities=q)
            assert str(npz[1]) in fails(match)
    np.savez_compressed(npz[1], probabilities=p)
    # a reference with a label dataset.json does not declare
    gt = tmp_path / "gt"
    shutil.copytree(nnunet_env.gt(("labels", 3)), gt)
    import SimpleITK as sitk
    ref_file = gt / (npz[1].stem + ".nii.gz")
    img = sitk.ReadImage(str(ref_file))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 5
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(img)
    sitk.WriteImage(new, str(ref_file))
    assert str(ref_file) in fails("label 5 is not declared", reference_folder=gt)
    # geometry: a reference with another spacing than the prediction's .pkl
    new.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(new, str(ref_file))
    fails("spacing .* differs", reference_folder=gt)
    # a prediction whose case is not in the fold's split
    shutil.copy(npz[1], v0 / "case_999.npz")
    fails("case_999.npz: case is not in fold 0")
    (v0 / "case_999.npz").unlink()
    # output folder rules
    with pytest.raises(EvaluationError, match="refusing to write inside"):
        evaluate(folder, nnunet_env.ws.results / "my_eval", plots=False)
    with pytest.raises(EvaluationError, match="refusing to write inside"):
        evaluate(folder, folder / "eval", plots=False)
    s = evaluate(folder, out, plots=False)
    with pytest.raises(EvaluationError, match="already exists.*--overwrite"):
        evaluate(folder, out, plots=False)
    evaluate(folder, out, plots=False, overwrite=True)
    # comparing different case sets needs --common_cases
    s0 = evaluate(folder, folds=[0], plots=False)
    with pytest.raises(EvaluationError, match="common_cases"):
        compare([s, s0], names=["all", "f0"], n_boot=100)
    r = compare([s, s0], names=["all", "f0"], n_boot=100, common_cases=True)
    assert r["n_cases"] == 2
    # a missing validation folder / no fold folders
    shutil.rmtree(folder / "fold_1" / "validation")
    fails(r"fold_1/validation: no validation folder; rerun .*--val --npz", dest=tmp_path / "out2")
