"""Overlap and compound losses against the slow float64 references of tests/reference_impl.py.

softdice, softjaccard, dscpp, tversky, focal_tversky, their ++ forms, combo, combo_pp, unified_focal
(asymmetric and symmetric), unified_focal_pp and dice_ce, in every input mode (softmax label maps with C = 2, 3, 4;
sigmoid region maps with R = 1, 2, 3; 2D and 3D; with and without ignore label), per-sample and batch
statistics, with and without background, default and non-default hyper-parameters. Plus the identities between
them and the Dice/Jaccard relations of Bertels et al. (seed paper 002).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_losses import functional as Fn

import reference_impl as ref
from loss_cases import lib_loss, mode_id, with_do_bg

RTOL, ATOL = 1e-10, 1e-12


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py

#: (region, channels, spatial) -- labels: C classes incl. background; regions: R regions
SHAPES = [(False, 2, (4, 5)), (False, 3, (4, 5, 3)), (False, 4, (5, 4)),
          (True, 1, (3, 4, 3)), (True, 2, (4, 5)), (True, 3, (4, 3, 3))]
SHAPE_IDS = [f"{'region' if r else 'label'}{k}-{len(s)}d" for r, k, s in SHAPES]

#: (loss name, non-default hyper-parameters); {} checks the library's defaults against the papers' (Table 2)
OVERLAP_CASES = [
    ("softdice", {}), ("softdice", {"smooth": 0.0}), ("softdice", {"smooth": 1.0}),
    ("softjaccard", {}), ("softjaccard", {"smooth": 0.0}), ("softjaccard", {"smooth": 0.5}),
    ("dscpp", {}), ("dscpp", {"gamma": 0.5}), ("dscpp", {"gamma": 3.0, "smooth": 1.0}),
    ("tversky", {}), ("tversky", {"alpha": 0.8, "beta": 0.2, "smooth": 0.0}), ("tversky", {"gamma_pp": 1.5}),
    ("focal_tversky", {}), ("focal_tversky", {"alpha": 0.6, "beta": 0.4, "gamma": 0.75}),
    ("focal_tversky", {"gamma": 2.0, "gamma_pp": 0.5, "smooth": 1.0}),
    ("tversky_pp", {}), ("tversky_pp", {"alpha": 0.5, "beta": 0.5, "gamma_pp": 3.0}),
    ("focal_tversky_pp", {}), ("focal_tversky_pp", {"alpha": 0.7, "beta": 0.3, "gamma": 0.8, "gamma_pp": 1.5}),
    ("combo", {}), ("combo", {"alpha": 0.3, "beta": 0.8}), ("combo", {"alpha": 0.9, "beta": 0.1, "smooth": 0.0}),
    ("combo_pp", {}), ("combo_pp", {"alpha": 0.7, "beta": 0.2, "gamma_pp": 3.0}),
    ("unified_focal", {}), ("unified_focal", {"asymmetric": False}),
    ("unified_focal", {"lambda_": 0.2, "delta": 0.7, "gamma": 0.3}),
    ("unified_focal", {"lambda_": 0.8, "delta": 0.4, "gamma": 0.7, "asymmetric": False, "smooth": 1.0}),
    ("unified_focal", {"gamma": 0.0}),
    ("unified_focal_pp", {}), ("unified_focal_pp", {"asymmetric": False, "gamma_pp": 3.0, "delta": 0.3}),
    ("dice_ce", {}), ("dice_ce", {"weight_ce": 0.3, "weight_dice": 2.0, "smooth": 1.0}),
    ("dml", {}), ("dml", {"smooth": 1.0}), ("jml", {}), ("jml", {"smooth": 0.0}),
    ("metric_tversky", {}), ("metric_tversky", {"alpha": 0.8, "beta": 0.2, "smooth": 1.0}),
]


def case_id(case):
    name, kw = case
    return name + ("" if not kw else "-" + "-".join(f"{k}={v}" for k, v in kw.items()))


SHAPES_BG = with_do_bg(SHAPES)


@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample", "batch"])
@pytest.mark.parametrize("region,n_ch,spatial,do_bg", SHAPES_BG, ids=[mode_id(m) for m in SHAPES_BG])
@pytest.mark.parametrize("case", OVERLAP_CASES, ids=[case_id(c) for c in OVERLAP_CASES])
def test_overlap_and_compound_losses_match_reference(case, region, n_ch, spatial, batch_dice, do_bg, with_ignore):
    name, kwargs = case
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore,
                                           ref.seed_of(name, region, n_ch, spatial, with_ignore))
    expected = ref.REFERENCES[name](logits, target, region=region, ignore_label=ignore, batch_dice=batch_dice,
                                    do_bg=do_bg, **kwargs)
    # region maps as float and as bool (nnU-Net's data loader gives bool region maps; the library may take a
    # hard-target path for those)
    for tgt in [target, target.astype(bool)] if region else [target]:
        value, grad = lib_loss(name, logits, tgt, region, ignore, batch_dice=batch_dice, do_bg=do_bg, **kwargs)
        assert value.dtype == torch.float64
        assert value.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("region,n_ch,spatial", SHAPES, ids=SHAPE_IDS)
def test_unified_focal_default_do_bg_is_true(region, n_ch, spatial):
    """Unified Focal's background Tversky term needs the background channel: do_bg defaults to True there."""
    logits, target, ignore = ref.make_case(region, n_ch, spatial, False, ref.seed_of("uf-bg", region, n_ch))
    for name in ("unified_focal", "unified_focal_pp"):
        value, _ = lib_loss(name, logits, target, region, ignore)
        expected = ref.REFERENCES[name](logits, target, region=region)  # reference default: do_bg=True
        assert value.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)
    for name in ("softdice", "dscpp", "tversky", "combo", "dice_ce"):  # nnU-Net's default: no background
        value, _ = lib_loss(name, logits, target, region, ignore)
        assert value.item() == pytest.approx(ref.REFERENCES[name](logits, target, region=region, do_bg=False),
                                             rel=RTOL, abs=ATOL)


