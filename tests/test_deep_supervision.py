"""Deep supervision: every loss accepts nnU-Net's lists of outputs and down-sampled targets.

* a list call equals the weighted sum of single-scale calls (value and gradient of every output), with explicit
  weights and with the default ``None`` = nnU-Net's weights;
* the default weights are those of ``nnUNetTrainer._build_loss`` (run on a stub trainer), with ``ddp=True`` the
  lowest output gets 1e-6 instead of 0, as nnU-Net does under DDP;
* ``dice_ce`` with the default weights reproduces nnU-Net's own ``DeepSupervisionWrapper(DC_and_CE_loss)`` /
  ``DeepSupervisionWrapper(DC_and_BCE_loss)`` (up to the constant ``+1``: nnU-Net returns ``-Dice``);
* malformed input (list lengths, all-zero weights) raises a clear ``ValueError``.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from loss_cases import ALL_LOSSES, IGNORE, N_CLASSES, make_loss
from nnunet_losses import deep_supervision_loss, nnunet_deep_supervision_weights


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py

SCALES = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
FULL_SHAPE = (8, 8, 12)


def downsample_targets(target: torch.Tensor, scales=SCALES):
    """nnU-Net's data-loader down-sampling (batchgeneratorsv2's ``DownsampleSegForDSTransform``, nearest-exact),
    applied per sample as nnU-Net's per-sample transforms do, then batched."""
    transform = DownsampleSegForDSTransform(ds_scales=scales)
    per_sample = [transform(segmentation=t)["segmentation"] for t in target]
    return [torch.stack([s[i] for s in per_sample]) for i in range(len(scales))]


def label_map(batch: int, generator: torch.Generator, ignore: bool = False) -> torch.Tensor:
    labels = torch.randint(0, N_CLASSES, (batch, 1, *FULL_SHAPE), generator=generator)
    if ignore:
        labels[torch.rand(labels.shape, generator=generator) < 0.3] = IGNORE
    return labels.to(torch.int16)  # nnU-Net's segmentation dtype


def nnunet_targets(region: bool, n_regions: int = 2, ignore: bool = False, batch: int = 2, seed: int = 0):
    """Down-sampled targets as nnU-Net builds them: label maps, or region maps (regions (1, 2) and (2,) of a label
    map, as in nnU-Net's ``regions_class_order``) with the ignore mask as last channel."""
    g = torch.Generator().manual_seed(seed)
    labels = label_map(batch, g, ignore)
    if region:
        valid = labels != IGNORE
        regions = [(labels >= 1) & valid, (labels == 2) & valid][:n_regions]
        channels = regions + ([~valid] if ignore else [])
        full = torch.cat(channels, 1).to(torch.int16)
    else:
        full = labels
    return downsample_targets(full)


def random_outputs(targets, n_out: int, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn((t.shape[0], n_out, *t.shape[2:]), generator=g)).to(dtype).requires_grad_(True)
            for t in targets]


def grads(outputs):
    return [None if o.grad is None else o.grad.clone() for o in outputs]


def test_downsampled_targets_have_the_output_shapes():
    targets = nnunet_targets(False)
    assert [tuple(t.shape[2:]) for t in targets] == [(8, 8, 12), (4, 4, 6), (2, 2, 3)]


# ----------------------------------------------------------------------------------------------------------------
# list call == weighted sum of single-scale calls, for every loss
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.2), (1.0, 0.0, 2.5), None], ids=["explicit", "zero-mid", "default"])
@pytest.mark.parametrize("region", [False, True], ids=["label", "region"])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_list_equals_weighted_sum_of_scales(name, region, weights):
    targets = nnunet_targets(region)
    n_out = targets[0].shape[1] if region else N_CLASSES
    kwargs = {"class_priors": [0.4, 0.2]} if (name == "wce" and region) else {}
    loss = make_loss(name, region, deep_supervision_weights=weights, **kwargs)
    expected_weights = weights
    if weights is None:  # nnU-Net's 1/2**i with the lowest output off, normalised
        expected_weights = nnunet_deep_supervision_weights(3)
        assert expected_weights == pytest.approx((2 / 3, 1 / 3, 0.0))

    outputs = random_outputs(targets, n_out)
    value = loss(outputs, targets)
    value.backward()
    list_grads = grads(outputs)

    reference_outputs = random_outputs(targets, n_out)  # same seed: same values, fresh leaves
    single = make_loss(name, region, **kwargs)
    reference = sum(w * single(o, t) for w, o, t in zip(expected_weights, reference_outputs, targets) if w != 0)
    reference.backward()
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    for i, (w, g, g_ref) in enumerate(zip(expected_weights, list_grads, grads(reference_outputs))):
        if w == 0:  # nnU-Net does not evaluate outputs with weight 0 (and neither do we)
            assert g is None or g.abs().max() == 0, f"output {i} has weight 0 but received a gradient"
        else:
            torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-15, msg=f"gradient of output {i}")

    # the functional form gives the same
    functional_outputs = random_outputs(targets, n_out)
    torch.testing.assert_close(deep_supervision_loss(single, functional_outputs, targets, weights), value,
                               rtol=1e-12, atol=1e-12)


def test_tuples_are_accepted_like_lists():
    targets = nnunet_targets(False)
    loss = make_loss("softdice", False)
    outputs = random_outputs(targets, N_CLASSES)
    torch.testing.assert_close(loss(tuple(outputs), tuple(targets)), loss(outputs, targets))


