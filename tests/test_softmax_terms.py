"""The fused label-map pass (nnunet_losses/softmax_terms.py) gives the general formulas' values and gradients.

* :func:`softmax_label_terms` against ``overlap_stats`` of ``softmax`` and the NLL formulas of functional.py under
  autograd (float32 and float64, masks, background on/off, DSC++ exponents 1, 2, 3, every NLL kind, confident
  and saturated logits), and against finite differences (gradcheck);
* every label loss that takes it, on a label map, against the same loss on the one-hot probability target (the
  general path), with an ignore label, deep supervision and +-1e4 / -inf logits. The float64 paper references
  (tests/test_reference*.py) run on label maps and so check the fused path too.
"""
import itertools

import pytest
import torch

import nnunet_losses
from loss_cases import assert_gradcheck_once_differentiable, values_and_grads
from nnunet_losses import functional as Fn
from nnunet_losses.softmax_terms import CategoricalNLL, OneVsRestNLL, softmax_label_terms

NLLS = {"none": None, "ce": CategoricalNLL(), "asymmetric-focal": CategoricalNLL(
    torch.tensor([0.4, 0.6, 0.6], dtype=torch.float64), (0.5, 0.0, 0.0)),
    "weighted-focal": CategoricalNLL(torch.tensor([0.2, 1.5, 0.9], dtype=torch.float64), (2.0, 2.0, 2.0)),
    "one-vs-rest": OneVsRestNLL(0.3, 0.7), "one-vs-rest-equal": OneVsRestNLL(0.5, 0.5)}


def _general(x, onehot, mask, c0, gamma, nll):
    """The same numbers from the formulas of functional.py under autograd."""
    out = []
    if gamma is not None:
        out += list(Fn.overlap_stats(torch.softmax(x, 1)[:, c0:], onehot[:, c0:], mask, gamma))
    if isinstance(nll, CategoricalNLL):
        out.append(Fn.masked_mean(Fn.categorical_focal_nll(torch.log_softmax(x, 1), onehot, *nll), mask))
    elif isinstance(nll, OneVsRestNLL):
        nll_map = Fn.binary_focal_nll(torch.log_softmax(x, 1)[:, c0:], Fn.log_one_minus_softmax(x)[:, c0:],
                                      onehot[:, c0:], nll.w_pos, nll.w_neg)
        out.append(Fn.masked_mean(nll_map, mask))
    return out


def _fused(x, onehot, mask, c0, gamma, nll):
    terms = softmax_label_terms(x, onehot, mask, c0, gamma, nll)
    assert terms is not None, "the fused path was expected to apply"
    return (list(terms.stats) if gamma is not None else []) + ([terms.nll] if nll is not None else [])


def _case(dtype, masked, seed, margin=0.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g)
    onehot = torch.zeros((2, 3, 6, 5, 4), dtype=torch.float64).scatter_(1, labels, 1)
    x = 3 * torch.randn(onehot.shape, generator=g, dtype=torch.float64) + margin * onehot
    x[:, :, 0, 0] = torch.finfo(dtype).min * (1 - onehot[:, :, 0, 0])  # -inf logits as prepare_batch passes them
    mask = (torch.rand((2, 1, 6, 5, 4), generator=g) > 0.3).to(dtype) if masked else None
    return x.to(dtype), onehot.to(dtype), mask


