"""Numerical robustness of every loss: finite values and logit gradients in the situations nnU-Net training meets.

Every loss of ``available_losses()`` is run in label (softmax) and region (sigmoid) mode, 2D and 3D, with
``batch_dice`` False and True where it has that argument, on: half-precision logits, bfloat16 autocast, extreme
logits (+-1e4, confidently right and wrong), all-background and all-foreground targets, fully ignored images and
batches, and batch size 1. Further: fp16 sums beyond 65504 voxels, fractional exponents (DSC++ gamma < 1, Focal
Tversky 1/gamma < 1, Unified Focal) at (near-)perfect predictions, and the ignore label (ignored voxels change
neither value nor gradient).
"""
from __future__ import annotations

import itertools
from typing import Optional

import pytest
import torch

from loss_cases import (ALL_LOSSES, BATCH_DICE_LOSSES, IGNORE, N_REGIONS, SPATIAL, confident_logits, make_loss,
                        make_target, n_outputs)
from nnunet_losses import available_losses, loss_arguments


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py


def _configs():
    for name in ALL_LOSSES:
        for region, dim in itertools.product((False, True), (2, 3)):
            for batch_dice in ((False, True) if name in BATCH_DICE_LOSSES else (None,)):
                cid = f"{name}-{'region' if region else 'label'}-{dim}d" + (
                    "" if batch_dice is None else f"-bd{int(batch_dice)}")
                yield pytest.param(name, region, dim, batch_dice, id=cid)


CONFIGS = list(_configs())


def test_configs_cover_every_loss():
    assert sorted(ALL_LOSSES) == sorted(available_losses())


def build(name: str, region: bool, batch_dice: Optional[bool], **kwargs):
    if batch_dice is not None:
        kwargs["batch_dice"] = batch_dice
    return make_loss(name, region, **kwargs)


def smooth_variants(name: str):
    """Default smoothing and ``smooth=0`` (the classic 0/0 case) for losses that have ``smooth``."""
    return ({}, {"smooth": 0.0}) if "smooth" in loss_arguments(name) else ({},)


def value_and_grad(loss, logits: torch.Tensor, target: torch.Tensor, autocast_dtype=None, cast_to=None):
    """Loss value and its gradient w.r.t. the leaf ``logits``; both must be finite."""
    x = logits.detach().clone().requires_grad_(True)
    if autocast_dtype is not None:
        with torch.autocast("cpu", dtype=autocast_dtype):
            value = loss(x if cast_to is None else x.to(cast_to), target)
    else:
        value = loss(x if cast_to is None else x.to(cast_to), target)
    assert value.ndim == 0, f"loss must be a scalar, got shape {tuple(value.shape)}"
    value.backward()
    assert torch.isfinite(value), f"non-finite loss value {value.item()}"
    assert x.grad is not None, "no gradient reached the logits"
    assert x.grad.dtype == x.dtype
    assert torch.isfinite(x.grad).all(), (f"non-finite gradient: {int((~torch.isfinite(x.grad)).sum())} of "
                                          f"{x.grad.numel()} entries")
    return value.detach(), x.grad