def test_reference_dice_by_hand():
    """The reference itself, on numbers worked out by hand (one sample, 2 classes, 3 voxels, logits [0, x])."""
    x = np.array([0.0, 2.0, -1.0])
    logits = np.stack([np.zeros(3), x]).reshape(1, 2, 3, 1)
    target = np.array([1, 1, 0]).reshape(1, 1, 3, 1)
    p = 1 / (1 + np.exp(-x))
    tp, fp, fn = p[0] + p[1], p[2], (1 - p[0]) + (1 - p[1])
    assert ref.ref_softdice(logits, target, smooth=0) == pytest.approx(1 - 2 * tp / (2 * tp + fp + fn), rel=1e-14)
    assert ref.ref_dscpp(logits, target, smooth=0, gamma=2) == pytest.approx(
        1 - 2 * tp / (2 * tp + p[2] ** 2 + (1 - p[0]) ** 2 + (1 - p[1]) ** 2), rel=1e-14)
    assert ref.ref_softjaccard(logits, target, smooth=0) == pytest.approx(1 - tp / (tp + fp + fn), rel=1e-14)
    assert ref.ref_tversky(logits, target, smooth=0, alpha=0.3, beta=0.7) == pytest.approx(
        1 - tp / (tp + 0.3 * fp + 0.7 * fn), rel=1e-14)


# ----------------------------------------------------------------------------------------------------------------
# identities between the overlap losses
# ----------------------------------------------------------------------------------------------------------------
IDENTITY_MODES = [(False, 3, (4, 5, 3), False), (False, 2, (4, 5), True), (True, 2, (4, 5), False),
                  (True, 3, (3, 4, 3), True)]
IDENTITY_IDS = ["label3-3d", "label2-2d-ignore", "region2-2d", "region3-3d-ignore"]


