"""No silent wrong answer (issue 11): the rules a user cannot see in the numbers, each checked against its
definition, and the realistic one-line bugs the rest of the suite let through (see the test names).

Mutations each test here was seen to catch (made by hand, test failed, reverted): ``dV_soft`` against the
predicted instead of the reference volume; ``abs_dV`` without ``abs``; Holm not applied to the volume-bias
family; ``compare``'s "better" model swapped; best-threshold ties broken the other way; ``>=`` instead of ``>``
in the thresholded label map.
"""
from __future__ import annotations

import json
import math
import pickle
import shutil

import numpy as np
import pytest

from nnunet_losses.evaluation import BinGrid, EvaluationError, TaskSpec, accumulate_case, case_metrics, compare, \
    evaluate, export_thresholded
from nnunet_losses.evaluation.compare import CASE_METRICS, CLASS_METRICS
from nnunet_losses.evaluation.metrics import best_threshold, threshold_sweep
from test_evaluation_export import make_prediction_folder

LABELS3 = TaskSpec.labels(3)


# ---------------------------------------------------------------------------------------------------------------
# volumes
# ---------------------------------------------------------------------------------------------------------------
def test_volume_errors_against_their_definitions():
    """dV = V_pred - V_ref, |dV|, dV_soft = V_soft - V_ref (Bertels et al., eq. 3), with V_pred < V_ref so that
    the sign and the absolute value matter."""
    rng = np.random.default_rng(5)
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:5, 1:5, 1:5] = 1
    p1 = np.where(ref == 1, 0.7, 0.05) + rng.uniform(-0.04, 0.04, ref.shape)
    p1[1, 1:5, 1:5] = 0.3  # a slice of the object missed: the hard volume is too small
    p = np.stack([1 - p1, p1]).astype(np.float32)
    vv = 0.37
    m, _ = case_metrics(accumulate_case(p, ref, TaskSpec.labels(2)), TaskSpec.labels(2), vv)
    d = m["1"]
    v_ref = (ref == 1).sum() * vv
    v_pred = (p1 > 0.5).sum() * vv
    v_soft = p[1].astype(np.float64).sum() * vv
    assert v_pred < v_ref and v_soft != v_pred
    assert d["dV"] == pytest.approx(v_pred - v_ref) and d["abs_dV"] == pytest.approx(v_ref - v_pred)
    assert d["dV_soft"] == pytest.approx(v_soft - v_ref, rel=1e-6)
    assert d["abs_dV_soft"] == pytest.approx(abs(v_soft - v_ref), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# threshold sweep: best threshold
# ---------------------------------------------------------------------------------------------------------------
def test_best_threshold_ties_go_to_the_one_closest_to_half_then_the_lower():
    t = [0.3, 0.4, 0.6, 0.7]
    assert best_threshold(t, np.array([0.8, 0.9, 0.9, 0.8]))["best_threshold"] == 0.4
    assert best_threshold([0.2, 0.55, 0.9], np.array([0.7, 0.7, 0.7]))["best_threshold"] == 0.55
    assert best_threshold(t, np.array([0.95, 0.9, 0.9, 0.8]))["best_threshold"] == 0.3  # no tie: the best


def test_sweep_with_a_flat_dice_picks_half():
    """Probabilities 0.125 / 0.875 only: every T in [0.125, 0.875) gives the same map, so the same Dice."""
    ref = np.zeros((4, 5, 6), np.uint8)
    ref[1:3, 1:4, 2:5] = 1
    p1 = np.where(ref == 1, 0.875, 0.125).astype(np.float32)
    p1[0, 0, 0] = 0.875  # one false positive: Dice < 1 but flat over T
    st = accumulate_case(np.stack([1 - p1, p1]), ref, TaskSpec.labels(2))
    sw = threshold_sweep([st], TaskSpec.labels(2), BinGrid())
    e = sw["per_class"]["1"]
    assert len(set(e["Dice_mean"][2:17])) == 1 and e["Dice_mean"][1] < e["Dice_mean"][2]  # T = 0.15 .. 0.85
    assert e["best_threshold"] == 0.5


def test_best_threshold_of_a_class_absent_from_every_case():
    """Class 2 is in no reference: its Dice is 0 where it is predicted, NaN (the correct empty map) where not.
    The best threshold is the one predicting none of it (closest to 0.5 among those), not a 0-Dice one."""
    rng = np.random.default_rng(2)
    refs, probs = [], []
    for s in range(3):
        ref = (rng.random((5, 6, 7)) < 0.3).astype(np.uint8)
        p2 = rng.uniform(0, 0.2, ref.shape)
        p2[0, 0, s] = 0.62  # the highest class-2 probability anywhere: T >= 0.65 predicts no class 2
        p1 = np.where(ref == 1, 0.8, 0.1) * (1 - p2)
        probs.append(np.stack([1 - p1 - p2, p1, p2]).astype(np.float32))
        refs.append(ref)
    stats = [accumulate_case(p, r, LABELS3) for p, r in zip(probs, refs)]
    sw = threshold_sweep(stats, LABELS3, BinGrid())
    e = sw["per_class"]["2"]
    t = sw["thresholds"]
    assert all(fp == 0 for T, fp in zip(t, e["FP"]) if T >= 0.65) and e["FP"][t.index(0.6)] > 0
    assert e["best_threshold"] == 0.65 and math.isnan(e["best_Dice_mean"])
    assert "no reference voxel" in e["best_threshold_rule"]
    # the overall row leaves the undefined class out instead of becoming NaN there
    i = t.index(0.65)
    assert sw["overall"]["Dice_mean"][i] == pytest.approx(sw["per_class"]["1"]["Dice_mean"][i])
    # nothing gives an empty map: the fewest false-positive voxels
    probs[0][:, 0, 0, 0] = [0.01, 0.0, 0.99]
    stats[0] = accumulate_case(probs[0], refs[0], LABELS3)
    e = threshold_sweep(stats, LABELS3, BinGrid())["per_class"]["2"]
    assert min(e["FP"]) > 0 and e["best_threshold"] == 0.65  # FP = 1 voxel from 0.65 on; closest to 0.5


# ---------------------------------------------------------------------------------------------------------------
# thresholded label maps
# ---------------------------------------------------------------------------------------------------------------
def test_a_probability_equal_to_its_threshold_is_not_above_it():
    p = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.25], [0.0, 0.25, 0.5]], np.float32)[:, :, None]
    np.testing.assert_array_equal(LABELS3.hard_map(p, [0.5, 0.5])[:, 0], [0, 0, 0])
    np.testing.assert_array_equal(LABELS3.hard_map(p, [0.25, 0.25])[:, 0], [1, 1, 2])
    regions = TaskSpec.regions([(1, 2), (2,)], [1, 2])
    q = np.array([[0.5, 0.75], [0.25, 0.5]], np.float32)[:, :, None]
    np.testing.assert_array_equal(regions.hard_map(q, [0.5, 0.5])[:, 0], [0, 1])
    np.testing.assert_array_equal(regions.hard_map(q, [0.25, 0.25])[:, 0], [1, 2])


