"""Decision rules (evaluation/decisions.py) against float64 references written from the equations: a full sort,
brute force over every subset of small cases, and the RankSEG package."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nnunet_losses.evaluation.decisions import (FineHistogram, VOXEL_RULES, case_cuts, channel_cuts, cut_mask,
                                                decision_metrics, rule_label_map)
from nnunet_losses.evaluation.spec import TaskSpec


# ---------------------------------------------------------------------------------------------- references
def ref_order(p):
    return np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")


def ref_top_k(p, k):
    m = np.zeros(len(p), dtype=bool)
    m[ref_order(p)[:k]] = True
    return m


def ref_dice_optimal(p):
    """Nordstrom: D* = max_k 2 sum_{i<=k} psi_i / (P + k); keep p >= D*/2 (empty when P = 0)."""
    p = np.asarray(p, dtype=np.float64)
    P = p.sum()
    if P == 0:
        return np.zeros(len(p), dtype=bool), 0.0
    psi = np.sort(p)[::-1]
    s, best = 0.0, -1.0
    for k in range(1, len(p) + 1):
        s += psi[k - 1]
        best = max(best, 2 * s / (P + k))
    return p >= best / 2, best


def ref_rma(p):
    """RankSEG-RMA: top tau, tau = smallest argmax over 0..N of 2 S_tau / (P + 1 + tau); empty if max p <= 0.5."""
    p = np.asarray(p, dtype=np.float64)
    if p.max() <= 0.5:
        return np.zeros(len(p), dtype=bool)
    P = p.sum()
    psi = p[ref_order(p)]
    scores = [0.0] + [2 * psi[:t].sum() / (P + 1 + t) for t in range(1, len(p) + 1)]
    return ref_top_k(p, int(np.argmax(scores)))


def ref_volume_matched(p):
    return ref_top_k(p, int(math.floor(np.sum(p, dtype=np.float64) + 0.5)))


REFS = {"dice_optimal": lambda p: ref_dice_optimal(p)[0], "rankseg_rma": ref_rma, "volume_matched": ref_volume_matched}


def random_channel(rng, n, kind):
    if kind == "uniform":
        p = rng.uniform(0, 1, n)
    elif kind == "polarised":  # mostly saturated, exact 0/1 included, as nnU-Net's exported maps
        p = rng.choice([0.0, 1.0, 1e-7, 1 - 1e-7], n, p=[0.5, 0.2, 0.2, 0.1])
        k = n // 10
        p[:k] = rng.uniform(0, 1, k)
    elif kind == "small":  # calibrated-looking small object: many tiny p
        p = rng.beta(0.3, 6, n)
    elif kind == "ties":  # few distinct values: ties at every cut
        p = rng.integers(0, 9, n) / 8.0
    else:
        raise ValueError(kind)
    return p


# ---------------------------------------------------------------------------------------------- tests
@pytest.fixture(params=["sort at once", "narrowed"])
def narrowing(request, monkeypatch):
    """Large brackets are narrowed by histograms of their own values before the sort: force it on small cases."""
    import nnunet_losses.evaluation.decisions as dec
    if request.param == "narrowed":
        monkeypatch.setattr(dec, "SORT_LIMIT", 16)
        monkeypatch.setattr(dec, "SUB_BINS_LOG2", 2)
    return request.param


@pytest.mark.parametrize("kind", ["uniform", "polarised", "small", "ties"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_cuts_equal_full_sort_reference(kind, dtype, narrowing):
    rng = np.random.default_rng(hash((kind, str(dtype))) % 2 ** 32)
    for trial in range(6):
        n = int(rng.integers(1, 3000))
        p = random_channel(rng, n, kind).astype(dtype)
        y = rng.uniform(0, 1, n) < p.astype(np.float64)
        cuts = channel_cuts(p, y)
        for rule in VOXEL_RULES:
            want = REFS[rule](p.astype(np.float64))
            got = cut_mask(p, cuts[rule])
            assert np.array_equal(got, want), (rule, kind, trial, n)
            assert cuts[rule].n_selected == want.sum()
            if want.any():
                assert cuts[rule].value == p.astype(np.float64)[want].min()
            assert cuts[rule].tp == (want & y).sum()


def test_dice_optimal_equals_brute_force_over_every_mask():
    """max over all 2^N subsets of 2 sum_S p / (P + |S|) = D*, attained by the rule's mask."""
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(1, 11))
        p = rng.uniform(0, 1, n) ** rng.uniform(0.3, 3)
        P = p.sum()
        best = max(2 * p[list(S)].sum() / (P + len(S)) for r in range(1, n + 1)
                   for S in itertools.combinations(range(n), r))
        mask = cut_mask(p, channel_cuts(p, np.zeros(n, bool))["dice_optimal"])
        assert 2 * p[mask].sum() / (P + mask.sum()) == pytest.approx(best, rel=1e-12)
        assert ref_dice_optimal(p)[1] == pytest.approx(best, rel=1e-12)