def _both(name_a, kw_a, name_b, kw_b, mode, batch_dice, do_bg):
    region, n_ch, spatial, with_ignore = mode
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore,
                                           ref.seed_of("identity", name_a, name_b, mode))
    a = lib_loss(name_a, logits, target, region, ignore, batch_dice=batch_dice, do_bg=do_bg, **kw_a)
    b = lib_loss(name_b, logits, target, region, ignore, batch_dice=batch_dice, do_bg=do_bg, **kw_b)
    return a, b


IDENTITIES = [
    # DSC++ with gamma = 1 is the soft Dice loss ([DSC++] Sect. 2.4)
    ("dscpp", {"gamma": 1.0}, "softdice", {}),
    ("dscpp", {"gamma": 1.0, "smooth": 0.0}, "softdice", {"smooth": 0.0}),
    # Tversky with alpha = beta = 1/2 is Dice (without smoothing: TI = TP/(TP + (FP+FN)/2) = 2TP/(2TP+FP+FN))
    ("tversky", {"alpha": 0.5, "beta": 0.5, "smooth": 0.0}, "softdice", {"smooth": 0.0}),
    # Focal Tversky with gamma = 1 is Tversky
    ("focal_tversky", {"gamma": 1.0, "alpha": 0.4, "beta": 0.6}, "tversky", {"alpha": 0.4, "beta": 0.6}),
    # the ++ forms with gamma_pp = 1 are the plain forms
    ("tversky_pp", {"gamma_pp": 1.0}, "tversky", {}),
    ("focal_tversky_pp", {"gamma_pp": 1.0}, "focal_tversky", {}),
    ("combo_pp", {"gamma_pp": 1.0}, "combo", {}),
    ("unified_focal_pp", {"gamma_pp": 1.0}, "unified_focal", {}),
    ("unified_focal_pp", {"gamma_pp": 1.0, "asymmetric": False}, "unified_focal", {"asymmetric": False}),
    # and the ++ forms are the plain forms with the DSC++ exponent
    ("tversky_pp", {}, "tversky", {"gamma_pp": 2.0}),
    ("combo_pp", {"alpha": 0.4}, "combo", {"alpha": 0.4, "gamma_pp": 2.0}),
    # Combo with alpha = 0 is the soft Dice loss
    ("combo", {"alpha": 0.0}, "softdice", {}),
    # dice_ce without its CE term is the soft Dice loss
    ("dice_ce", {"weight_ce": 0.0}, "softdice", {}),
    # on hard targets the metric losses (Wang et al. 2023) are soft Dice / Jaccard / Tversky, values and gradients
    ("dml", {}, "softdice", {}), ("dml", {"smooth": 1.0}, "softdice", {"smooth": 1.0}),
    ("jml", {}, "softjaccard", {}), ("metric_tversky", {"alpha": 1.0, "beta": 1.0}, "jml", {}),
    ("metric_tversky", {"alpha": 0.8, "beta": 0.2}, "tversky", {"alpha": 0.8, "beta": 0.2}),
]


IDENTITY_MODES_BG = [(m, bg) for m in IDENTITY_MODES for bg in ((False,) if m[0] else (False, True))]


@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample", "batch"])
@pytest.mark.parametrize("mode,do_bg", IDENTITY_MODES_BG,  # region maps: do_bg cannot matter (see with_do_bg)
                         ids=[f"{IDENTITY_IDS[IDENTITY_MODES.index(m)]}-{'bg' if bg else 'nobg'}"
                              for m, bg in IDENTITY_MODES_BG])
@pytest.mark.parametrize("identity", IDENTITIES,
                         ids=[f"{a}{ka}={b}{kb}".replace(" ", "") for a, ka, b, kb in IDENTITIES])
def test_overlap_identities_values_and_gradients(identity, mode, do_bg, batch_dice):
    name_a, kw_a, name_b, kw_b = identity
    (va, ga), (vb, gb) = _both(name_a, kw_a, name_b, kw_b, mode, batch_dice, do_bg)
    torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", IDENTITY_MODES, ids=IDENTITY_IDS)