def test_threshold_checks_probabilities_as_evaluate_does(tmp_path):
    pred, gt = make_prediction_folder(tmp_path, n_cases=2)
    p = np.load(pred / "case_1.npz")["probabilities"]
    np.savez_compressed(pred / "case_1.npz", probabilities=p * 0.5)  # sums to 0.5: empty maps otherwise
    with pytest.raises(EvaluationError, match="case_1.npz: softmax probabilities do not sum to 1"):
        export_thresholded(pred, tmp_path / "out", thresholds=0.5)
    with pytest.raises(EvaluationError, match="case_1.npz: softmax probabilities do not sum to 1"):
        evaluate(pred, reference_folder=gt, plots=False)
    q = p.copy()
    q[:, 0, 0, 0] = [1.5, -0.25, -0.25]
    np.savez_compressed(pred / "case_1.npz", probabilities=q)
    with pytest.raises(EvaluationError, match=r"case_1.npz: probabilities contain values in \[-0.25, 1.5\]"):
        export_thresholded(pred, tmp_path / "out", thresholds=0.5)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# --best_from
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def evaluated(tmp_path):
    pred, gt = make_prediction_folder(tmp_path, n_cases=3)
    evaluate(pred, tmp_path / "eval", reference_folder=gt, plots=False)
    return pred, tmp_path / "eval" / "summary.json"


def _edited(summary_file, dest, edit):
    s = json.loads(summary_file.read_text())
    edit(s)
    dest.write_text(json.dumps(s))
    return dest


@pytest.mark.parametrize("edit, match", [
    (lambda s: s["source"].update(dataset="Dataset042_Other"), "evaluates dataset Dataset042_Other"),
    (lambda s: s["source"].update(plans="nnUNetResEncUNetMPlans"), "evaluates plans nnUNetResEncUNetMPlans"),
    (lambda s: s["threshold_sweep"]["per_class"]["2"].update(best_threshold=1.0), "class 2 is 1.0, not a number"),
    (lambda s: s["threshold_sweep"]["per_class"]["1"].update(best_threshold=float("nan")), "class 1 is nan"),
    (lambda s: s["threshold_sweep"]["per_class"]["1"].update(best_threshold=0.0), "class 1 is 0.0"),
    (lambda s: s.pop("threshold_sweep"), "no threshold sweep"),
    (lambda s: s["threshold_sweep"]["per_class"].pop("2"), "sweep of classes"),
])
def test_best_from_is_checked(evaluated, tmp_path, edit, match):
    pred, summary = evaluated
    plans = json.loads((pred / "plans.json").read_text())
    plans["plans_name"] = "nnUNetPlans"
    (pred / "plans.json").write_text(json.dumps(plans))
    ok = _edited(summary, tmp_path / "ok.json", lambda s: s["source"].update(plans="nnUNetPlans"))
    assert export_thresholded(pred, tmp_path / "fine", best_from=ok)["n_cases"] == 3
    bad = _edited(summary, tmp_path / "bad.json", edit)
    with pytest.raises(EvaluationError, match=match) as e:
        export_thresholded(pred, tmp_path / "out", best_from=bad)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------------------------
