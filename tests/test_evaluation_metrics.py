"""Evaluation metrics against independent references: brute-force numpy per voxel, scikit-learn, nnU-Net's own
functions, scipy. Small arrays, no nnU-Net training (see test_evaluation_nnunet.py for real fold folders)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score

from nnunet_losses.evaluation import BinGrid, EvaluationError, TaskSpec, accumulate_case, case_metrics
from nnunet_losses.evaluation.metrics import (dice_jaccard_check, means, pooled_calibration, size_deciles,
                                              threshold_sweep)
from nnunet_losses.evaluation.stats import bootstrap_mean, holm, one_sample, paired, wilcoxon

RNG = np.random.default_rng(1234)
GRID = BinGrid()


# ---------------------------------------------------------------------------------------------------------------
# data: smooth-ish random probabilities with exact 0/1 padding and values exactly on bin edges / thresholds
# ---------------------------------------------------------------------------------------------------------------
def softmax_case(shape=(6, 7, 8), k=3, seed=0, ignore=None, edges=True):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.5, (k,) + shape)
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    p = p.astype(np.float32)
    p[:, 0] = 0  # nnU-Net's padding outside the crop box: exact one-hot background
    p[0, 0] = 1
    if edges:  # binary-exact values on bin edges/thresholds: (p, 1-p) pairs that sum to exactly 1
        vals = np.array([0.5, 0.25, 0.75, 0.05, 0.95, 0.2, 0.8, 1 / 3, 0.6], dtype=np.float32)
        flat = p.reshape(k, -1)
        for i, v in enumerate(vals):
            flat[:, 50 + i] = 0
            flat[1, 50 + i] = v
            flat[0, 50 + i] = np.float32(1) - v
    ref = rng.integers(0, k, shape).astype(np.uint8)
    ref[1:3] = np.argmax(p[:, 1:3], 0)  # some agreement
    if ignore is not None:
        ref[..., -2:] = ignore
    return p, ref


def sigmoid_case(shape=(6, 7, 8), seed=0):
    rng = np.random.default_rng(seed)
    p = (1 / (1 + np.exp(-rng.normal(0, 2.5, (2,) + shape)))).astype(np.float32)
    p[:, 0] = 0
    p[0, 1, 0, :4] = np.array([0.5, 0.05, 0.95, 1.0], dtype=np.float32)
    ref = rng.integers(0, 3, shape).astype(np.uint8)
    return p, ref


REGIONS = TaskSpec.regions([(1, 2), (2,)], [1, 2])


def brute_ece(p, y, n_bins):
    """Per-voxel ECE with bins [0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1] (float64 comparisons)."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    b = np.zeros(p.shape, dtype=int)
    for i in range(1, n_bins):
        b[p > i / n_bins] = i
    ece = 0.0
    for i in range(n_bins):
        m = b == i
        if m.any():
            ece += abs(y[m].sum() - p[m].sum())
    return ece / p.size


def brute_counts(ref_mask, pred_mask):
    tp = int(np.sum(ref_mask & pred_mask))
    fp = int(np.sum(~ref_mask & pred_mask))
    fn = int(np.sum(ref_mask & ~pred_mask))
    tn = int(np.sum(~ref_mask & ~pred_mask))
    return tp, fp, fn, tn


# ---------------------------------------------------------------------------------------------------------------
def test_grid_resolution_and_bad_thresholds():
    assert GRID.resolution == 60 and list(GRID.threshold_index[:3]) == [3, 6, 9]
    assert BinGrid(10, (0.33,)).resolution == 100
    with pytest.raises(ValueError):
        BinGrid(15, (0.0, 0.5))
    with pytest.raises(ValueError):
        BinGrid(0)