# ----------------------------------------------------------------------------------------------------------------
# nnU-Net's weights and nnU-Net's own deep-supervised loss
# ----------------------------------------------------------------------------------------------------------------
def nnunet_trainer_loss(n_outputs: int, ddp: bool, region: bool = False, batch_dice: bool = False,
                        ignore_label=None):
    """Run nnU-Net's real ``nnUNetTrainer._build_loss`` on a stub holding only what that method reads."""
    stub = SimpleNamespace(
        label_manager=SimpleNamespace(has_regions=region, ignore_label=ignore_label),
        configuration_manager=SimpleNamespace(batch_dice=batch_dice),
        is_ddp=ddp, enable_deep_supervision=True,
        _do_i_compile=lambda: False,
        _get_deep_supervision_scales=lambda: [[1.0, 1.0, 1.0]] + [[0.5 ** i] * 3 for i in range(1, n_outputs)],
    )
    return nnUNetTrainer._build_loss(stub)


@pytest.mark.parametrize("ddp", [False, True], ids=["single", "ddp"])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_default_weights_are_nnunet_trainer_weights(n, ddp):
    ours = nnunet_deep_supervision_weights(n, ddp=ddp)
    theirs = nnunet_trainer_loss(n, ddp).weight_factors
    assert len(ours) == n
    np.testing.assert_allclose(ours, theirs, rtol=1e-15, atol=0)
    assert sum(ours) == pytest.approx(1.0)
    raw = np.array([1 / 2 ** i for i in range(n)])
    raw[-1] = 1e-6 if ddp else 0.0
    np.testing.assert_allclose(ours, raw / raw.sum(), rtol=1e-15)
    if ddp:
        assert ours[-1] > 0 and ours[-1] == pytest.approx(1e-6 / raw.sum())  # 1e-6 before normalising
    else:
        assert ours[-1] == 0.0


def test_single_output_weight():
    assert nnunet_deep_supervision_weights(1) == (1.0,)
    with pytest.raises(ValueError, match="at least one output"):
        nnunet_deep_supervision_weights(0)


@pytest.mark.parametrize("ignore", [False, True], ids=["no-ignore", "ignore"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["bd0", "bd1"])
@pytest.mark.parametrize("region", [False, True], ids=["label", "region"])
def test_dice_ce_matches_nnunet_deep_supervision_wrapper(region, batch_dice, ignore):
    ignore_label = IGNORE if ignore else None
    # with an ignore label nnU-Net's region BCE sums over regions (documented difference); with one region the
    # sum is the mean, so the comparison is exact
    n_regions = 1 if (region and ignore) else 2
    targets = nnunet_targets(region, n_regions=n_regions, ignore=ignore, batch=3, seed=5)
    n_out = n_regions if region else N_CLASSES
    nnunet = nnunet_trainer_loss(len(targets), ddp=False, region=region, batch_dice=batch_dice,
                                 ignore_label=ignore_label)
    ours = make_loss("dice_ce", region, batch_dice=batch_dice, ignore_label=ignore_label)  # default weights

    out_nnunet = random_outputs(targets, n_out, seed=9, dtype=torch.float32)
    out_ours = random_outputs(targets, n_out, seed=9, dtype=torch.float32)
    v_nnunet = nnunet(out_nnunet, targets)
    v_ours = ours(out_ours, targets)
    # nnU-Net returns CE - Dice, we CE + (1 - Dice): a constant sum(weights) * weight_dice = 1 apart
    torch.testing.assert_close(v_ours, v_nnunet + 1.0, rtol=1e-5, atol=1e-6)
    v_nnunet.backward()
    v_ours.backward()
    for i, (g_ours, g_nnunet) in enumerate(zip(grads(out_ours), grads(out_nnunet))):
        if g_nnunet is None:
            assert g_ours is None or g_ours.abs().max() == 0, f"output {i}"
        else:
            torch.testing.assert_close(g_ours, g_nnunet, rtol=1e-4, atol=1e-8, msg=f"gradient of output {i}")


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
def test_mismatched_list_lengths_raise():
    targets = nnunet_targets(False)
    outputs = random_outputs(targets, N_CLASSES)
    loss = make_loss("dice_ce", False)
    with pytest.raises(ValueError, match="3 network outputs but 2 target"):
        loss(outputs, targets[:2])
    with pytest.raises(ValueError, match="one target per output"):
        loss(outputs[:2], targets)
    with pytest.raises(ValueError, match="target"):
        loss(outputs, targets[0])  # a list of outputs but a single target tensor


def test_too_few_weights_raise():
    targets = nnunet_targets(False)
    loss = make_loss("softdice", False, deep_supervision_weights=(1.0, 0.5))
    with pytest.raises(ValueError, match="3 outputs but only 2 weights"):
        loss(random_outputs(targets, N_CLASSES), targets)


@pytest.mark.parametrize("name", ["softdice", "ce", "lovasz", "unified_focal"])
def test_all_zero_weights_raise(name):
    targets = nnunet_targets(False)
    outputs = random_outputs(targets, N_CLASSES)
    with pytest.raises(ValueError, match="at least one of them > 0"):  # refused when the loss is built
        make_loss(name, False, deep_supervision_weights=(0, 0, 0))
    with pytest.raises(ValueError, match="weight must be non-zero"):
        deep_supervision_loss(make_loss(name, False), outputs, targets, [0.0, 0.0, 0.0])


def test_error_messages_are_one_line():
    targets = nnunet_targets(False)
    outputs = random_outputs(targets, N_CLASSES)
    for call in (lambda: make_loss("softdice", False)(outputs, targets[:1]),
                 lambda: make_loss("softdice", False, deep_supervision_weights=(0, 0, 0))(outputs, targets)):
        with pytest.raises(ValueError) as info:
            call()
        assert "\n" not in str(info.value)
