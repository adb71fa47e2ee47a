"""The speed-ups of functional.py / inputs.py give the *same bits* as the straightforward formulas they replace.

* ``overlap_stats(..., hard=True)`` (fused autograd function for gamma > 1) vs the generic autograd graph;
* ``lovasz_grad`` (one cumulative sum, no concatenation) vs Berman's formulation with two cumulative sums;
* ``prepare_batch``'s one-hot (``labels == class``) vs ``zeros().scatter_(1, labels, 1)``.
"""
import pytest
import torch

from nnunet_losses import functional as Fn
from nnunet_losses.inputs import prepare_batch


def _overlap_case(dtype, region, masked, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 9, 7, 5)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    x[..., 0] *= 30  # saturated: probabilities exactly 0 and 1
    x = x.to(dtype)
    if region:
        y = (torch.rand(shape, generator=g) > 0.6).to(dtype)
    else:
        y = torch.zeros(shape, dtype=dtype).scatter_(1, torch.randint(0, 3, (2, 1, *shape[2:]), generator=g), 1)
    mask = (torch.rand((2, 1, *shape[2:]), generator=g) > 0.2).to(dtype) if masked else None
    w = torch.randn(3, 2, 3 if region else 2, generator=g, dtype=torch.float64).to(dtype)
    return x, y, mask, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("region", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("gamma", [1.5, 2.0, 3.0])
def test_hard_overlap_stats_are_bitwise_the_generic_ones(dtype, region, masked, gamma):
    x, y, mask, w = _overlap_case(dtype, region, masked, seed=int(gamma * 10) + 2 * region + masked)
    results = []
    for hard in (False, True):
        xx = x.clone().requires_grad_()
        p = torch.sigmoid(xx) if region else torch.softmax(xx, 1)
        c0 = 0 if region else 1
        stats = Fn.overlap_stats(p[:, c0:], y[:, c0:], mask, gamma, hard=hard)
        sum((wi * s).sum() for wi, s in zip(w, stats)).backward()
        results.append((stats, xx.grad))
    (generic, g_generic), (fused, g_fused) = results
    for a, b in zip(generic, fused):
        assert torch.equal(a, b)
    assert torch.equal(g_generic, g_fused)


def _berman_lovasz_grad(fg_sorted):
    """The formulation the library used before (Berman et al.'s lovasz_grad, row-wise)."""
    gts = fg_sorted.sum(1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(1)
    union = gts + (1 - fg_sorted).cumsum(1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lovasz_grad_is_bitwise_bermans_formulation(dtype):
    g = torch.Generator().manual_seed(0)
    fg = (torch.rand(7, 5000, generator=g) > torch.rand(7, 1, generator=g)).to(dtype)
    fg[0] = 0  # a row without foreground
    fg[1] = 1  # a row of foreground only
    assert torch.equal(Fn.lovasz_grad(fg), _berman_lovasz_grad(fg))
    assert torch.equal(Fn.lovasz_grad(fg.view(7, 1, 5000)).view(7, 5000), _berman_lovasz_grad(fg))  # (..., N)


@pytest.mark.parametrize("tdtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32])
@pytest.mark.parametrize("ignore_label", [None, 3])
def test_label_onehot_equals_scatter(tdtype, ignore_label):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g)
    target = torch.randint(0, 3 if ignore_label is None else 4, (2, 1, 6, 5, 4), generator=g).to(tdtype)
    batch = prepare_batch(logits, target, region_based=False, ignore_label=ignore_label)
    labels = target.long()
    if ignore_label is not None:
        labels = torch.where(labels != ignore_label, labels, 0)
    assert torch.equal(batch.onehot, torch.zeros_like(logits).scatter_(1, labels, 1))
    assert batch.hard
