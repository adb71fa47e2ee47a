"""Decision rules and probabilistic volume inside `evaluate` (one streamed pass): every per-case number against
float64 references computed from the np.load arrays; cross-fitted thresholds never see the held-out cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_losses.evaluation import TaskSpec, evaluate
from nnunet_losses.evaluation.decision_summary import crossfit_groups, crossfit_thresholds

from test_decisions import REFS
from test_evaluation_export import make_prediction_folder


def _load(c):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_losses.evaluation.cases import load_reference
    ref, _ = load_reference(c["reference_file"], SimpleITKIO())
    return np.load(c["prediction_file"])["probabilities"].astype(np.float64), ref


def _ref_metrics(mask, pos, vv):
    n_pred, tp, n_ref = int(mask.sum()), int((mask & pos).sum()), int(pos.sum())
    dice = 2 * tp / (n_pred + n_ref) if n_pred + n_ref else math.nan
    return {"Dice": dice, "n_pred": n_pred, "TP": tp, "dV": (n_pred - n_ref) * vv}


@pytest.mark.parametrize("regions", [False, True])
def test_evaluate_decisions_and_volume_equal_references(tmp_path, regions):
    pred, gt = make_prediction_folder(tmp_path, dim=3, regions=regions, n_cases=4)
    spec = TaskSpec.from_dataset_json(json.loads((pred / "dataset.json").read_text()))
    s = evaluate(pred, tmp_path / "out", reference_folder=gt, plots=True, fixed_threshold=0.3)
    assert s["decisions"]["crossfit"]["scheme"] == "leave one case out"
    thr = s["settings"]["thresholds"]
    assert 0.3 in thr
    for i, c in enumerate(s["metric_per_case"]):
        p, ref = _load(c)
        y = ref.reshape(-1)
        vv = c["voxel_volume"]
        for key, cls, ch in zip(spec.keys, spec.classes, spec.class_channels):
            pos = spec.membership(cls)[y]
            q = p[ch].reshape(-1)
            got = c["decisions"][key]
            for rule, ref_rule in REFS.items():
                want = _ref_metrics(ref_rule(q), pos, vv)
                assert {f: got[rule][f] for f in want} == pytest.approx(want, nan_ok=True), (rule, key)
            want = _ref_metrics(q > 0.3, pos, vv)
            assert {f: got["fixed_T"][f] for f in want} == pytest.approx(want, nan_ok=True)
            assert got["fixed_T"]["threshold"] == 0.3
            # cross-fitted T: the best mean Dice over the *other* cases, recomputed here by brute force
            others = [_load(o) for j, o in enumerate(s["metric_per_case"]) if j != i]
            dice_t = []
            for t in thr:
                ds = []
                for po, ro in others:
                    m = _ref_metrics(po[ch].reshape(-1) > t, spec.membership(cls)[ro.reshape(-1)], 1.0)
                    ds.append(m["Dice"])
                dice_t.append(np.nanmean(ds))
            best = max(dice_t)
            cands = [t for t, d in zip(thr, dice_t) if d >= best - 1e-12]
            t_cf = min(cands, key=lambda t: (abs(t - 0.5), t))
            assert got["best_T_crossfit"]["threshold"] == t_cf
            assert got["best_T_crossfit"]["TP"] == int(((q > t_cf) & pos).sum())
            assert got["argmax"]["Dice"] == pytest.approx(c["metrics"][key]["Dice"], nan_ok=True)
            # Poisson-binomial volume from the same pass
            v = c["volume"][key]
            assert v["V_mean"] == pytest.approx(q.sum() * vv, rel=1e-9)
            assert v["V_sd"] == pytest.approx(math.sqrt(np.sum(q * (1 - q))) * vv, rel=1e-9)
    for key in spec.keys:
        rows = [c["decisions"][key]["dice_optimal"]["Dice"] for c in s["metric_per_case"]]
        assert s["decisions"]["mean"][key]["dice_optimal"]["Dice"] == pytest.approx(np.nanmean(rows))
        cov = np.mean([c["volume"][key]["covers_V_ref"] for c in s["metric_per_case"]])
        assert s["volume"][key]["coverage_95"] == pytest.approx(cov)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(written["decisions"]["mean"][spec.keys[0]]) >= {"argmax", "dice_optimal", "best_T_crossfit"}
    assert (tmp_path / "out" / "decisions.csv").is_file() and (tmp_path / "out" / "bland_altman.png").is_file()


def _counts_with_dice(dice: np.ndarray, n: int = 1000):
    """Per-case (tp, fp, fn) counts whose Dice is ``dice`` (NaN: nothing predicted, nothing in the reference)."""
    d = np.nan_to_num(dice, nan=0.0)
    tp = np.round(n * d / (2 - d))  # 2tp / (2tp + fp) = d with fn = 0
    fp = np.where(np.isnan(dice), 0.0, n - tp)
    tp = np.where(np.isnan(dice), 0.0, tp)
    return tp, fp, np.zeros_like(tp)


def test_crossfit_never_uses_the_held_out_fold():
    """Changing every count of fold 'b' (even to 'undefined') leaves fold b's threshold unchanged: it is chosen on
    a and c, as the best threshold of their mean Dice."""
    from nnunet_losses.evaluation.metrics import mean_dice_over_cases
    rng = np.random.default_rng(0)
    thr = [0.1, 0.3, 0.5, 0.7, 0.9]
    folds = ["a"] * 4 + ["b"] * 3 + ["c"] * 5
    groups, scheme = crossfit_groups(folds)
    assert scheme == "other folds" and groups[1] == [4, 5, 6]
    dice = rng.uniform(0.05, 1, (12, 5))
    t = crossfit_thresholds(*_counts_with_dice(dice), thr, groups)
    for poison in (np.zeros((3, 5)), np.ones((3, 5)), np.full((3, 5), np.nan), rng.uniform(0, 1, (3, 5))):
        d2 = dice.copy()
        d2[4:7] = poison
        t2 = crossfit_thresholds(*_counts_with_dice(d2), thr, groups)
        assert t2[4:7].tolist() == t[4:7].tolist()
    other = [np.r_[c[:4], c[7:]] for c in _counts_with_dice(dice)]
    assert t[5] == thr[int(np.nanargmax(mean_dice_over_cases(*other)[0]))]
    # the held-out fold alone would pull the choice to T = 0.1; leave-one-case-out (which sees it) does move
    d3 = np.full((12, 5), 0.5)
    d3[:, 2] = 0.6
    d3[4:7] = 0.0
    d3[4:7, 0] = 1.0
    assert crossfit_thresholds(*_counts_with_dice(d3), thr, groups)[4] == 0.5
    assert crossfit_thresholds(*_counts_with_dice(d3), thr, [[i] for i in range(12)])[0] == 0.1


def test_crossfit_threshold_of_a_class_absent_from_the_other_folds_predicts_nothing():
    """Where the other folds hold no reference voxel of a class, "highest Dice" would pick a threshold whose
    Dice is 0 (false positives) over the ones with no Dice (the correct empty prediction): the cross-fitted
    choice follows the sweep's rule instead -- the fewest false positives."""
    thr = [0.1, 0.3, 0.5, 0.7, 0.9]
    groups, _ = crossfit_groups(["a", "a", "b", "b"])
    fp = np.array([[9, 5, 2, 0, 0], [7, 3, 1, 0, 0], [8, 4, 0, 0, 0], [6, 2, 1, 1, 0]], dtype=float)
    zeros = np.zeros_like(fp)
    t = crossfit_thresholds(zeros, fp, zeros, thr, groups)
    # fold a is chosen on b (FP 14, 6, 1, 1, 0), fold b on a (16, 8, 3, 0, 0: a tie, closest to 0.5 wins)
    assert t.tolist() == [0.9, 0.9, 0.7, 0.7]