@pytest.mark.parametrize("ignore", [None, 3])
def test_label_model_against_brute_force_and_sklearn(ignore):
    spec = TaskSpec.labels(3, ignore_label=ignore)
    p, ref = softmax_case(ignore=ignore)
    st = accumulate_case(p, ref, spec)
    m, cal = case_metrics(st, spec, voxel_volume=0.5)
    valid = ref != ignore if ignore is not None else np.ones(ref.shape, bool)
    pv = p[:, valid].astype(np.float64)  # (3, n)
    yv = ref[valid].astype(int)
    pred = np.argmax(p, 0)[valid]
    n = yv.size
    assert st.n_valid == n and st.n_ignored == ref.size - n
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
    for c in (1, 2):
        d = m[str(c)]
        # nnU-Net's own counting, ignore mask included
        tp, fp, fn, tn = compute_tp_fp_fn_tn(ref == c, np.argmax(p, 0) == c, None if ignore is None else ref == ignore)
        assert (d["TP"], d["FP"], d["FN"], d["TN"]) == (tp, fp, fn, tn)
        assert d["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert d["IoU"] == pytest.approx(tp / (tp + fp + fn))
        assert d["precision"] == pytest.approx(precision_score(yv == c, pred == c))
        assert d["recall"] == pytest.approx(recall_score(yv == c, pred == c))
        assert d["Brier"] == pytest.approx(brier_score_loss(yv == c, pv[c]), rel=1e-9, abs=1e-12)
        assert d["one_vs_rest_ECE"] == pytest.approx(brute_ece(pv[c], yv == c, 15), abs=1e-12)
        assert d["soft_Dice"] == pytest.approx(2 * pv[c][yv == c].sum() / (pv[c].sum() + (yv == c).sum()))
        assert d["V_ref"] == pytest.approx((yv == c).sum() * 0.5)
        assert d["V_pred"] == pytest.approx((pred == c).sum() * 0.5)
        assert d["dV"] == pytest.approx(d["V_pred"] - d["V_ref"])
        assert d["V_soft"] == pytest.approx(pv[c].sum() * 0.5)
        assert d["rel_dV_soft"] == pytest.approx((pv[c].sum() - (yv == c).sum()) / (yv == c).sum())
        assert "NLL" not in d  # label models: NLL is categorical, per case
    # categorical NLL: sklearn on float64 with our clipping applied first (sklearn renormalises clipped rows)
    eps = np.finfo(np.float32).eps
    brute_nll = -np.mean(np.log(np.maximum(pv[yv, np.arange(n)], eps)))
    assert cal["NLL"] == pytest.approx(brute_nll, rel=1e-6)
    interior = (pv.min(0) > 1e-6)
    st_int = accumulate_case(p[:, valid][:, interior][:, None, None], ref[valid][interior][None, None], spec)
    _, cal_int = case_metrics(st_int, spec, 1.0)
    assert cal_int["NLL"] == pytest.approx(log_loss(yv[interior], (pv[:, interior] / pv[:, interior].sum(0)).T,
                                                                 labels=[0, 1, 2]), rel=1e-6)
    # overall Brier = 1/(C N) sum sum (y - p)^2 (DSC++ paper, eq. 11); top-label ECE; classwise ECE
    onehot = np.stack([yv == c for c in range(3)]).astype(np.float64)
    assert cal["Brier"] == pytest.approx(np.mean((onehot - pv) ** 2), rel=1e-9)
    conf = pv.max(0)
    assert cal["top_label_ECE"] == pytest.approx(brute_ece(conf, pred == yv, 15), abs=1e-12)
    assert cal["classwise_ECE"] == pytest.approx(np.mean([brute_ece(pv[c], yv == c, 15) for c in range(3)]))


def test_region_model_against_brute_force_and_sklearn():
    p, ref = sigmoid_case()
    st = accumulate_case(p, ref, REGIONS)
    m, cal = case_metrics(st, REGIONS, voxel_volume=1.0)
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    lm = LabelManager({"background": 0, "whole": [1, 2], "inner": [2]}, regions_class_order=[1, 2])
    seg = lm.convert_probabilities_to_segmentation(p)
    np.testing.assert_array_equal(seg, REGIONS.hard_map(p))
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask
    nlls = []
    for i, (key, region) in enumerate(zip(["(1, 2)", "(2,)"], [(1, 2), (2,)])):
        d = m[key]
        rm, pm = region_or_label_to_mask(ref, region), region_or_label_to_mask(seg, region)
        assert (d["TP"], d["FP"], d["FN"], d["TN"]) == brute_counts(rm, pm)
        y = rm.ravel()
        q = p[i].ravel().astype(np.float64)
        assert d["Brier"] == pytest.approx(brier_score_loss(y, q), rel=1e-9)
        assert d["one_vs_rest_ECE"] == pytest.approx(brute_ece(q, y, 15), abs=1e-12)
        eps = np.finfo(np.float32).eps
        nll = -np.mean(np.where(y, np.log(np.maximum(q, eps)), np.log(np.maximum(1 - q, eps))))
        assert d["NLL"] == pytest.approx(nll, rel=1e-6)
        inside = (q > 1e-6) & (q < 1 - 1e-6)
        st_i = accumulate_case(p[:, inside.reshape(ref.shape)][:, None, None], ref[inside.reshape(ref.shape)][None, None],
                               REGIONS)
        assert case_metrics(st_i, REGIONS, 1.0)[0][key]["NLL"] == pytest.approx(log_loss(y[inside], q[inside]),
                                                                                rel=1e-6)
        nlls.append(nll)
        assert d["soft_Dice"] == pytest.approx(2 * q[y].sum() / (q.sum() + y.sum()))
    assert cal["NLL"] == pytest.approx(np.mean(nlls), rel=1e-6)
    # overlapping regions have no top label: no top-label ECE, the classwise one is the mean over regions
    assert math.isnan(cal["top_label_ECE"])
    assert cal["classwise_ECE"] == pytest.approx(np.mean([brute_ece(p[i].ravel().astype(np.float64),
                                                                    region_or_label_to_mask(ref, r).ravel(), 15)
                                                          for i, r in enumerate([(1, 2), (2,)])]), abs=1e-12)


def test_sweep_counts_equal_exact_thresholding_voxel_for_voxel():
    grid = BinGrid(15, tuple(round(0.05 * i, 2) for i in range(1, 20)) + (1 / 3,))  # 1/3 needs R = 300... refused?
    assert grid.resolution % 3 == 0
    p, ref = softmax_case(shape=(9, 9, 9), seed=5)
    # add many values sitting exactly on and one ulp around each threshold
    flat = p.reshape(3, -1)
    for j, t in enumerate(grid.thresholds):
        for d, v in enumerate([np.float32(t), np.nextafter(np.float32(t), 1, dtype=np.float32),
                               np.nextafter(np.float32(t), 0, dtype=np.float32)]):
            col = 100 + 3 * j + d
            flat[:, col] = 0
            flat[2, col] = v
            flat[0, col] = np.float32(1) - v
    spec = TaskSpec.labels(3)
    st = accumulate_case(p, ref, spec, grid)
    for c in (1, 2):
        q = p[c].astype(np.float64)
        for j, t in enumerate(grid.thresholds):
            above = q > t
            assert st.sweep[c, j, 0] == np.sum(above & (ref == c)), (c, t)
            assert st.sweep[c, j, 1] == np.sum(above & (ref != c)), (c, t)
    sw = threshold_sweep([st], spec, grid)
    j = grid.thresholds.index(0.5)
    tp = np.sum((p[1] > 0.5) & (ref == 1))
    fp = np.sum((p[1] > 0.5) & (ref != 1))
    fn = np.sum((p[1] <= 0.5) & (ref == 1))
    assert sw["per_class"]["1"]["Dice_pooled"][j] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert sw["per_class"]["1"]["precision"][j] == pytest.approx(precision_score(ref.ravel() == 1, p[1].ravel() > 0.5))
    assert sw["per_class"]["1"]["recall"][j] == pytest.approx(recall_score(ref.ravel() == 1, p[1].ravel() > 0.5))


def test_exact_zero_and_one_land_in_first_and_last_bin():
    p = np.zeros((2, 4, 5, 6), np.float32)
    p[1, :2] = 1
    p[0] = 1 - p[1]
    ref = (p[1] > 0.5).astype(np.uint8)
    ref[0, 0, :3] = 0  # a few wrong ones
    spec = TaskSpec.labels(2)
    st = accumulate_case(p, ref, spec)
    rel = st.reliability[1]
    assert rel[:, 0].sum() == p[1].size  # nobody dropped
    assert rel[0, 0] == np.sum(p[1] == 0) and rel[-1, 0] == np.sum(p[1] == 1)
    assert rel[1:-1, 0].sum() == 0
    m, cal = case_metrics(st, spec, 1.0)
    assert m["1"]["one_vs_rest_ECE"] == pytest.approx(3 / p[1].size)
    # the clipped log keeps NLL finite: 3 voxels with p_true = 0
    assert cal["NLL"] == pytest.approx(-3 * np.log(np.finfo(np.float32).eps) / p[1].size)


def test_chunking_and_lanes_do_not_change_results():
    p, ref = softmax_case(shape=(10, 11, 12), seed=3, ignore=3)
    spec = TaskSpec.labels(3, ignore_label=3)
    a = accumulate_case(p, ref, spec)
    b = accumulate_case(p, ref, spec, chunk=37)
    for k, v in a.as_dict().items():
        if isinstance(v, np.ndarray):
            np.testing.assert_allclose(v, getattr(b, k), rtol=1e-12, err_msg=k)
        elif v is None:
            assert getattr(b, k) is None, k
        else:
            assert v == pytest.approx(getattr(b, k), rel=1e-12), k


def test_empty_reference_and_prediction_are_nan_and_counted_not_averaged():
    spec = TaskSpec.labels(3)
    p = np.zeros((3, 4, 4, 4), np.float32)
    p[0] = 1
    ref = np.zeros((4, 4, 4), np.uint8)
    st_empty = accumulate_case(p, ref, spec)
    m, _ = case_metrics(st_empty, spec, 1.0)
    assert math.isnan(m["1"]["Dice"]) and math.isnan(m["1"]["IoU"]) and math.isnan(m["1"]["rel_dV"])
    assert math.isnan(m["1"]["soft_Dice"]) and m["1"]["dV"] == 0
    p2, ref2 = softmax_case(shape=(4, 4, 4), seed=9, edges=False)
    m2, _ = case_metrics(accumulate_case(p2, ref2, spec), spec, 1.0)
    rows = [{"metrics": m}, {"metrics": m2}]
    mean, fg, counts = means(rows, spec.keys)
    assert mean["1"]["Dice"] == pytest.approx(m2["1"]["Dice"])  # np.nanmean, as nnU-Net
    assert counts["1"]["Dice"] == 1 and counts["1"]["TP"] == 0
    assert fg["Dice"] == pytest.approx(np.mean([mean["1"]["Dice"], mean["2"]["Dice"]]))


def test_all_voxels_ignored_gives_nan_calibration_not_crash():
    spec = TaskSpec.labels(2, ignore_label=2)
    p = np.full((2, 3, 3, 3), 0.5, np.float32)
    ref = np.full((3, 3, 3), 2, np.uint8)
    st = accumulate_case(p, ref, spec)
    m, cal = case_metrics(st, spec, 1.0)
    assert st.n_valid == 0 and st.n_ignored == 27
    assert math.isnan(m["1"]["Dice"]) and math.isnan(cal["NLL"]) and math.isnan(cal["top_label_ECE"])


def test_pooled_calibration_equals_brute_force_over_all_cases():
    spec = TaskSpec.labels(3, ignore_label=3)
    cases = [softmax_case(shape=(5, 6, 7), seed=s, ignore=3) for s in range(3)]
    stats = [accumulate_case(p, r, spec) for p, r in cases]
    pooled = pooled_calibration(stats, spec, GRID)
    P = np.concatenate([p[:, r != 3] for p, r in cases], axis=1).astype(np.float64)
    Y = np.concatenate([r[r != 3] for _, r in cases]).astype(int)
    for c in range(3):
        assert pooled["per_channel"][str(c)]["one_vs_rest_ECE"] == pytest.approx(brute_ece(P[c], Y == c, 15), abs=1e-12)
        assert pooled["per_channel"][str(c)]["Brier"] == pytest.approx(brier_score_loss(Y == c, P[c]), rel=1e-9)
        cnt = pooled["per_channel"][str(c)]["count"]
        assert sum(cnt) == Y.size
    assert pooled["top_label_ECE"] == pytest.approx(brute_ece(P.max(0), P.argmax(0) == Y, 15), abs=1e-12)
    eps = np.finfo(np.float32).eps
    assert pooled["NLL"] == pytest.approx(-np.mean(np.log(np.maximum(P[Y, np.arange(Y.size)], eps))), rel=1e-6)


def test_float16_softmax_of_nnunet_v1_is_accepted():
    p, ref = softmax_case(seed=4, edges=False)
    spec = TaskSpec.labels(3)
    a = case_metrics(accumulate_case(p, ref, spec), spec, 1.0)[1]
    b = case_metrics(accumulate_case(p.astype(np.float16), ref, spec), spec, 1.0)[1]
    assert b["Brier"] == pytest.approx(a["Brier"], abs=1e-3)


@pytest.mark.parametrize("damage, message", [
    ("nan", "NaN"), ("sum", "do not sum to 1"), ("channels", "expected 3 channels"), ("shape", "do not match"),
    ("label", "label 7 is not declared"), ("negative", "outside [0, 1]")])
def test_bad_arrays_raise_one_line_errors_naming_the_file(damage, message):
    p, ref = softmax_case(seed=2, edges=False)
    spec = TaskSpec.labels(3)
    if damage == "nan":
        p[1, 2, 3, 4] = np.nan
    elif damage == "sum":
        p[1, 2, 3, 4] += 0.2
    elif damage == "channels":
        p = p[:2]
    elif damage == "shape":
        p = p[:, 1:]
    elif damage == "label":
        ref[0, 0, 0] = 7
    elif damage == "negative":
        p[1, 2, 3, 4] = -0.5
    with pytest.raises(EvaluationError) as e:
        accumulate_case(p, ref, spec, name="/x/case_001.npz", reference_name="/y/case_001.nii.gz")
    msg = str(e.value)
    assert message in msg and "\n" not in msg
    assert "case_001" in msg


def test_label_thresholds_rule():
    spec = TaskSpec.labels(3)
    p = np.array([[0.5, 0.2, 0.1, 0.4], [0.3, 0.45, 0.6, 0.3], [0.2, 0.35, 0.3, 0.3]], np.float32)[:, None, None]
    np.testing.assert_array_equal(spec.hard_map(p)[0, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(spec.hard_map(p, [0.25, 0.25])[0, 0], [1, 1, 1, 1])  # largest p above its T
    np.testing.assert_array_equal(spec.hard_map(p, [0.5, 0.5])[0, 0], [0, 0, 1, 0])
    np.testing.assert_array_equal(spec.hard_map(p, [0.9, 0.32])[0, 0], [0, 2, 0, 0])


# ---------------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------------
def test_holm_against_definition():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    adj = holm(p)
    # sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, 0.06 (monotone)
    np.testing.assert_allclose(adj[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj[4])
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.random(6) ** 3
        a = holm(q)
        order = np.argsort(q)
        brute = np.maximum.accumulate([min(1, (6 - i) * q[j]) for i, j in enumerate(order)])
        np.testing.assert_allclose(a[order], brute)


def test_bootstrap_reproducible_and_against_naive_loop():
    x = np.random.default_rng(3).normal(0.3, 1, 25)
    a = bootstrap_mean(x, n_boot=2000, seed=7)
    b = bootstrap_mean(x, n_boot=2000, seed=7)
    assert a == b
    rng = np.random.default_rng(7)
    boot = np.array([x[rng.integers(0, 25, 25)].mean() for _ in range(2000)])
    assert a["ci_low"] == pytest.approx(np.quantile(boot, 0.025))
    assert a["ci_high"] == pytest.approx(np.quantile(boot, 0.975))
    p = min(1, 2 * min((1 + (boot <= 0).sum()) / 2001, (1 + (boot >= 0).sum()) / 2001))
    assert a["p_bootstrap"] == pytest.approx(p)
    assert a["ci_low"] <= x.mean() <= a["ci_high"]


def test_paired_and_one_sample():
    rng = np.random.default_rng(1)
    a = rng.normal(0.8, 0.05, 30)
    b = a + 0.05 + rng.normal(0, 0.01, 30)
    b[3] = np.nan
    r = paired(a, b, n_boot=3000)
    assert r["n"] == 29 and r["n_dropped_nan"] == 1
    assert r["mean_diff"] == pytest.approx(np.nanmean(b - a))
    from scipy.stats import wilcoxon as w
    ok = ~np.isnan(b)
    assert r["p_wilcoxon"] == pytest.approx(w(b[ok] - a[ok]).pvalue)
    assert r["p_bootstrap"] < 0.01
    assert wilcoxon(np.zeros(5)) == 1.0 and bootstrap_mean(np.zeros(5))["p_bootstrap"] == 1.0
    # all differences positive: never "significant" with 2 cases (floor 2^(1-n)), as the exact tests
    assert bootstrap_mean([0.3, 0.5])["p_bootstrap"] == 0.5 and wilcoxon([0.3, 0.5]) == pytest.approx(0.5)
    assert bootstrap_mean(np.full(12, 0.2) + np.arange(12) * 0.01)["p_bootstrap"] == pytest.approx(2.0 ** -11)
    assert one_sample(rng.normal(0, 1, 40), n_boot=2000)["p_bootstrap"] > 0.01


def test_size_deciles_and_dice_jaccard_relation():
    rows = []
    for i in range(25):
        d = 0.3 + 0.02 * i
        rows.append({"metrics": {"1": {"V_ref": float(i), "Dice": d, "IoU": d / (2 - d), "soft_Dice": d,
                                       "n_ref": 0 if i == 0 else 10}}})
    dec = size_deciles(rows, ["1"])["1"]
    assert sum(dec["n_cases"]) == 24 and len(dec["n_cases"]) == 10 and dec["n_empty_reference_left_out"] == 1
    assert dec["Dice_mean"] == sorted(dec["Dice_mean"])
    assert dec["V_ref_min"][0] == 1.0 and dec["V_ref_max"][-1] == 24.0
    chk = dice_jaccard_check(rows, ["1"])["1"]
    assert chk["holds"] and chk["max_abs_error_J_vs_D_over_2_minus_D"] < 1e-12


def test_voxel_volume_2d_dummy_spacing(tmp_path):
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_losses.evaluation.cases import voxel_volume
    img = sitk.GetImageFromArray(np.zeros((5, 7), np.uint8))  # a genuine 2D image
    img.SetSpacing((0.5, 0.8))
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    seg, props = SimpleITKIO().read_seg(str(tmp_path / "a.nii.gz"))
    assert props["spacing"][0] >= 999 * 0.8 - 1e-9  # nnU-Net's dummy first spacing
    vv, unit, is2d = voxel_volume(props["spacing"], seg.shape[1:])
    assert is2d and unit == "cm^2" and vv == pytest.approx(0.5 * 0.8 / 100)
    vv3, unit3, _ = voxel_volume([2.0, 0.5, 0.5], (1, 7, 5))  # single-slice 3D image: a real slab
    assert unit3 == "ml" and vv3 == pytest.approx(0.5 / 1000)


# ---------------------------------------------------------------------------------------------------------------
# the npz reader (big inflate steps, CRC checked) returns exactly what np.load returns
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(params=["isal", "zlib"])
def inflater(request, monkeypatch):
    """Run with ISA-L (the default where it is installed) and with the standard library's zlib fallback."""
    import zlib
    import nnunet_losses.evaluation.npz as npz
    if request.param == "isal":
        isal_zlib = pytest.importorskip("isal.isal_zlib")
        monkeypatch.setattr(npz, "_inflater", isal_zlib)
        monkeypatch.setattr(npz, "_INFLATE_ERRORS", (zlib.error, isal_zlib.error))
    else:
        monkeypatch.setattr(npz, "_inflater", zlib)
        monkeypatch.setattr(npz, "_INFLATE_ERRORS", (zlib.error,))
    return request.param


def test_isal_is_used_where_installed():
    """pyproject.toml installs isal on x86_64/aarch64: the reader must then really use it."""
    import platform
    import nnunet_losses.evaluation.npz as npz
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        assert npz._inflater.__name__ == "isal.isal_zlib"


@pytest.mark.parametrize("variant", ["compressed", "stored", "float16_softmax", "fortran", "empty"])
def test_npz_reader_equals_np_load(tmp_path, variant, monkeypatch, inflater):
    import nnunet_losses.evaluation.npz as npz
    monkeypatch.setattr(npz, "STEP", 1000)  # many small steps: exercises the stream bookkeeping
    monkeypatch.setattr(npz, "IN_STEP", 777)
    a = np.random.default_rng(0).random((3, 17, 19, 5)).astype(np.float32)
    a[:, :4] = 0
    key, f = "probabilities", tmp_path / "x.npz"
    if variant == "compressed":
        np.savez_compressed(f, probabilities=a, other=np.arange(3))
    elif variant == "stored":
        np.savez(f, probabilities=a)
    elif variant == "float16_softmax":
        key = "softmax"
        a = a.astype(np.float16)
        np.savez_compressed(f, softmax=a)
    elif variant == "fortran":
        a = np.asfortranarray(a)
        np.savez_compressed(f, probabilities=a)
    else:
        a = np.zeros((2, 0, 3), np.float32)
        np.savez_compressed(f, probabilities=a)
    k, b = npz.read_npz_array(f, ("probabilities", "softmax"))
    ref = np.load(f)[key]
    assert k == key and b.dtype == ref.dtype and b.shape == ref.shape
    np.testing.assert_array_equal(b, ref)


def test_npz_reader_damaged_files(tmp_path, inflater):
    from nnunet_losses.evaluation.cases import load_probabilities
    a = np.random.default_rng(0).random((2, 30, 30, 30)).astype(np.float32)
    f = tmp_path / "case_001.npz"
    np.savez_compressed(f, probabilities=a)
    raw = bytearray(f.read_bytes())
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    flips = []
    for where in (0.2, 0.35, 0.5, 0.65, 0.8):  # flip bits inside the deflate stream: bad codes or a CRC mismatch
        bad = bytearray(raw)
        bad[int(len(raw) * where)] ^= 0xFF
        (tmp_path / f"flip{where}.npz").write_bytes(bad)
        flips.append((f"flip{where}.npz", "damaged"))
    np.savez_compressed(tmp_path / "other.npz", seg=a)
    for name, match in (("trunc.npz", "damaged"), *flips, ("other.npz", "no 'probabilities'"),
                        ("missing.npz", "missing")):
        with pytest.raises(EvaluationError, match=match) as e:
            load_probabilities(tmp_path / name, hint="rerun X")
        assert name in str(e.value) and "\n" not in str(e.value)