CASES = [(c0, gamma, nll) for c0, gamma, nll in itertools.product((0, 1), (None, 1.0, 2.0, 3.0), NLLS)
         if gamma is not None or nll != "none"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("margin", [0.0, 800.0], ids=["moderate", "confident"])
@pytest.mark.parametrize("c0,gamma,nll", CASES, ids=[f"c0={c}-gamma={g}-{n}" for c, g, n in CASES])
def test_fused_label_terms_equal_the_general_formulas(dtype, masked, margin, c0, gamma, nll):
    """'confident': the labelled class 800 above the others (p_t = 1 and 1 - p_t = 0 exactly in float32)."""
    x, onehot, mask = _case(dtype, masked, seed=len(nll) + 7 * c0 + int(10 * (gamma or 0)), margin=margin)
    fused, g_fused = values_and_grads(_fused, x, onehot, mask, c0, gamma, NLLS[nll])
    general, g_general = values_and_grads(_general, x, onehot, mask, c0, gamma, NLLS[nll])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.isfinite(g_fused).all()
    for a, b in zip(fused, general):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    scale = max(g_general.abs().max().item(), 1 / x.numel())  # a mean's gradient is ~1/N per element
    torch.testing.assert_close(g_fused, g_general, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("nll", ["ce", "asymmetric-focal", "weighted-focal"])
def test_categorical_nll_from_the_label_map_equals_the_one_hot_path(dtype, masked, nll):
    """The categorical NLL alone reads the label map class by class (labels == c): the same value and gradient as
    from the one-hot map, bit for bit (the same products and sums)."""
    x, onehot, mask = _case(dtype, masked, seed=31)
    labels = onehot.argmax(1, keepdim=True).to(torch.int16)
    from_labels = values_and_grads(lambda z: [softmax_label_terms(z, None, mask, 0, None, NLLS[nll], labels).nll], x)
    from_onehot = values_and_grads(lambda z: [softmax_label_terms(z, onehot, mask, 0, None, NLLS[nll]).nll], x)
    assert torch.equal(from_labels[0][0], from_onehot[0][0]) and torch.equal(from_labels[1], from_onehot[1])


@pytest.mark.parametrize("name,kwargs", [("ce", {}), ("wce", {"class_priors": [0.5, 0.3, 0.2]}), ("focal", {})])
@pytest.mark.parametrize("ignore_label", [None, 3])
def test_pixelwise_label_losses_never_build_the_one_hot_map(name, kwargs, ignore_label):
    """Guards the speed-up itself: CE / wCE / Focal on a label map read ``labels == c`` class by class."""
    from nnunet_losses.batch import prepare_batch
    x, onehot, _ = _case(torch.float32, False, seed=2)
    labels = onehot.argmax(1, keepdim=True).to(torch.int16)
    if ignore_label is not None:
        labels[:, :, 0] = ignore_label
    loss = nnunet_losses.get_loss(name, ignore_label=ignore_label, **kwargs)
    batch = prepare_batch(x.requires_grad_(), labels, False, ignore_label)
    loss.compute(batch).backward()
    assert batch.dense_target is None and torch.isfinite(x.grad).all()


def test_the_label_map_alone_is_refused_where_the_one_hot_map_is_needed():
    x, onehot, _ = _case(torch.float32, False, seed=2)
    labels = onehot.argmax(1, keepdim=True)
    for gamma, nll in ((1.0, None), (None, NLLS["one-vs-rest"]), (1.0, NLLS["ce"])):
        with pytest.raises(ValueError, match="one-hot"):
            softmax_label_terms(x, None, None, 1, gamma, nll, labels)


@pytest.mark.parametrize("nll", ["ce", "asymmetric-focal", "one-vs-rest"])
def test_saturated_probabilities_take_the_general_path(nll):
    """A confidently wrong voxel (labelled class 200 below the others: p_t < 1e-30) has no fused NLL."""
    x, onehot, _ = _case(torch.float32, False, seed=5)
    x = x - 200 * onehot * (torch.arange(x[0, 0].numel()).view(x.shape[2:]) == 7)
    assert softmax_label_terms(x, onehot, None, 1, 1.0, NLLS[nll]) is None
    assert softmax_label_terms(x, onehot, None, 1, 1.0, None) is not None  # statistics alone never saturate
    assert softmax_label_terms(x, onehot, None, 1, 0.5, None) is None  # gamma < 1: safe_pow's linear piece
    # the same voxel ignored: it neither sends the batch to the general path nor makes the mean NaN (0 * log 0)
    mask = torch.ones_like(x[:, :1])
    mask.view(2, -1)[:, 7] = 0
    x[0, :, 0, 0, 0] = torch.tensor([0.0, -1e4, 1e4]) * (1 - 2 * onehot[0, :, 0, 0, 0])  # p_t = 0 exactly
    mask[0, :, 0, 0, 0] = 0
    fused, g_fused = values_and_grads(_fused, x, onehot, mask, 1, 1.0, NLLS[nll])
    general, g_general = values_and_grads(_general, x, onehot, mask, 1, 1.0, NLLS[nll])
    for a, b in zip(fused, general):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fused, g_general, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("c0,gamma,nll", [(1, 1.0, "one-vs-rest"), (0, 2.0, "asymmetric-focal"),
                                          (1, 3.0, "weighted-focal"), (0, None, "one-vs-rest"), (1, 2.0, "none")])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_fused_label_terms_gradcheck_and_once_differentiable(c0, gamma, nll, masked):
    x, onehot, mask = _case(torch.float64, masked, seed=11)
    x = x[:, :, 1:4, :3, :2].contiguous().requires_grad_()  # small, and without the -inf voxels (finite differences)
    onehot, mask = onehot[:, :, 1:4, :3, :2], None if mask is None else mask[:, :, 1:4, :3, :2]
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(2, 3 - c0, generator=g, dtype=torch.float64) for _ in range(3)] + [torch.tensor(0.7)]

    def combined(z):
        outs = _fused(z, onehot, mask, c0, gamma, NLLS[nll])
        weights_used = weights[:3] + weights[3:] if gamma is not None else weights[3:]
        return sum((w * o).sum() for w, o in zip(weights_used, outs))

    assert_gradcheck_once_differentiable(combined, x, eps=1e-6, atol=1e-8, rtol=1e-6)


LABEL_LOSSES = ["ce", "wce", "focal", "softdice", "softjaccard", "dscpp", "tversky", "focal_tversky", "tversky_pp",
                "focal_tversky_pp", "combo", "combo_pp", "unified_focal", "unified_focal_pp", "dice_ce"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore_label", [None, 3])
@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_label_map_losses_equal_the_one_hot_probability_target(name, ignore_label, dtype):
    """Deep supervision (two outputs), +-1e4 and -inf logits, batch dice on: the label map (fused path) and its
    one-hot probabilities (+ ignore channel; the general path) give the same value and gradient."""
    g = torch.Generator().manual_seed(len(name))
    kwargs = {"class_priors": [0.5, 0.3, 0.2]} if name == "wce" else {}
    if "batch_dice" in nnunet_losses.loss_arguments(name):
        kwargs["batch_dice"] = True
    loss = nnunet_losses.get_loss(name, ignore_label=ignore_label, deep_supervision_weights=[0.7, 0.3], **kwargs)
    outputs, hard, soft = [], [], []
    for shape in ((6, 5, 4), (3, 3, 2)):
        labels = torch.randint(0, 3 if ignore_label is None else 4, (2, 1) + shape, generator=g)
        onehot = torch.zeros((2, 3) + shape, dtype=dtype).scatter_(1, labels.clamp_max(2), 1)
        x = 3 * torch.randn((2, 3) + shape, generator=g, dtype=dtype) + 40 * onehot
        x[:, 1, 0, 0] = 1e4 * (2 * onehot[:, 1, 0, 0] - 1)  # saturated: p exactly 0 and 1
        x[:, 2, 1, 1] = torch.where(onehot[:, 2, 1, 1] > 0, 0.0, -float("inf"))  # a masked-out class
        target = onehot if ignore_label is None else torch.cat([onehot * (labels < 3), (labels == 3).to(dtype)], 1)
        outputs.append(x)
        hard.append(labels.to(torch.int16))
        soft.append(target)
    results = []
    for target in (hard, soft):
        xs = [x.clone().requires_grad_() for x in outputs]
        value = loss(xs, target)
        value.backward()
        results.append((value.detach(), [x.grad for x in xs]))
    (v_hard, g_hard), (v_soft, g_soft) = results
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(v_hard, v_soft, rtol=tol, atol=tol)
    for a, b in zip(g_hard, g_soft):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(b.abs().max().item(), 1 / b.numel()))


@pytest.mark.parametrize("name", ["ce", "focal", "dice_ce"])
def test_backward_twice_with_retain_graph(name):
    """The categorical NLL's backward writes its gradient over the saved softmax; a second backward
    (retain_graph) recomputes it and gives the same gradient again."""
    x, onehot, _ = _case(torch.float32, False, seed=4)
    labels = onehot.argmax(1, keepdim=True).to(torch.int16)
    x.requires_grad_()
    value = nnunet_losses.get_loss(name)(x, labels)
    value.backward(retain_graph=True)
    first = x.grad.clone()
    value.backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("smallest, size", [(0.3, 4096), (1e-7, 4096), (1e-30, 4096), (0.3, 4095), (1e-200, 512)])
def test_plain_ce_sum_of_logs_from_products_equals_the_sum_of_logs(dtype, smallest, size):
    """Plain CE's ``sum log p_t`` from logarithms of products of up to 16 probabilities equals the float64 sum of
    the logarithms to rounding, also where products of 16 would leave the normal range (smallest 1e-7: only 4
    per product in float32) or nothing may be multiplied (1e-30; an odd size)."""
    if dtype == torch.float32 and smallest < 1e-30:
        pytest.skip("below float32's normal range (the fused pass refuses p_t < 1e-30)")
    gen = torch.Generator().manual_seed(7)
    prob = torch.rand(size, generator=gen, dtype=torch.float64) ** 0.2 * (1 - smallest) + smallest
    prob[torch.rand(size, generator=gen) < 0.8] = smallest  # many products of the smallest value alone
    eps = torch.finfo(dtype).eps
    for rows, start_dim in ((1, 0), (4, 1)):  # one sum, or one per row (the region BCE's per-(sample, region) sums)
        p = prob[: size - size % rows].reshape(rows, -1) if start_dim else prob
        expected = p.log().sum(-1)
        atol = 64 * eps * p.log().abs().sum().item() + 1e-12
        for in_place in (False, True):
            given = p.to(dtype, copy=True)  # ours: in_place may overwrite it, in_place=False must keep it
            got = Fn.sum_of_logs(given, float(given.min()), start_dim, in_place=in_place)
            assert got.shape == expected.shape and torch.isfinite(got).all()
            torch.testing.assert_close(got.double(), expected, rtol=0, atol=atol)
            if not in_place:
                assert torch.equal(given, p.to(dtype))