def test_all_zero_probabilities_give_empty_masks():
    p = np.zeros(50)
    cuts = channel_cuts(p, np.zeros(50, bool))
    assert all(c.n_selected == 0 for c in cuts.values())


def test_volume_matched_within_half_a_voxel_of_the_soft_volume():
    rng = np.random.default_rng(2)
    for kind in ("uniform", "polarised", "small", "ties"):
        p = random_channel(rng, 5000, kind).astype(np.float32)
        cut = channel_cuts(p, np.zeros(p.size, bool))["volume_matched"]
        vv = 0.37
        m = decision_metrics(cut, 0, vv)
        assert abs(m["V_pred"] - float(p.astype(np.float64).sum()) * vv) <= 0.5 * vv + 1e-12


def test_ignored_voxels_are_left_out():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 2000).astype(np.float32)
    valid = rng.uniform(0, 1, 2000) < 0.7
    y = rng.uniform(0, 1, 2000) < p
    cuts = channel_cuts(p, y, valid)
    sub = channel_cuts(p[valid], y[valid])
    for r in VOXEL_RULES:
        assert (cuts[r].n_selected, cuts[r].tp, cuts[r].value) == (sub[r].n_selected, sub[r].tp, sub[r].value)


def test_histogram_of_other_resolutions_gives_the_same_cuts():
    rng = np.random.default_rng(4)
    p = random_channel(rng, 4000, "small").astype(np.float32)
    y = rng.uniform(0, 1, p.size) < p
    base = channel_cuts(p, y)
    for R in (1, 7, 60, 1000):
        assert channel_cuts(p, y, hist=FineHistogram.of(p, y, R)) == base


def test_wrong_histogram_is_refused():
    p = np.linspace(0, 1, 100)
    hist = FineHistogram.of(p[::2], np.zeros(50, bool))
    with pytest.raises(ValueError, match="histogram"):
        channel_cuts(p, np.zeros(100, bool), hist=hist)


def test_rankseg_rma_equals_the_rankseg_package():
    torch = pytest.importorskip("torch")
    rankseg = pytest.importorskip("rankseg")
    rng = np.random.default_rng(5)
    for trial in range(20):
        k, n = int(rng.integers(2, 4)), int(rng.integers(10, 4000))
        logits = rng.normal(0, 1, (k, n)) * rng.uniform(0.5, 6)
        p = np.exp(logits) / np.exp(logits).sum(0)
        theirs = rankseg.rankseg_rma(torch.from_numpy(p[None]), metric="dice", smooth=0.0,
                                     output_mode="multilabel", pruning_prob=0.5)[0].numpy()
        for c in range(k):
            ours = cut_mask(p[c], channel_cuts(p[c], np.zeros(n, bool))["rankseg_rma"])
            assert np.array_equal(ours, theirs[c]), (trial, c)


