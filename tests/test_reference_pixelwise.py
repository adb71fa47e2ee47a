"""Distribution-based losses (ce, wce, focal) against the slow float64 references of tests/reference_impl.py,
and their identities: wCE with uniform priors = CE, Focal with alpha=None and gamma=0 = CE, wCE weights
(Bertels et al.: 1/(2p), 1/(2-2p))."""
from __future__ import annotations

import numpy as np
import pytest
import torch


import reference_impl as ref
from loss_cases import lib_loss

RTOL, ATOL = 1e-10, 1e-12


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py

SHAPES = [(False, 2, (4, 5)), (False, 3, (4, 5, 3)), (False, 4, (5, 4)),
          (True, 1, (3, 4, 3)), (True, 2, (4, 5)), (True, 3, (4, 3, 3))]
SHAPE_IDS = [f"{'region' if r else 'label'}{k}-{len(s)}d" for r, k, s in SHAPES]


def priors_for(region: bool, n_channels: int):
    """Non-uniform class priors: labels sum to 1 over all classes, regions are foreground frequencies."""
    if region:
        return [0.15 + 0.2 * r for r in range(n_channels)]
    raw = np.arange(n_channels, 0, -1, dtype=np.float64) ** 2  # background most frequent
    return list(raw / raw.sum())


#: (name, kwargs); "PRIORS" is replaced by priors_for(mode)
PIXEL_CASES = [
    ("ce", {}),
    ("wce", {"class_priors": "PRIORS"}),
    ("focal", {}),  # Table 2: alpha 0.5, gamma 2
    ("focal", {"alpha": 0.25, "gamma": 0.5}),
    ("focal", {"alpha": None, "gamma": 3.0}),
    ("focal", {"alpha": 0.8, "gamma": 0.0}),
    ("focal", {"alpha": 0.3, "gamma": 1.0}),
]


def _kwargs(kwargs, region, n_ch):
    return {k: (priors_for(region, n_ch) if v == "PRIORS" else v) for k, v in kwargs.items()}


@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("region,n_ch,spatial", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("case", PIXEL_CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                                                   for n, kw in PIXEL_CASES])
def test_pixelwise_losses_match_reference(case, region, n_ch, spatial, with_ignore):
    name, kwargs = case
    kwargs = _kwargs(kwargs, region, n_ch)
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore,
                                           ref.seed_of(name, region, n_ch, spatial, with_ignore))
    expected = ref.REFERENCES[name](logits, target, region=region, ignore_label=ignore, **kwargs)
    # region maps as float and as bool (nnU-Net's loader gives bool; bool maps take the fused sigmoid pass)
    for tgt in [target, target.astype(bool)] if region else [target]:
        value, grad = lib_loss(name, logits, tgt, region, ignore, **kwargs)
        assert value.dtype == torch.float64
        assert value.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("region", [False, True], ids=["label", "region"])
def test_ignored_voxels_do_not_matter(region):
    """Changing logits and targets on ignored voxels changes neither the value nor the other gradients."""
    logits, target, ignore = ref.make_case(region, 3, (4, 5), True, ref.seed_of("ignored", region))
    ignored = (target[:, -1:] == 1) if region else (target == ignore)
    rng = np.random.default_rng(0)
    logits2 = np.where(ignored, rng.normal(0, 5, logits.shape), logits)
    target2 = target.copy()
    if region:
        target2[:, :-1] = np.where(ignored, 1 - target2[:, :-1], target2[:, :-1])
    for name, kw in [("ce", {}), ("focal", {"alpha": 0.3}), ("wce", {"class_priors": priors_for(region, 3)})]:
        v1, g1 = lib_loss(name, logits, target, region, ignore, **kw)
        v2, g2 = lib_loss(name, logits2, target2, region, ignore, **kw)
        torch.testing.assert_close(v1, v2, rtol=1e-13, atol=1e-15)
        mask = torch.from_numpy(~ignored).expand_as(g1)
        torch.testing.assert_close(g1[mask], g2[mask], rtol=1e-12, atol=1e-15)
        assert (g1[~mask] == 0).all() and (g2[~mask] == 0).all()


IDENT_MODES = [(False, 2, (4, 5), False), (False, 4, (3, 4, 3), True), (True, 1, (4, 5), True),
               (True, 3, (3, 4, 3), False)]
IDENT_IDS = ["label2-2d", "label4-3d-ignore", "region1-2d-ignore", "region3-3d"]


@pytest.mark.parametrize("mode", IDENT_MODES, ids=IDENT_IDS)
def test_wce_with_uniform_priors_is_ce(mode):
    region, n_ch, spatial, with_ignore = mode
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore, ref.seed_of("wce-uniform", mode))
    uniform = [0.5] * n_ch if region else [1 / n_ch] * n_ch
    vw, gw = lib_loss("wce", logits, target, region, ignore, class_priors=uniform)
    vc, gc = lib_loss("ce", logits, target, region, ignore)
    torch.testing.assert_close(vw, vc, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gw, gc, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", IDENT_MODES, ids=IDENT_IDS)
def test_focal_without_alpha_and_gamma_is_ce(mode):
    """[DSC++] Eq. 2 with gamma = 0 (the paper's "gamma = 1" is a typo) and no class weights is CE (Eq. 1);
    alpha = 1/2 halves it."""
    region, n_ch, spatial, with_ignore = mode
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore, ref.seed_of("focal-ce", mode))
    vf, gf = lib_loss("focal", logits, target, region, ignore, alpha=None, gamma=0.0)
    vc, gc = lib_loss("ce", logits, target, region, ignore)
    torch.testing.assert_close(vf, vc, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gf, gc, rtol=1e-12, atol=1e-14)
    vh, gh = lib_loss("focal", logits, target, region, ignore, alpha=0.5, gamma=0.0)
    torch.testing.assert_close(vh, 0.5 * vc, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gh, 0.5 * gc, rtol=1e-12, atol=1e-14)


def test_ce_matches_torch():
    """CE is torch's cross_entropy (softmax) / binary_cross_entropy_with_logits (sigmoid), mean reduction."""
    logits, target, _ = ref.make_case(False, 3, (4, 5, 3), False, 1)
    v, _ = lib_loss("ce", logits, target, False, None)
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target[:, 0]))
    torch.testing.assert_close(v, expected, rtol=1e-13, atol=0)
    logits, target, _ = ref.make_case(True, 2, (4, 5), False, 2)
    v, _ = lib_loss("ce", logits, target, True, None)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits),
                                                                    torch.from_numpy(target))
    torch.testing.assert_close(v, expected, rtol=1e-13, atol=0)


def test_wce_binary_weights_are_bertels():
    """Bertels et al.: foreground weight 1/(2p), background 1/(2-2p); a 2-class softmax with priors (1-p, p)
    and a 1-region sigmoid with prior p give the same loss."""
    p = 0.1
    logits, target, _ = ref.make_case(True, 1, (5, 6), False, 3)
    x = logits[:, 0:1]
    labels = target.astype(np.int64)
    v_region, _ = lib_loss("wce", x, target, True, None, class_priors=[p])
    v_label, _ = lib_loss("wce", np.concatenate([np.zeros_like(x), x], 1), labels, False, None,
                          class_priors=[1 - p, p])
    prob = 1 / (1 + np.exp(-x))
    by_hand = np.mean(-(target / (2 * p) * np.log(prob) + (1 - target) / (2 - 2 * p) * np.log(1 - prob)))
    assert v_region.item() == pytest.approx(by_hand, rel=1e-12)
    assert v_label.item() == pytest.approx(by_hand, rel=1e-12)
