"""Shared builders for the robustness, deep supervision, DDP and API tests (not a test module).

Label (softmax) mode uses ``N_CLASSES`` output channels and a label map ``(B, 1, *spatial)``; region (sigmoid) mode
uses ``N_REGIONS`` outputs and binary region maps ``(B, R, *spatial)`` -- plus nnU-Net's ignore channel (1 = ignored)
as channel ``R`` when the loss has an ignore label.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from nnunet_losses import available_losses, get_loss, loss_arguments

#: every registered loss (the registry is the one list; test_api checks it against the expected names)
ALL_LOSSES = tuple(available_losses())
#: losses whose statistics can be reduced over the batch (and over DDP ranks)
BATCH_DICE_LOSSES = tuple(n for n in ALL_LOSSES if "batch_dice" in loss_arguments(n))
#: compound losses with a per-voxel mean (CE-like) term next to the overlap term
VOXEL_MEAN_COMPOUND = ("combo", "combo_pp", "unified_focal", "unified_focal_pp", "dice_ce")

N_CLASSES = 3
N_REGIONS = 2
IGNORE = N_CLASSES  # nnU-Net's ignore label is the highest label value
SPATIAL = {2: (6, 7), 3: (4, 5, 3)}


def n_outputs(region: bool) -> int:
    return N_REGIONS if region else N_CLASSES


def with_do_bg(modes):
    """``(*mode, do_bg)`` for each mode whose first item is ``region``: both ``do_bg`` values for label maps, only
    ``False`` for region maps -- they have no background channel, so ``do_bg=True`` would repeat the same case
    (test_robustness.py::test_region_maps_ignore_do_bg_and_only_present checks that it changes nothing)."""
    return [(*mode, do_bg) for mode in modes for do_bg in ((False,) if mode[0] else (False, True))]


def mode_id(mode) -> str:
    """Test id of ``(region, channels, spatial, do_bg)``."""
    region, n_ch, spatial, do_bg = mode
    return f"{'region' if region else 'label'}{n_ch}-{len(spatial)}d-{'bg' if do_bg else 'nobg'}"


def make_loss(name: str, region: bool, **kwargs):
    """``get_loss(name, region_based=region, **kwargs)`` with valid class priors for wce."""
    if name == "wce" and "class_priors" not in kwargs:
        kwargs["class_priors"] = [0.3, 0.6] if region else [0.7, 0.2, 0.1]
    return get_loss(name, region_based=region, **kwargs)


def make_target(region: bool, batch: int, spatial: Tuple[int, ...], kind: str = "random",
                ignore: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """nnU-Net target. ``kind``: random | empty (all background) | full (no background voxel).

    ``ignore``: bool ``(B, 1, *spatial)`` of ignored voxels (label ``IGNORE`` / ignore channel), or None for no
    ignore label (no extra channel).
    """
    if region:
        t = (torch.rand((batch, N_REGIONS, *spatial), generator=generator) > 0.5).float()
        if kind == "empty":
            t.zero_()
        elif kind == "full":
            t.fill_(1)
        if ignore is not None:
            t = torch.cat([t, ignore.float()], 1)  # region values under ignored voxels stay random
        return t
    if kind == "full":
        t = torch.randint(1, N_CLASSES, (batch, 1, *spatial), generator=generator)
    else:
        t = torch.randint(0, N_CLASSES, (batch, 1, *spatial), generator=generator)
        if kind == "empty":
            t.zero_()
    if ignore is not None:
        t = torch.where(ignore, IGNORE, t)
    return t


def target_onehot(region: bool, target: Tensor) -> Tensor:
    """One-hot ``(B, K, *spatial)`` of the (non-ignore) channels; ignored label voxels count as background."""
    if region:
        return target[:, :N_REGIONS].float()
    labels = torch.where(target == IGNORE, 0, target).long()
    return torch.zeros((target.shape[0], N_CLASSES, *target.shape[2:])).scatter_(1, labels, 1)


def confident_logits(region: bool, target: Tensor, magnitude: float = 1e4, right: bool = True) -> Tensor:
    """Logits ``+-magnitude``: confidently right (correct class/region value high) or confidently wrong."""
    sign = 1.0 if right else -1.0
    return sign * magnitude * (2 * target_onehot(region, target) - 1)


@contextlib.contextmanager
def one_torch_thread():
    """Run with one intra-op thread (restored afterwards): these tests use tiny tensors, where a second thread only
    adds synchronisation -- 3-4x slower on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def lib_loss(name: str, logits, target, region: bool, ignore_label: Optional[int], **kwargs):
    """The library's loss value and logits gradient in float64 (via the registry), for the reference tests."""
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = get_loss(name, region_based=region, ignore_label=ignore_label, **kwargs)
    value = loss(x, torch.from_numpy(np.asarray(target)))
    value.backward()
    return value, x.grad


def values_and_grads(fn, x, *args):
    """``fn(x, *args)``'s outputs and the gradient w.r.t. ``x`` of an arbitrary (seeded) linear combination of all
    of them -- one backward that exercises every output's gradient at once (fused passes vs general formulas)."""
    xx = x.clone().requires_grad_()
    outs = fn(xx, *args)
    g = torch.Generator().manual_seed(3)
    sum((torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) * o).sum() for o in outs).backward()
    return [o.detach() for o in outs], xx.grad


def assert_gradcheck_once_differentiable(fn, x: Tensor, **tolerances) -> None:
    """``gradcheck`` of ``fn`` at ``x``, and a second derivative refused with a RuntimeError (the fused passes write
    their gradient out without a graph: differentiable once, never silently wrong twice)."""
    import pytest
    assert torch.autograd.gradcheck(fn, (x,), **tolerances)
    (grad,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()