def test_case_cuts_and_label_maps_labels_and_regions():
    rng = np.random.default_rng(6)
    shape = (5, 6, 7)
    logits = rng.normal(0, 2, (3, *shape))
    p = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    ref = rng.integers(0, 3, shape).astype(np.uint8)
    spec = TaskSpec.labels(3)
    cuts = case_cuts(p, ref, spec)
    for key, c in (("1", 1), ("2", 2)):
        for rule in VOXEL_RULES:
            want = REFS[rule](p[c].reshape(-1).astype(np.float64))
            assert cuts[key][rule].tp == (want & (ref.reshape(-1) == c)).sum()
    seg = rule_label_map(p, spec, "volume_matched")
    m1 = cut_mask(p[1], cuts["1"]["volume_matched"])
    m2 = cut_mask(p[2], cuts["2"]["volume_matched"])
    both = m1 & m2
    assert np.array_equal(seg[m1 & ~m2], np.full((m1 & ~m2).sum(), 1))
    assert np.array_equal(seg[both], np.where(p[2][both] > p[1][both], 2, 1))
    assert (seg[~m1 & ~m2] == 0).all()
    # regions: (1, 2) and (2,), overwritten in order
    rspec = TaskSpec.regions([(1, 2), (2,)], [1, 2])
    q = rng.uniform(0, 1, (2, *shape)).astype(np.float32)
    rcuts = case_cuts(q, ref, rspec)
    inside = np.isin(ref, [1, 2]).reshape(-1)
    want = ref_dice_optimal(q[0].reshape(-1).astype(np.float64))[0]
    assert rcuts["(1, 2)"]["dice_optimal"].tp == (want & inside).sum()
    rseg = rule_label_map(q, rspec, "dice_optimal")
    m0 = cut_mask(q[0], rcuts["(1, 2)"]["dice_optimal"])
    m1 = cut_mask(q[1], rcuts["(2,)"]["dice_optimal"])
    assert (rseg[m1] == 2).all() and (rseg[m0 & ~m1] == 1).all() and (rseg[~m0 & ~m1] == 0).all()


def test_ignore_label_in_case_cuts():
    rng = np.random.default_rng(7)
    shape = (4, 5, 6)
    p1 = rng.uniform(0, 1, shape).astype(np.float32)
    p = np.stack([1 - p1, p1])
    ref = rng.integers(0, 3, shape).astype(np.uint8)  # 2 = ignore
    spec = TaskSpec.labels(2, ignore_label=2)
    cuts = case_cuts(p, ref, spec)["1"]
    keep = ref.reshape(-1) != 2
    sub = channel_cuts(p1.reshape(-1)[keep], ref.reshape(-1)[keep] == 1)
    assert cuts == sub


def test_decision_metrics_definitions():
    m = decision_metrics((10, 4), 6, 0.5)
    assert m["Dice"] == pytest.approx(2 * 4 / 16) and m["IoU"] == pytest.approx(4 / 12)
    assert m["dV"] == pytest.approx(2.0) and m["abs_dV"] == pytest.approx(2.0) and m["V_pred"] == 5.0
    assert math.isnan(decision_metrics((0, 0), 0, 1.0)["Dice"])


def test_exact_plateau_keeps_every_voxel_with_p_at_least_half_the_optimum():
    """p = (1/2, 1/4, 1/4): 2 S_k / (P + k) = 1/2 for k = 1, 2, 3 (exact in binary); Nordstrom keeps p >= D*/2 =
    1/4, all three; RankSEG prunes the class (max p = 0.5 is not > 0.5)."""
    p = np.array([0.5, 0.25, 0.0, 0.25])
    cuts = channel_cuts(p, np.array([1, 1, 0, 1], bool))
    assert cuts["dice_optimal"].n_selected == 3 and cuts["dice_optimal"].tp == 3
    assert cuts["rankseg_rma"].n_selected == 0
    q = np.array([0.5 + 2 ** -20, 0.25, 0.0, 0.25])
    assert np.array_equal(cut_mask(q, channel_cuts(q, np.zeros(4, bool))["rankseg_rma"]), ref_rma(q))


def test_cut_exactly_at_the_top_of_a_narrowed_bracket(monkeypatch):
    """volume_matched k = 5 = the voxels above a sub-bin boundary, the last two tied: both kept, counted."""
    import nnunet_losses.evaluation.decisions as dec
    monkeypatch.setattr(dec, "SORT_LIMIT", 16)
    monkeypatch.setattr(dec, "SUB_BINS_LOG2", 6)
    p = np.array([0.9] * 3 + [0.8] * 2 + [0.01] * 70)
    rng = np.random.default_rng(8)
    perm = rng.permutation(p.size)
    p = p[perm]
    cut = channel_cuts(p, np.zeros(p.size, bool), hist=FineHistogram.of(p, np.zeros(p.size, bool), 1))
    assert (cut["volume_matched"].n_selected, cut["volume_matched"].value) == (5, 0.8)
    assert cut["volume_matched"].n_at_value == 2
    assert np.array_equal(cut_mask(p, cut["volume_matched"]), p >= 0.8)
