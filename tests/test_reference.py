"""Cross-cutting reference checks for every loss of ``nnunet_losses.available_losses()``.

* every registered loss has a slow float64 reference (tests/reference_impl.py) and is compared with it in both
  input modes (this file: defaults; test_reference_overlap/pixelwise/lovasz.py: all modes and arguments);
* ``torch.autograd.gradcheck`` of every loss, softmax and sigmoid, with and without ignore label, per-sample
  and batch statistics;
* a 2-class softmax with logits [0, x] is a 1-region sigmoid with logit x (values and gradients);
* ``dice_ce`` is nnU-Net's own ``DC_and_CE_loss`` / ``DC_and_BCE_loss`` (plus 1, because nnU-Net returns -Dice).

The per-family files hold the exhaustive comparisons; see tests/reference_impl.py for the equations.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnunet_losses

import reference_impl as ref
from loss_cases import lib_loss

RTOL, ATOL = 1e-10, 1e-12


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py

ALL = nnunet_losses.available_losses()
OVERLAP_ARGS = {"batch_dice", "do_bg"}


def extra_kwargs(name, region, n_ch):
    """Arguments a loss cannot do without (wCE's class priors)."""
    if name == "wce":
        return {"class_priors": [0.3 + 0.1 * r for r in range(n_ch)] if region
                else list(np.arange(n_ch, 0, -1) / np.arange(n_ch, 0, -1).sum())}
    return {}


def test_every_registered_loss_has_a_reference():
    assert set(ALL) == set(ref.REFERENCES), "add a reference (tests/reference_impl.py) for every new loss"


@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("region,n_ch,spatial", [(False, 3, (4, 5, 3)), (False, 2, (5, 4)), (True, 2, (4, 5)),
                                                 (True, 3, (3, 4, 3))],
                         ids=["label3-3d", "label2-2d", "region2-2d", "region3-3d"])
@pytest.mark.parametrize("name", ALL)
def test_every_loss_with_defaults_matches_its_reference(name, region, n_ch, spatial, with_ignore):
    """Library defaults are the papers' (Table 2 of the DSC++ paper, nnU-Net's smooth/do_bg/batch_dice)."""
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore,
                                           ref.seed_of("defaults", name, region, n_ch, with_ignore))
    kw = extra_kwargs(name, region, n_ch)
    value, grad = lib_loss(name, logits, target, region, ignore, **kw)
    expected = ref.REFERENCES[name](logits, target, region=region, ignore_label=ignore, **kw)
    assert value.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# gradcheck
# ----------------------------------------------------------------------------------------------------------------
GRAD_VARIANTS = {  # extra non-default settings whose gradient paths differ
    "unified_focal": [{}, {"asymmetric": False}], "unified_focal_pp": [{}, {"asymmetric": False}],
    "dscpp": [{}, {"gamma": 0.5}], "focal": [{}, {"alpha": None, "gamma": 0.5}],
    "focal_tversky": [{}, {"gamma": 0.75}], "lovasz": [{}, {"do_bg": True, "only_present": False}],
}


def has_batch_dice(name):
    return "batch_dice" in nnunet_losses.loss_arguments(name)


#: (name, batch_dice) -- batch statistics only where the loss has them
NAME_BATCH = [(n, b) for n in ALL for b in ((False, True) if has_batch_dice(n) else (False,))]
NAME_BATCH_IDS = [f"{n}-{'batch' if b else 'sample'}" for n, b in NAME_BATCH]


@pytest.mark.parametrize("mode", [(False, 3, (3, 4), False), (False, 3, (3, 2, 2), True), (True, 2, (3, 4), False),
                                  (True, 2, (2, 3, 2), True)],
                         ids=["label3-2d", "label3-3d-ignore", "region2-2d", "region2-3d-ignore"])