def test_unified_focal_limits(mode):
    """lambda = 1 is the pure asymmetric focal term, lambda = 0 the pure (asymmetric) focal Tversky term; with
    gamma = 0 the latter is 1 - mean TI (Tversky with alpha = 1 - delta, beta = delta) and the symmetric focal
    term is CE weighted by (1 - delta, delta)."""
    region, n_ch, spatial, with_ignore = mode
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore, ref.seed_of("uf-limits", mode))
    kw = dict(region=region, ignore_label=ignore)
    ft, _ = lib_loss("unified_focal", logits, target, region, ignore, lambda_=0.0, gamma=0.0, delta=0.7,
                     do_bg=True)
    tv, _ = lib_loss("tversky", logits, target, region, ignore, alpha=0.3, beta=0.7, do_bg=True)
    torch.testing.assert_close(ft, tv, rtol=1e-12, atol=1e-14)
    focal, _ = lib_loss("unified_focal", logits, target, region, ignore, lambda_=1.0, gamma=0.0, delta=0.5)
    ce, _ = lib_loss("ce", logits, target, region, ignore)
    torch.testing.assert_close(focal, 0.5 * ce, rtol=1e-12, atol=1e-14)
    assert ft.item() == pytest.approx(ref.ref_unified_focal(logits, target, lambda_=0.0, gamma=0.0, delta=0.7,
                                                            **kw), rel=RTOL)


# ----------------------------------------------------------------------------------------------------------------
# Dice / Jaccard relations (Bertels et al. 2019, Eq. 4 and Proposition 1)
# ----------------------------------------------------------------------------------------------------------------
ABS_BOUND = 3 - 2 * math.sqrt(2)  # 0.17157...


def _random_mask_pairs(n_pairs=300, seed=2):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_pairs):
        size = int(rng.integers(5, 400))
        p_y, p_hat = rng.random(), rng.random()
        y = rng.random(size) < p_y
        y_hat = np.where(rng.random(size) < rng.random(), y, rng.random(size) < p_hat)  # correlated predictions
        if y.any() or y_hat.any():
            pairs.append((y, y_hat))
    return pairs


def _check_dice_jaccard_relations(d, j):
    assert 0 <= j <= d <= 1 + 1e-15                                       # J <= D (1 - D <= 1 - J)
    assert d == pytest.approx(2 * j / (1 + j), rel=1e-12, abs=1e-15)       # Eq. 4
    assert j == pytest.approx(d / (2 - d), rel=1e-12, abs=1e-15)           # Eq. 4
    assert abs(d - j) <= ABS_BOUND + 1e-12                                 # Prop. 1, absolute error
    assert d <= j * (1 + 1) + 1e-15 and j >= d / 2 - 1e-15                 # Prop. 1, relative error 1


def test_dice_jaccard_relations_on_random_hard_masks():
    pairs = _random_mask_pairs()
    assert len(pairs) > 250
    ds, js = [], []
    for y, y_hat in pairs:
        d, j = ref.hard_dice(y, y_hat), ref.hard_jaccard(y, y_hat)
        _check_dice_jaccard_relations(d, j)
        ds.append(d)
        js.append(j)
    # risk: E[1 - D] <= E[1 - J] <= phi(E[1 - D]), phi(x) = 2x / (1 + x)  (Sect. 2, Jensen)
    e_d, e_j = 1 - np.mean(ds), 1 - np.mean(js)
    assert e_d <= e_j <= 2 * e_d / (1 + e_d) + 1e-15