def random_case(region: bool, dim: int, batch: int = 2, kind: str = "random", ignore=None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    spatial = SPATIAL[dim]
    target = make_target(region, batch, spatial, kind, ignore, generator=g)
    logits = 2 * torch.randn((batch, n_outputs(region), *spatial), generator=g)
    return logits, target


# ----------------------------------------------------------------------------------------------------------------
# precision
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_float16_logits(name, region, dim, batch_dice):
    loss = build(name, region, batch_dice)
    logits, target = random_case(region, dim)
    logits = logits.half()
    v16, _ = value_and_grad(loss, logits, target)
    v32, _ = value_and_grad(loss, logits.float(), target)  # the same (rounded) logits in float32
    torch.testing.assert_close(v16.float(), v32, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_bfloat16_autocast(name, region, dim, batch_dice):
    loss = build(name, region, batch_dice)
    logits, target = random_case(region, dim)
    reference, _ = value_and_grad(loss, logits, target)
    # float32 logits evaluated under autocast, and bfloat16 logits (what an autocast network returns)
    v, _ = value_and_grad(loss, logits, target, autocast_dtype=torch.bfloat16)
    torch.testing.assert_close(v.float(), reference, rtol=2e-2, atol=2e-2)
    v, _ = value_and_grad(loss, logits, target, autocast_dtype=torch.bfloat16, cast_to=torch.bfloat16)
    torch.testing.assert_close(v.float(), reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_extreme_logits(name, region, dim, batch_dice):
    loss = build(name, region, batch_dice)
    _, target = random_case(region, dim)
    for dtype in (torch.float32, torch.float16):
        right, _ = value_and_grad(loss, confident_logits(region, target, 1e4, right=True).to(dtype), target)
        wrong, _ = value_and_grad(loss, confident_logits(region, target, 1e4, right=False).to(dtype), target)
        assert wrong > right, f"{dtype}: confidently wrong ({wrong.item()}) <= confidently right ({right.item()})"


# ----------------------------------------------------------------------------------------------------------------
# degenerate targets
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "full"])
@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_all_background_and_all_foreground(name, region, dim, batch_dice, kind):
    logits, target = random_case(region, dim, kind=kind)
    for extra in smooth_variants(name):
        loss = build(name, region, batch_dice, **extra)
        value_and_grad(loss, logits, target)
        for right in (True, False):
            value_and_grad(loss, confident_logits(region, target, 1e4, right=right), target)


@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_fully_ignored_image_in_batch(name, region, dim, batch_dice):
    spatial = SPATIAL[dim]
    ignore = torch.zeros((3, 1, *spatial), dtype=torch.bool)
    ignore[1] = True  # the middle image of the batch is entirely ignored
    logits, target = random_case(region, dim, batch=3, ignore=ignore)
    for extra in smooth_variants(name):
        loss = build(name, region, batch_dice, ignore_label=IGNORE, **extra)
        _, grad = value_and_grad(loss, logits, target)
        assert grad[1].abs().max() == 0, "the fully ignored image received a gradient"
        assert grad[[0, 2]].abs().max() > 0, "the valid images received no gradient"
        # saturated logits: gradients may vanish, but must stay finite and zero on the ignored image
        _, grad = value_and_grad(loss, confident_logits(region, target, 1e4, right=False), target)
        assert grad[1].abs().max() == 0, "the fully ignored image received a gradient"


@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_fully_ignored_batch(name, region, dim, batch_dice):
    spatial = SPATIAL[dim]
    ignore = torch.ones((2, 1, *spatial), dtype=torch.bool)
    logits, target = random_case(region, dim, ignore=ignore)
    for extra in smooth_variants(name):
        loss = build(name, region, batch_dice, ignore_label=IGNORE, **extra)
        for x in (logits, confident_logits(region, target, 1e4, right=False)):
            value, grad = value_and_grad(loss, x, target)
            assert grad.abs().max() == 0, "a fully ignored batch must give zero gradient"
            # nothing to learn from: the value must not depend on the logits
            other, _ = value_and_grad(loss, -3 * x, target)
            torch.testing.assert_close(value, other)


@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_batch_size_one(name, region, dim, batch_dice):
    loss = build(name, region, batch_dice)
    for kind in ("random", "empty", "full"):
        logits, target = random_case(region, dim, batch=1, kind=kind)
        value_and_grad(loss, logits, target)
        value_and_grad(loss, confident_logits(region, target, 1e4, right=False), target)
        value_and_grad(loss, confident_logits(region, target, 1e4, right=True).half(), target)


# ----------------------------------------------------------------------------------------------------------------
# ignore label
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,region,dim,batch_dice", CONFIGS)
def test_ignored_voxels_change_neither_value_nor_gradient(name, region, dim, batch_dice):
    g = torch.Generator().manual_seed(3)
    spatial = SPATIAL[dim]
    ignore = torch.rand((2, 1, *spatial), generator=g) < 0.4
    logits, target = random_case(region, dim, ignore=ignore, seed=1)
    loss = build(name, region, batch_dice, ignore_label=IGNORE)
    value, grad = value_and_grad(loss, logits, target)
    assert grad.masked_select(ignore.expand_as(grad)).abs().max() == 0, "ignored voxels received a gradient"
    assert grad.masked_select(~ignore.expand_as(grad)).abs().max() > 0
    ignore_c = ignore.expand_as(logits)
    for replacement in (10 * torch.randn(logits.shape, generator=g), torch.full(logits.shape, -1e4),
                        confident_logits(region, target, 1e4, right=False)):
        changed = torch.where(ignore_c, replacement, logits)
        other, other_grad = value_and_grad(loss, changed, target)
        torch.testing.assert_close(other, value, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(other_grad, grad, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# large volumes in float16
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("region", [False, True], ids=["label", "region"])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_float16_sums_beyond_65504_voxels(name, region):
    """1 x 2 x 48^3 = 110592 voxels per channel, ~90% foreground: every TP/FP/FN sum and every voxel count exceeds
    float16's maximum 65504, so accumulating in the logits' dtype would give inf."""
    g = torch.Generator().manual_seed(7)
    spatial = (48, 48, 48)
    fg = torch.rand((1, 1, *spatial), generator=g) < 0.9
    if region:
        target = torch.cat([fg, fg], 1).float()
        n_out = N_REGIONS
        kwargs = {"class_priors": [0.9, 0.9]} if name == "wce" else {}
    else:
        target = fg.long()
        n_out = 2
        kwargs = {"class_priors": [0.1, 0.9]} if name == "wce" else {}
    assert int(fg.sum()) > 65504
    logits = (torch.randn((1, n_out, *spatial), generator=g) + 2 * (2 * fg - 1)).half()
    if not region:
        logits[:, 0] = 0
    loss = make_loss(name, region, **kwargs)
    v16, _ = value_and_grad(loss, logits, target)
    v32, _ = value_and_grad(loss, logits.float(), target)
    torch.testing.assert_close(v16.float(), v32, rtol=1e-3, atol=1e-3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        v_auto = loss(logits.float(), target)
    assert torch.isfinite(v_auto)
    torch.testing.assert_close(v_auto.float(), v32, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# fractional exponents at (near-)perfect predictions
# ----------------------------------------------------------------------------------------------------------------
FRACTIONAL = [
    ("dscpp", {"gamma": 0.5}), ("dscpp", {"gamma": 0.1}),
    ("focal_tversky", {"gamma": 4 / 3}), ("focal_tversky", {"gamma": 2.0}), ("focal_tversky", {"gamma": 10.0}),
    ("focal_tversky", {"gamma": 0.5}),
    ("unified_focal", {"gamma": 0.5}), ("unified_focal", {"gamma": 0.9}), ("unified_focal", {"gamma": 0.1}),
    ("unified_focal", {"gamma": 0.5, "asymmetric": False}),
    ("tversky_pp", {"gamma_pp": 0.5}), ("focal_tversky_pp", {"gamma": 2.0, "gamma_pp": 0.5}),
    ("combo_pp", {"gamma_pp": 0.5}), ("unified_focal_pp", {"gamma_pp": 0.5}), ("focal", {"gamma": 0.5}),
]



def _fractional_id(name, kwargs):
    return "-".join([name] + [f"{k}{v:.3g}" if isinstance(v, float) else f"{k}{v}" for k, v in kwargs.items()])


@pytest.mark.parametrize("region", [False, True], ids=["label", "region"])
@pytest.mark.parametrize("name,kwargs", FRACTIONAL, ids=[_fractional_id(n, kw) for n, kw in FRACTIONAL])
def test_fractional_exponents_have_finite_gradients(name, kwargs, region):
    """x**e with e < 1 has an infinite derivative at 0: at a perfect prediction (1 - TI = 0, p = 0 off-class).
    Magnitudes 10..40 put 1 - p around the 1e-8 switch of ``safe_pow``; 50 (softmax: p ~ e^-100) and 100 (sigmoid)
    give subnormal float32 probabilities, where p**(e-1) overflows to inf; 1e4 saturates p to exactly 0/1."""
    _, target = random_case(region, 3)
    for batch_dice in ((False, True) if name in BATCH_DICE_LOSSES else (None,)):
        loss = build(name, region, batch_dice, **kwargs)
        for magnitude, right, dtype in itertools.product((1e4, 100.0, 50.0, 40.0, 20.0, 18.0, 10.0), (True, False),
                                                         (torch.float32, torch.float16, torch.float64)):
            value_and_grad(loss, confident_logits(region, target, magnitude, right).to(dtype), target)
        # and the linear continuation below 1e-8 must not break the ordering of the values
        perfect, _ = value_and_grad(loss, confident_logits(region, target, 1e4), target)
        worse, _ = value_and_grad(loss, confident_logits(region, target, 1e4, right=False), target)
        assert perfect < worse


@pytest.mark.parametrize("exponent", [0.25, 0.5, 0.9])
def test_safe_pow_value_and_derivative_as_documented(exponent):
    """safe_pow below 1: exact power above POW_EPS, linear continuation below, derivative as its docstring says
    (and never 0 except at 0, where it is a subgradient of the kink)."""
    from nnunet_losses.functional import POW_EPS, safe_pow
    e, slope = exponent, POW_EPS ** (exponent - 1)
    cases = {0.0: (0.0, 0.0), POW_EPS / 2: (POW_EPS / 2 * slope, slope), POW_EPS: (POW_EPS ** e, slope),
             2 * POW_EPS: ((2 * POW_EPS) ** e, e * (2 * POW_EPS) ** (e - 1)), 0.5: (0.5 ** e, e * 0.5 ** (e - 1)),
             -1e-9: (0.0, 0.0)}
    for x0, (value, derivative) in cases.items():
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        y = safe_pow(x, exponent)
        y.backward()
        assert y.item() == pytest.approx(value, rel=1e-12, abs=0), x0
        assert x.grad.item() == pytest.approx(derivative, rel=1e-12, abs=0), x0
    x = torch.tensor([3e-9, 7e-9, 3e-8, 0.2, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: safe_pow(t, exponent), (x,), eps=1e-10, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# options that cannot matter (the reference tests do not repeat these cases; see loss_cases.with_do_bg)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in ALL_LOSSES if "do_bg" in loss_arguments(n)])
def test_region_maps_ignore_do_bg_and_only_present(name):
    """Region maps have no background channel (and Lovász-hinge has no 'present classes'): ``do_bg`` and
    ``only_present`` change neither value nor gradient in region mode, per sample and batch, with ignore."""
    ignore = torch.zeros((2, 1, *SPATIAL[3]), dtype=torch.bool)
    ignore[:, :, 0] = True
    logits, target = random_case(True, 3, ignore=ignore, seed=9)
    options = [{"do_bg": bg} for bg in (False, True)]
    if "only_present" in loss_arguments(name):
        options += [{"do_bg": True, "only_present": False}]
    for batch_dice in (False, True):
        results = [value_and_grad(build(name, True, batch_dice, ignore_label=IGNORE, **opt), logits, target)
                   for opt in options]
        for value, grad in results[1:]:
            assert value.item() == results[0][0].item()
            assert torch.equal(grad, results[0][1])