def _summary(name, values, dataset="Dataset001_X", folder=None):
    """A minimal evaluation summary: ``values[metric][class]`` = per-case list (calibration under class None)."""
    keys = ["1", "2"]
    n = len(values["Dice"]["1"])
    rows = []
    for i in range(n):
        metrics = {k: {m: float(values.get(m, {}).get(k, [0.5] * n)[i]) for m in CLASS_METRICS} for k in keys}
        cal = {m: float(values.get(m, {}).get(None, [0.1] * n)[i]) for m in CASE_METRICS}
        rows.append({"case": f"case_{i}", "fold": "0", "metrics": metrics, "calibration": cal})
    return {"name": name, "metric_per_case": rows, "mean": {k: {} for k in keys}, "volume_unit": "ml",
            "task": {"type": "labels"}, "source": {"dataset": dataset, "trainer_folder": folder or f"/r/{name}",
                                                   "folds": ["0"]}}


def _holm_by_definition(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def test_compare_better_model_and_holm_on_the_volume_family():
    rng = np.random.default_rng(0)
    n = 12
    dice_a = rng.uniform(0.6, 0.8, n)
    a = _summary("A", {"Dice": {"1": dice_a, "2": dice_a}, "abs_dV": {"1": np.full(n, 3.0), "2": np.full(n, 3.0)},
                       "dV": {"1": rng.normal(0.0, 1, n), "2": rng.normal(0.9, 1, n)}})
    b = _summary("B", {"Dice": {"1": dice_a + 0.1, "2": dice_a - 0.1},
                       "abs_dV": {"1": np.full(n, 1.0) + rng.uniform(0, .1, n), "2": np.full(n, 3.0)},
                       "dV": {"1": rng.normal(2, 0.5, n), "2": rng.normal(0, 1, n)}})
    r = compare([a, b], n_boot=400)
    better = {(x["metric"], x["class"]): x["better"] for x in r["paired"]}
    assert better[("Dice", "1")] == "B" and better[("Dice", "2")] == "A" and better[("abs_dV", "1")] == "B"
    assert better[("abs_dV", "2")] == ""  # no difference
    for model in ("A", "B"):
        for metric in ("dV", "dV_soft"):
            fam = [x for x in r["volume_bias"] if x["model"] == model and x["metric"] == metric]
            assert [x["class"] for x in fam] == ["1", "2"]
            for col in ("p_bootstrap", "p_wilcoxon"):
                want = _holm_by_definition([x[col] for x in fam])
                assert [x[col + "_holm"] for x in fam] == pytest.approx(want)
    bias = {(x["model"], x["class"]): x for x in r["volume_bias"] if x["metric"] == "dV"}
    assert bias[("B", "1")]["bias"] == "over" and bias[("A", "1")]["bias"] == ""
    # the flag uses the adjusted p: a raw p below alpha whose Holm p is not must not be flagged
    for x in r["volume_bias"]:
        assert (x["bias"] != "") == (x["p_bootstrap_holm"] < 0.05)


def test_compare_refuses_other_datasets_and_the_same_predictions_twice(tmp_path):
    n = 6
    vals = {"Dice": {"1": np.linspace(0.5, 0.9, n), "2": np.linspace(0.4, 0.8, n)}}
    a, b = _summary("A", vals), _summary("B", vals, dataset="Dataset002_Y")
    with pytest.raises(EvaluationError, match="different datasets"):
        compare([a, b], n_boot=50)
    with pytest.raises(EvaluationError, match="same predictions"):
        compare([a, _summary("A2", vals, folder="/r/A")], n_boot=50)
    pred, gt = make_prediction_folder(tmp_path, n_cases=3)
    evaluate(pred, tmp_path / "e", reference_folder=gt, plots=False)
    with pytest.raises(EvaluationError, match="same predictions"):
        compare([tmp_path / "e", tmp_path / "e" / "summary.json"], n_boot=50)


# ---------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------
def test_sweep_settings_are_one_line_errors(tmp_path, capsys):
    from nnunet_losses.cli import main
    pred, gt = make_prediction_folder(tmp_path, n_cases=2)
    for kw, match in (({"thresholds": [0.5, 1.0]}, "strictly between 0 and 1"),
                      ({"thresholds": [0.1234567]}, "denominator"), ({"n_bins": 0}, "at least one calibration bin")):
        with pytest.raises(EvaluationError, match=match):
            evaluate(pred, reference_folder=gt, plots=False, **kw)
    for argv in (["evaluate", "-i", pred, "-ref", gt, "-o", tmp_path / "e", "--thresholds", "0.5", "1"],
                 ["evaluate", "-i", pred, "-ref", gt, "-o", tmp_path / "e", "--fixed_threshold", "0"],
                 ["threshold", "-i", pred, "-o", tmp_path / "t", "-t", "1"]):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "t").exists()