@pytest.mark.parametrize("name,batch_dice", NAME_BATCH, ids=NAME_BATCH_IDS)
def test_gradcheck(name, batch_dice, mode):
    region, n_ch, spatial, with_ignore = mode
    loss_has_batch = has_batch_dice(name)
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore,
                                           ref.seed_of("gradcheck", name, mode), logit_scale=1.0)
    # region maps as float and as bool (nnU-Net's loader gives bool; the library may take a hard-target path)
    targets = [torch.from_numpy(target)] + ([torch.from_numpy(target.astype(bool))] if region else [])
    for variant in GRAD_VARIANTS.get(name, [{}]):
        kw = dict(extra_kwargs(name, region, n_ch), **variant)
        if loss_has_batch:
            kw["batch_dice"] = batch_dice
        loss = nnunet_losses.get_loss(name, region_based=region, ignore_label=ignore, **kw)
        for t in targets:
            x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
            assert torch.autograd.gradcheck(lambda z: loss(z, t), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# a 2-class softmax with logits [0, x] is a 1-region sigmoid with logit x
# ----------------------------------------------------------------------------------------------------------------
BINARY_CASES = [
    ("ce", {}), ("wce", {"class_priors": [0.2]}), ("focal", {}), ("focal", {"alpha": 0.25, "gamma": 0.5}),
    ("softdice", {}), ("softjaccard", {}), ("dscpp", {}), ("dscpp", {"gamma": 0.5}), ("tversky", {}),
    ("focal_tversky", {}), ("tversky_pp", {}), ("focal_tversky_pp", {}), ("combo", {"alpha": 0.3, "beta": 0.7}),
    ("combo_pp", {}), ("unified_focal", {"do_bg": False}), ("unified_focal", {"do_bg": False, "asymmetric": False}),
    ("unified_focal_pp", {"do_bg": False}), ("dice_ce", {}),
]


BINARY_PARAMS = [(n, dict(kw, batch_dice=b) if has_batch_dice(n) else kw) for n, kw in BINARY_CASES
                 for b in ((False, True) if has_batch_dice(n) else (False,))]


@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("spatial", [(4, 5), (3, 4, 3)], ids=["2d", "3d"])
@pytest.mark.parametrize("case", BINARY_PARAMS, ids=[f"{n}{kw}".replace(" ", "") for n, kw in BINARY_PARAMS])
def test_two_class_softmax_is_one_region_sigmoid(case, spatial, with_ignore):
    """softmax([0, x]) = (1 - sigmoid(x), sigmoid(x)): without the background channel every loss is the same
    function of x in both modes (wCE priors (1-p, p) vs p)."""
    name, kw = case
    logits, target, ignore = ref.make_case(True, 1, spatial, with_ignore, ref.seed_of("binary", name, spatial,
                                                                                      with_ignore))
    kw = dict(kw)
    label_kw = dict(kw, class_priors=[1 - kw["class_priors"][0], kw["class_priors"][0]]) if name == "wce" else kw
    x = logits  # (B, 1, ...)
    labels = target[:, :1].astype(np.int64)
    label_ignore = None
    if with_ignore:
        label_ignore = 2
        labels = np.where(target[:, 1:2] == 1, label_ignore, labels)
    v_region, g_region = lib_loss(name, x, target, True, ignore, **kw)
    v_label, g_label = lib_loss(name, np.concatenate([np.zeros_like(x), x], 1), labels, False, label_ignore,
                                **label_kw)
    torch.testing.assert_close(v_label, v_region, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_label[:, 1:], g_region, rtol=1e-9, atol=1e-14)
    expected = ref.REFERENCES[name](x, target, region=True, ignore_label=ignore, **kw)
    assert v_region.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)


# ----------------------------------------------------------------------------------------------------------------
# dice_ce is nnU-Net's DC_and_CE_loss / DC_and_BCE_loss
# ----------------------------------------------------------------------------------------------------------------
NNUNET_TOL = dict(rtol=1e-6, atol=1e-7)  # nnU-Net sums its Dice statistics in float32


@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample", "batch"])
@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("n_cls,spatial", [(2, (5, 6)), (3, (4, 5, 3)), (4, (6, 5))], ids=["c2-2d", "c3-3d", "c4-2d"])
def test_dice_ce_is_nnunet_dc_and_ce_loss(n_cls, spatial, with_ignore, batch_dice):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    logits, target, ignore = ref.make_case(False, n_cls, spatial, with_ignore,
                                           ref.seed_of("nnunet-ce", n_cls, with_ignore))
    nnunet = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                            weight_ce=1, weight_dice=1, ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)
    x = torch.tensor(logits, requires_grad=True)
    v_nnunet = nnunet(x, torch.from_numpy(target).float())
    v_nnunet.backward()
    v, g = lib_loss("dice_ce", logits, target, False, ignore, batch_dice=batch_dice)
    torch.testing.assert_close(v, v_nnunet.double() + 1, **NNUNET_TOL)
    torch.testing.assert_close(g, x.grad, **NNUNET_TOL)
    expected = ref.ref_dice_ce(logits, target, ignore_label=ignore, batch_dice=batch_dice)
    assert v.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample", "batch"])
@pytest.mark.parametrize("n_reg,spatial", [(1, (5, 6)), (2, (4, 5, 3)), (3, (6, 5))], ids=["r1-2d", "r2-3d", "r3-2d"])
def test_dice_ce_is_nnunet_dc_and_bce_loss(n_reg, spatial, batch_dice):
    """Region training without ignore label (with one, nnU-Net divides the BCE region sum by the number of valid
    voxels -- a documented difference, see DiceCELoss)."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    logits, target, _ = ref.make_case(True, n_reg, spatial, False, ref.seed_of("nnunet-bce", n_reg))
    nnunet = DC_and_BCE_loss({}, {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": True, "ddp": False},
                             use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    x = torch.tensor(logits, requires_grad=True)
    v_nnunet = nnunet(x, torch.from_numpy(target))
    v_nnunet.backward()
    v, g = lib_loss("dice_ce", logits, target, True, None, batch_dice=batch_dice)
    torch.testing.assert_close(v, v_nnunet.double() + 1, **NNUNET_TOL)
    torch.testing.assert_close(g, x.grad, **NNUNET_TOL)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample", "batch"])
def test_dice_ce_region_ignore_differs_from_nnunet_only_in_the_bce_normaliser(batch_dice):
    """The documented difference: with an ignore channel nnU-Net divides the BCE sum over regions by the number of
    valid voxels; we average over (valid voxel, region) pairs. Dice terms agree."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    n_reg = 3
    logits, target, ignore = ref.make_case(True, n_reg, (4, 5, 3), True, ref.seed_of("nnunet-bce-ignore"))
    nnunet = DC_and_BCE_loss({}, {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": True, "ddp": False},
                             use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)
    v_nnunet = nnunet(torch.tensor(logits), torch.from_numpy(target))
    bce, _ = lib_loss("ce", logits, target, True, ignore)
    dice, _ = lib_loss("softdice", logits, target, True, ignore, batch_dice=batch_dice)
    torch.testing.assert_close(v_nnunet.double() + 1, n_reg * bce + dice, **NNUNET_TOL)
    v, _ = lib_loss("dice_ce", logits, target, True, ignore, batch_dice=batch_dice)
    torch.testing.assert_close(v, bce + dice, rtol=1e-13, atol=0)