def test_single_fold_or_prediction_folder_is_leave_one_case_out():
    groups, scheme = crossfit_groups([None, None, None])
    assert scheme == "leave one case out" and groups == [[0], [1], [2]]
    groups, scheme = crossfit_groups(["0", "0"])
    assert scheme == "leave one case out"


def test_compare_pairs_the_decision_rules_dice(tmp_path):
    """compare shows Dice[rule] per model: the per-case values it pairs are those of each evaluation."""
    from nnunet_losses.evaluation import compare
    pred, gt = make_prediction_folder(tmp_path / "m1", dim=3, regions=False, n_cases=4)
    pred2, gt2 = make_prediction_folder(tmp_path / "m2", dim=3, regions=False, n_cases=4)  # same arrays, seed 0
    a = evaluate(pred, tmp_path / "a", reference_folder=gt, plots=False, name="A")
    b = evaluate(pred2, tmp_path / "b", reference_folder=gt2, plots=False, name="B", fixed_threshold=0.3)
    r = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "ab", n_boot=200, plots=False)
    row = next(x for x in r["model_means"] if x["model"] == "A" and x["metric"] == "Dice[dice_optimal]"
               and x["class"] == "1")
    assert row["mean"] == pytest.approx(np.nanmean([c["decisions"]["1"]["dice_optimal"]["Dice"]
                                                    for c in a["metric_per_case"]]))
    pair = next(x for x in r["paired"] if x["metric"] == "Dice[volume_matched]" and x["class"] == "2")
    assert pair["mean_diff"] == pytest.approx(0.0)  # equal probabilities: equal rule masks
    assert "Dice[dice_optimal]" in (tmp_path / "ab" / "comparison.md").read_text()
    assert b["decisions"]["fixed_threshold"] == 0.3