def test_dice_jaccard_absolute_bound_attained_near_2_minus_sqrt2():
    """sup_x |x - x/(2-x)| = 3 - 2 sqrt(2) at x = 2 - sqrt(2): masks with D ~ 0.5858 come within 1e-6 of it."""
    n = 100000
    k = round((2 - math.sqrt(2)) * n)  # |y| = |y~| = n, |y n y~| = k  ->  D = k / n
    y = np.zeros(2 * n, bool)
    y_hat = np.zeros(2 * n, bool)
    y[:n] = True
    y_hat[n - k:2 * n - k] = True
    d, j = ref.hard_dice(y, y_hat), ref.hard_jaccard(y, y_hat)
    assert d == pytest.approx(2 - math.sqrt(2), abs=1e-5)
    assert d - j <= ABS_BOUND + 1e-15
    assert d - j == pytest.approx(ABS_BOUND, abs=1e-9)
    # and the relative bound is approached as D -> 0: D / J -> 2
    y_hat_small = np.zeros(2 * n, bool)
    y_hat_small[n - 1:2 * n - 1] = True  # one voxel of overlap
    d, j = ref.hard_dice(y, y_hat_small), ref.hard_jaccard(y, y_hat_small)
    assert d / j == pytest.approx(2, rel=1e-4) and d / j <= 2


def test_library_scores_on_hard_statistics_satisfy_dice_jaccard_relations():
    """functional.dice_score / jaccard_score (smooth = 0) on hard (integer) TP/FP/FN are Bertels' D and J."""
    pairs = _random_mask_pairs(seed=5)
    stats = torch.tensor([[float(np.sum(y & h)), float(np.sum(~y & h)), float(np.sum(y & ~h))] for y, h in pairs],
                         dtype=torch.float64)
    tp, fp, fn = stats.unbind(1)
    d = Fn.dice_score(tp, fp, fn, smooth=0.0)
    j = Fn.jaccard_score(tp, fp, fn, smooth=0.0)
    for (y, y_hat), di, ji in zip(pairs, d.tolist(), j.tolist()):
        assert di == pytest.approx(ref.hard_dice(y, y_hat), rel=1e-14, abs=1e-15)
        assert ji == pytest.approx(ref.hard_jaccard(y, y_hat), rel=1e-14, abs=1e-15)
        _check_dice_jaccard_relations(di, ji)


@pytest.mark.parametrize("region", [False, True], ids=["softmax", "sigmoid"])
def test_soft_losses_on_hard_probabilities_are_hard_dice_and_jaccard(region):
    """soft Dice / soft Jaccard (smooth 0, per image) on hard probabilities (logits +-60: p is 0 or 1 to float64
    precision) are 1 - D and 1 - J of the thresholded prediction, and satisfy Bertels' relations."""
    rng = np.random.default_rng(11)
    n_samples, shape = 6, (7, 9)
    y = rng.random((n_samples,) + shape) < 0.3
    y_hat = np.where(rng.random((n_samples,) + shape) < 0.6, y, rng.random((n_samples,) + shape) < 0.4)
    y[:, 0, 0] = True  # D and J defined in every sample
    x = np.where(y_hat, 60.0, -60.0)[:, None]
    if region:
        logits, target = x, y[:, None].astype(np.float64)
    else:
        logits, target = np.concatenate([np.zeros_like(x), x], 1), y[:, None].astype(np.int64)
    sd, _ = lib_loss("softdice", logits, target, region, None, smooth=0.0)
    sj, _ = lib_loss("softjaccard", logits, target, region, None, smooth=0.0)
    ds = [ref.hard_dice(y[b], y_hat[b]) for b in range(n_samples)]
    js = [ref.hard_jaccard(y[b], y_hat[b]) for b in range(n_samples)]
    assert 1 - sd.item() == pytest.approx(np.mean(ds), rel=1e-12)
    assert 1 - sj.item() == pytest.approx(np.mean(js), rel=1e-12)
    for b in range(n_samples):  # per image, via single-sample batches
        lb = logits[b:b + 1]
        tb = target[b:b + 1]
        d = 1 - lib_loss("softdice", lb, tb, region, None, smooth=0.0)[0].item()
        j = 1 - lib_loss("softjaccard", lb, tb, region, None, smooth=0.0)[0].item()
        assert d == pytest.approx(ds[b], rel=1e-12) and j == pytest.approx(js[b], rel=1e-12)
        _check_dice_jaccard_relations(min(d, 1.0), min(j, 1.0))
