"""What a loss accepts as target, and what it refuses with a one-line error (nnunet_losses/batch.py).

* hardening: region values outside [0, 1], an ignore label that is a real class, ``-inf`` logits, an empty batch,
  float label maps with fractional values (never truncated), the weighted CE's float32 weight buffers;
* soft targets: class probabilities ``(B, C[+1], ...)`` and float region maps, against the float64 references
  (tests/reference_impl.py), with the ignore channel and with deep supervision (averaged, not nearest).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference_impl as ref
from loss_cases import ALL_LOSSES, IGNORE, N_CLASSES, N_REGIONS, make_loss, make_target, target_onehot
from nnunet_losses import functional as Fn
from nnunet_losses.deep_supervision import downsample_soft_target
from test_api import one_line_value_error
from test_reference import extra_kwargs

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py

SPATIAL = (4, 5)


def logits_for(region: bool, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, N_REGIONS if region else N_CLASSES, *SPATIAL), generator=g, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# hardening (issue 11)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan")])
def test_region_values_outside_unit_interval_are_refused(bad):
    target = make_target(True, 2, SPATIAL).double()
    target[0, 0, 0, 0] = bad
    one_line_value_error(lambda: make_loss("softdice", True)(logits_for(True), target), "region target", "[0, 1]")


def test_region_ignore_channel_outside_unit_interval_is_refused():
    target = make_target(True, 2, SPATIAL, ignore=torch.zeros((2, 1, *SPATIAL), dtype=torch.bool))
    target[0, -1, 0, 0] = 3
    loss = make_loss("ce", True, ignore_label=IGNORE)
    one_line_value_error(lambda: loss(logits_for(True), target), "ignore channel", "[0, 1]")


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("ignore_label", [0, N_CLASSES - 1])
def test_ignore_label_that_is_a_class_is_refused(name, ignore_label):
    loss = make_loss(name, False, ignore_label=ignore_label)
    one_line_value_error(lambda: loss(logits_for(False), make_target(False, 2, SPATIAL)),
                         f"ignore_label {ignore_label} is one of the network's {N_CLASSES} classes")


@pytest.mark.parametrize("region", [False, True], ids=["labels", "regions"])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_minus_inf_logits_of_absent_classes_give_the_finite_limit(name, region):
    """A class masked out with -inf (probability 0 where the reference does not have it) gives the value that the
    most negative finite logit gives, with a finite gradient -- not NaN from 0 * log 0."""
    target = make_target(region, 2, SPATIAL, generator=torch.Generator().manual_seed(3))
    absent = target_onehot(region, target) == 0
    absent[:, :, 1:] = False  # a few voxels only, each on a channel the reference does not have there
    values = []
    for low in (-float("inf"), -1e30):
        x = logits_for(region, dtype=torch.float32).masked_fill(absent, low).requires_grad_()
        value = make_loss(name, region)(x, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all(), (low, value)
        values.append(value.item())
    assert values[0] == values[1]


def test_minus_inf_logits_give_torch_cross_entropy():
    target = make_target(False, 2, SPATIAL, generator=torch.Generator().manual_seed(4))
    x = logits_for(False, dtype=torch.float32)
    x[:, 1].masked_fill_(target[:, 0] != 1, -float("inf"))  # class 1 masked out wherever it is not the label
    expected = F.cross_entropy(x, target[:, 0].long())
    assert torch.isfinite(expected)
    assert make_loss("ce", False)(x, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("shape", [(0, N_CLASSES, 4, 5), (2, N_CLASSES, 0, 5), (2, N_CLASSES, 4, 5, 0)])
def test_empty_batch_is_refused(shape):
    x = torch.zeros(shape)
    target = torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.long)
    one_line_value_error(lambda: make_loss("dice_ce", False)(x, target), "empty batch")


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_float_label_map_with_fractions_is_refused_not_truncated(name):
    """Issue 14: ``get_loss('softdice')`` gave the same value for a 0.9 target as for 0."""
    target = make_target(False, 2, SPATIAL).double()
    target[0, 0, 1, 1] = 0.9
    one_line_value_error(lambda: make_loss(name, False)(logits_for(False), target), "fractional values", "0.9")


def test_float_label_map_with_whole_values_equals_the_integer_map():
    target = make_target(False, 2, SPATIAL, generator=torch.Generator().manual_seed(5))
    loss = make_loss("dice_ce", False)
    assert loss(logits_for(False), target.double()).item() == loss(logits_for(False), target).item()


@pytest.mark.parametrize("region,priors", [(False, [0.7, 0.2, 0.1]), (True, [0.3, 0.6])], ids=["labels", "regions"])
def test_wce_float32_weight_buffers(region, priors):
    """The float32 path uses buffers; their values (not only the float64 path's) are checked here."""
    loss = make_loss("wce", region, class_priors=priors)
    p = np.asarray(priors, dtype=np.float64)
    if region:
        expected = {"weights": 1 / (2 * p), "neg_weights": 1 / (2 - 2 * p)}
    else:
        expected = {"weights": 1 / (len(p) * p)}
        assert loss.neg_weights is None
    for name, values in expected.items():
        buffer = getattr(loss, name)
        assert buffer.dtype == torch.float32
        np.testing.assert_allclose(buffer.numpy(), values, rtol=1e-7)
    logits, target, _ = ref.make_case(region, len(priors), SPATIAL, False, ref.seed_of("wce32", region))
    value32 = loss(torch.tensor(logits, dtype=torch.float32), torch.from_numpy(target))
    reference = ref.ref_wce(logits, target, priors, region=region)
    assert value32.dtype == torch.float32 and value32.item() == pytest.approx(reference, rel=2e-6)


# ----------------------------------------------------------------------------------------------------------------
# soft targets (issue 14, item 1)
# ----------------------------------------------------------------------------------------------------------------
def soft_case(region: bool, n_ch: int, spatial, with_ignore: bool, seed: int):
    """Random logits and a soft target: Dirichlet-like class probabilities (some one-hot voxels, some exact 0
    entries) or region probabilities in [0, 1] (some exactly 0 or 1); ignore channel last, NaN under it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(2, n_ch) + tuple(spatial))
    if region:
        y = rng.random((2, n_ch) + tuple(spatial))
        y[rng.random(y.shape) < 0.2] = 1.0
        y[rng.random(y.shape) < 0.2] = 0.0
    else:
        y = rng.gamma(0.5, size=(2, n_ch) + tuple(spatial))
        y[rng.random(y.shape) < 0.2] = 0.0
        y[:, 0][y.sum(1) == 0] = 1.0
        y = y / y.sum(1, keepdims=True)
    ignore_label = None
    if with_ignore:
        ignored = rng.random((2, 1) + tuple(spatial)) < 0.25
        ignored[:, :, 0, 0], ignored[:, :, 0, 1] = True, False
        y = np.where(ignored, np.nan, y)
        y = np.concatenate([y, ignored.astype(np.float64)], 1)
        ignore_label = n_ch if not region else 99
    return logits, y, ignore_label


def reference_target(target: np.ndarray, ignore_label) -> np.ndarray:
    """The reference reads no value under ignored voxels; NaN there would only break its sums of skipped voxels."""
    return np.nan_to_num(target) if ignore_label is not None else target


SOFT_MODES = [(False, 3, (3, 4), False), (False, 3, (3, 2, 3), True), (True, 2, (3, 4), False),
              (True, 2, (2, 3, 2), True)]
SOFT_IDS = ["label3-2d", "label3-3d-ignore", "region2-2d", "region2-3d-ignore"]


@pytest.mark.parametrize("mode", SOFT_MODES, ids=SOFT_IDS)
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_soft_target_matches_reference(name, mode):
    region, n_ch, spatial, with_ignore = mode
    logits, target, ignore = soft_case(region, n_ch, spatial, with_ignore, ref.seed_of("soft", name, mode))
    kw = extra_kwargs(name, region, n_ch)
    x = torch.tensor(logits, requires_grad=True)
    value = make_loss(name, region, ignore_label=ignore, **kw)(x, torch.from_numpy(target))
    value.backward()
    expected = ref.REFERENCES[name](logits, reference_target(target, ignore), region=region, ignore_label=ignore,
                                    **kw)
    assert value.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mode", SOFT_MODES[::3], ids=SOFT_IDS[::3])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_soft_target_gradcheck(name, mode):
    region, n_ch, spatial, with_ignore = mode
    logits, target, ignore = soft_case(region, n_ch, spatial, with_ignore, ref.seed_of("softgrad", name, mode))
    loss = make_loss(name, region, ignore_label=ignore, **extra_kwargs(name, region, n_ch))
    t = torch.from_numpy(target)
    x = torch.tensor(logits, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: loss(z, t), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_one_hot_probabilities_equal_the_label_map(name, with_ignore):
    ignored = None
    if with_ignore:
        ignored = torch.zeros((2, 1, *SPATIAL), dtype=torch.bool)
        ignored[:, :, 0] = True
    labels = make_target(False, 2, SPATIAL, ignore=ignored, generator=torch.Generator().manual_seed(7))
    soft = target_onehot(False, labels).double()
    if with_ignore:
        soft = torch.cat([soft, ignored.double()], 1)
    loss = make_loss(name, False, ignore_label=IGNORE if with_ignore else None)
    grads = []
    for target in (labels, soft):
        x = logits_for(False).requires_grad_()
        value = loss(x, target)
        value.backward()
        grads.append((value.detach(), x.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad,fragment", [
    (lambda y: y * 0.9, "sum to 1"), (lambda y: y[:, :2], "label target must be"),
    (lambda y: (y > 0.5).long(), "label target must be"), (lambda y: y - 0.5, "[0, 1]"),
])
def test_invalid_probability_maps_are_refused(bad, fragment):
    logits, target, _ = soft_case(False, N_CLASSES, SPATIAL, False, 11)
    one_line_value_error(lambda: make_loss("softdice", False)(torch.tensor(logits), bad(torch.from_numpy(target))),
                         fragment)


def test_soft_target_without_its_ignore_channel_is_refused():
    logits, target, _ = soft_case(False, N_CLASSES, SPATIAL, False, 12)
    loss = make_loss("ce", False, ignore_label=IGNORE)
    one_line_value_error(lambda: loss(torch.tensor(logits), torch.from_numpy(target)), "ignore mask as last channel")


def block_mean(t: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over factor^d blocks, written out with reshape (independent of torch's area interpolation)."""
    b, c, *sp = t.shape
    shape = [b, c]
    for s in sp:
        shape += [s // factor, factor]
    t = t.reshape(shape)
    return t.mean(tuple(range(3, t.ndim, 2)))


@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("region", [False, True], ids=["labels", "regions"])
def test_deep_supervision_averages_a_full_resolution_soft_target(region, with_ignore):
    logits, target, ignore = soft_case(region, 3, (8, 4, 4), with_ignore, ref.seed_of("ds-soft", region))
    target = torch.from_numpy(reference_target(target, ignore))
    outputs = [torch.tensor(logits)[..., ::f, ::f, ::f].contiguous() for f in (1, 2, 4)]
    loss = make_loss("dscpp", region, ignore_label=ignore, deep_supervision_weights=(0.5, 0.3, 0.2))
    expected_targets = [target]
    for f in (2, 4):
        if with_ignore:
            valid = 1 - target[:, -1:]
            mean = block_mean(target[:, :-1] * valid, f) / block_mean(valid, f).clamp_min(1e-12)
            expected_targets.append(torch.cat([mean, 1 - block_mean(valid, f)], 1))
        else:
            expected_targets.append(block_mean(target, f))
    for got, want in zip([downsample_soft_target(target, o.shape[2:], with_ignore) for o in outputs],
                         expected_targets):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert loss(outputs, target).item() == pytest.approx(loss(outputs, expected_targets).item(), rel=1e-12)
    if not region:  # class probabilities stay probabilities after averaging (where anything is valid)
        coarse = expected_targets[2]
        valid = coarse[:, -1] < 1 if with_ignore else torch.ones_like(coarse[:, 0], dtype=torch.bool)
        torch.testing.assert_close(coarse[:, :3].sum(1)[valid], torch.ones_like(coarse[:, 0][valid]))


def test_fractional_ignore_weight_counts_the_valid_part():
    """A coarse voxel that is half ignored counts half: its weight equals repeating its valid half."""
    logits, target, _ = soft_case(False, N_CLASSES, SPATIAL, False, 13)
    x, y = torch.tensor(logits), torch.from_numpy(target)
    half = torch.cat([y, torch.full_like(y[:, :1], 0.5)], 1)
    loss = make_loss("softdice", False, ignore_label=IGNORE, batch_dice=True)
    expected = make_loss("softdice", False, batch_dice=True, smooth=2e-5)(x, y)  # every statistic halved
    assert loss(x, half).item() == pytest.approx(expected.item(), rel=1e-12)
    assert Fn.masked_mean(torch.ones(1, 2, 3), torch.full((1, 1, 3), 0.5)).item() == pytest.approx(1.0)
