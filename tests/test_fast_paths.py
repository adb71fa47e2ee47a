"""The speed-ups of functional.py / inputs.py give the *same bits* as the straightforward formulas they replace.

* ``overlap_stats(..., hard=True)`` (fused autograd function for gamma > 1) vs the generic autograd graph;
* ``lovasz_grad`` (one cumulative sum, no concatenation) vs Berman's formulation with two cumulative sums;
* ``sort_order_descending`` (compiled radix sort of float bits on CPU) vs ``torch.sort(descending=True,
  stable=True)``, and the Lovász loss through the compiled CPU pass vs sort + gather + ``lovasz_grad`` in autograd;
* ``sigmoid_binary_nll`` (torch's fused BCE with logits) vs ``binary_focal_nll`` with gamma 0 (to rounding);
* the hard-target focal NLLs (one focal factor per voxel) vs the general formulas over every channel;
* ``prepare_batch``'s one-hot (``labels == class``) vs ``zeros().scatter_(1, labels, 1)``.
"""
import pytest
import torch

from loss_cases import assert_gradcheck_once_differentiable
from nnunet_losses import functional as Fn
from nnunet_losses.batch import prepare_batch


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


def _tricky_rows(shape, seed):
    """Non-negative float32 rows with many ties, both zeros, NaNs of both signs, values above 1, huge values."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(shape, generator=g)
    v[..., ::7] = 0.25
    v[..., 1::11] = 0.0
    v[..., 2::13] = -0.0
    v[..., 5::17] = 3.5
    v[..., 6::19] = 3.0e38
    v[..., 8::23] = float("inf")
    flat = v.view(-1)
    flat[9], flat[12] = float("nan"), -float("nan")
    return v


@pytest.mark.parametrize("shape", [(5, 300), (3, 40000), (2, 2, 70001), (1, 13), (4, 32767)])
def test_sort_order_is_torch_stable_descending_sort(shape):
    v = _tricky_rows(shape, seed=shape[-1])
    assert torch.equal(Fn.sort_order_descending(v), torch.sort(v, dim=-1, descending=True, stable=True).indices)


def test_sort_order_with_negative_values_or_other_dtypes_falls_back_to_torch_sort():
    g = torch.Generator().manual_seed(0)
    mixed = torch.rand(3, 1000, generator=g)
    mixed[1, 5] = -0.5  # only this row is left to torch.sort
    for v in (torch.rand(2, 40000, generator=g) - 0.1, torch.rand(2, 40000, generator=g, dtype=torch.float64),
              torch.rand(2, 40000, generator=g).half(), torch.rand(2, 0, 40000, generator=g), mixed):
        assert torch.equal(Fn.sort_order_descending(v), torch.sort(v, dim=-1, descending=True, stable=True).indices)


def _aten_sorts(fn) -> list:
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    return [e for e in prof.events() if e.name == "aten::sort"]


def test_compiled_sort_path_is_taken():
    """Guards the speed-up itself: non-negative float32 CPU rows are not sorted by torch (neither the order nor the
    Lovász extension), float64 rows are."""
    v = torch.rand(2, 40000)
    fg = (torch.rand(2, 40000) > 0.5).float()
    assert not _aten_sorts(lambda: Fn.sort_order_descending(v))
    assert not _aten_sorts(lambda: Fn.lovasz_extension(v, fg))
    assert _aten_sorts(lambda: Fn.lovasz_extension(v.double(), fg.double()))


def _lovasz_case(dtype, region, soft, ignore, seed):
    """Logits with saturated voxels (+-1e4; -inf in label mode) and exact ties among the errors, the target as
    nnU-Net gives it (int16 labels, bool regions) or soft, optionally with ignored voxels."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 9, 8, 7)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    x[..., 0] = 1e4 * torch.sign(x[..., 0])
    x[..., 1] = torch.round(x[..., 1])  # repeated values: equal errors
    if not region:
        x[0, 2, 0, :, 1] = -float("inf")
    x = x.to(dtype)
    if soft:
        y = torch.rand(shape, generator=g, dtype=dtype)
        if not region:
            y = y / y.sum(1, keepdim=True)
        if ignore:
            y = torch.cat([y, (torch.rand((2, 1, *shape[2:]), generator=g) > 0.8).to(dtype)], 1)
        return x, y, (3 if ignore else None)
    labels = torch.randint(0, 4 if ignore else 3, (2, 1, *shape[2:]), generator=g)
    if region:
        y = labels > torch.arange(3).view(1, 3, 1, 1, 1)
        y = torch.cat([y, labels == 3], 1) if ignore else y
        return x, y, (3 if ignore else None)
    return x, labels.to(torch.int16), (3 if ignore else None)


def _loss_and_grad(loss, x, y):
    xx = [xi.clone().requires_grad_() for xi in x] if isinstance(x, list) else x.clone().requires_grad_()
    v = loss(xx, y)
    v.backward()
    return v.detach(), ([xi.grad for xi in xx] if isinstance(x, list) else xx.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("region", [False, True])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_cpu_lovasz_equals_the_autograd_path(dtype, region, soft, ignore, batch_dice, monkeypatch):
    """The compiled CPU pass (_CpuLovaszExtension) vs sort + gather + lovasz_grad through autograd, on deep
    supervision lists: same value to rounding (summed in float64), the gradient bit for bit (the same operations
    in the same order; the soft hinge to rounding)."""
    import nnunet_losses
    x, y, ignore_label = _lovasz_case(dtype, region, soft, ignore, seed=region + 2 * soft + 4 * ignore)
    xs = [x, x[:, :, ::2, ::2, ::2]]
    ys = [y, y[:, :, ::2, ::2, ::2]]
    for do_bg in (False,) if region else (False, True):
        loss = nnunet_losses.get_loss("lovasz", region_based=region, batch_dice=batch_dice, do_bg=do_bg,
                                      ignore_label=ignore_label, deep_supervision_weights=(1.0, 0.5))
        with monkeypatch.context() as patch:
            v_fast, g_fast = _loss_and_grad(loss, xs, ys)
            patch.setattr(Fn, "_cpu_fast_path", lambda errors, fg: False)
            v_slow, g_slow = _loss_and_grad(loss, xs, ys)
        eps = torch.finfo(dtype).eps
        assert torch.isfinite(v_fast) and float(v_fast) == pytest.approx(float(v_slow), rel=8 * eps, abs=8 * eps)
        for a, b in zip(g_fast, g_slow):
            assert torch.isfinite(a).all()
            if region and soft:  # the hinge's slope 1 - 2y is multiplied into g before grad_output, not after
                assert torch.allclose(a, b, rtol=4 * eps, atol=0)
            else:
                assert torch.equal(a, b)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("error_map", ["identity", "abs", "relu", "hinge"])
def test_cpu_lovasz_extension_gradcheck_and_once_differentiable(soft, error_map):
    g = torch.Generator().manual_seed(5 + soft)
    values = torch.rand(3, 40, generator=g, dtype=torch.float64)  # distinct errors: the order is locally constant
    if error_map != "identity":  # both signs, no error within gradcheck's step of another or of the kink at 0
        values = torch.where(torch.rand(3, 40, generator=g) > 0.5, values, -values - 1)
    else:
        values[1, 7] = 0.0  # an ignored voxel (error 0, no foreground; abs and relu have their kink there)
    fg = torch.rand(3, 40, generator=g, dtype=torch.float64)
    fg = fg if soft else (fg > 0.6).to(torch.float64)
    fg[1, 7] = 0.0
    values.requires_grad_()
    assert_gradcheck_once_differentiable(lambda v: Fn.lovasz_extension(v, fg, error_map), values, eps=1e-7,
                                         atol=1e-8)


@pytest.mark.parametrize("soft", [False, True])
def test_lovasz_extension_first_channel_and_abs_diff(soft):
    """``abs_diff`` of the probabilities from channel 1 on (Lovász-softmax without background) is ``abs`` of the
    sliced difference; the skipped channel gets gradient 0; ``gradcheck`` through the compiled pass."""
    g = torch.Generator().manual_seed(8 + soft)
    p = torch.rand(2, 3, 50, generator=g, dtype=torch.float64)
    fg = torch.rand(2, 3, 50, generator=g, dtype=torch.float64)
    fg = fg if soft else (fg > 0.6).to(torch.float64)
    p.requires_grad_()
    out = Fn.lovasz_extension(p, fg, "abs_diff", first_channel=1)
    expected = Fn.lovasz_extension_autograd((p[:, 1:] - fg[:, 1:]).abs(), fg[:, 1:])
    assert out.shape == (2, 2) and torch.allclose(out, expected, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad((out * torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)).sum(), p)
    (grad_expected,) = torch.autograd.grad(
        (expected * torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)).sum(), p)
    assert torch.equal(grad, grad_expected) and not grad[:, 0].any()
    assert torch.autograd.gradcheck(lambda v: Fn.lovasz_extension(v, fg, "abs_diff", first_channel=1), (p,),
                                    eps=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="first_channel"):
        Fn.lovasz_extension(p[0, 0], fg[0, 0], "abs_diff", first_channel=1)


def test_cpu_lovasz_rows_on_threads_equal_one_thread():
    """With several torch threads the rows are spread over a thread pool: the same value and gradient bits, and no
    row left to torch.sort."""
    g = torch.Generator().manual_seed(7)
    values = torch.randn(2, 3, 5000, generator=g)
    fg = (torch.rand(2, 3, 5000, generator=g) > 0.7).float()
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 3):
            torch.set_num_threads(n_threads)
            v = values.clone().requires_grad_()
            out = Fn.lovasz_extension(v, fg, "abs")
            out.backward(torch.arange(6.0).view(2, 3))
            results.append((out.detach(), v.grad))
        assert not _aten_sorts(lambda: Fn.lovasz_extension(values, fg, "abs"))  # every row on the compiled sort
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("error_map", ["identity", "abs", "abs_diff", "relu", "hinge"])
def test_cpu_lovasz_extension_on_long_rows_equals_the_autograd_path(error_map, soft):
    """Rows longer than the compiled sweep's chunks (7001 is no multiple of them), with MSD buckets sorted both
    ways (numba's sort, LSD passes), ties, both zeros, and errors 0 with or without a denormal error among them:
    same value to rounding, the gradient bit for bit (the soft hinge to rounding)."""
    from nnunet_losses import lovasz_cpu
    n = 7001
    assert n > 2 * lovasz_cpu._SWEEP_CHUNK
    g = torch.Generator().manual_seed(11 + soft)
    values = 2 * torch.randn(2, 3, n, generator=g)
    values[..., ::7] = 0.25
    values[..., 1::11] = 0.0
    values[..., 2::13] = -0.0
    values[..., 3::17] = 1.0  # hinge: margin 0 at the foreground
    values[0, 1, 5::97] = 1e-40  # a denormal error among the errors 0 (identity, abs, relu)
    values[1, 2, :n // 2] = 0.0  # a row of mostly zeros
    if error_map == "identity":
        values = values.abs()
    fg = torch.rand(2, 3, n, generator=g)
    fg = fg if soft else (fg > 0.6).float()
    weights = torch.rand(2, 3, generator=g)
    a, b = values.clone().requires_grad_(), values.clone().requires_grad_()
    va = Fn.lovasz_extension(a, fg, error_map)
    vb = Fn.lovasz_extension_autograd(Fn.LOVASZ_ERROR_MAPS[error_map](b, fg), fg)
    (va * weights).sum().backward()
    (vb * weights).sum().backward()
    assert torch.allclose(va, vb, rtol=1e-5, atol=1e-6)
    if error_map == "hinge" and soft:
        assert torch.allclose(a.grad, b.grad, rtol=4 * torch.finfo(torch.float32).eps, atol=0)
    else:
        assert torch.equal(a.grad, b.grad)


def test_cpu_lovasz_extension_with_negative_errors_equals_the_autograd_path():
    """lovasz_extension is public: a row holding negative values (never a Lovász error) is sorted by torch.sort."""
    g = torch.Generator().manual_seed(6)
    errors = torch.rand(3, 1000, generator=g) - 0.2
    errors[0].abs_()
    fg = (torch.rand(3, 1000, generator=g) > 0.7).float()
    a, b = errors.clone().requires_grad_(), errors.clone().requires_grad_()
    va, vb = Fn.lovasz_extension(a, fg), Fn.lovasz_extension_autograd(b, fg)
    va.sum().backward()
    vb.sum().backward()
    assert torch.allclose(va, vb, rtol=1e-6, atol=1e-6) and torch.equal(a.grad, b.grad)


WEIGHTS = [(1.0, 1.0), (0.7, 0.7), (0.8, 0.2), (1.0, 0.0), ("per-channel", "per-channel"), ("per-channel", 0.5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("w_pos,w_neg", WEIGHTS)
@pytest.mark.parametrize("soft", [False, True])
def test_fused_sigmoid_nll_equals_the_general_formula(dtype, w_pos, w_neg, soft):
    """Values and gradients of the fused path against binary_focal_nll(logsigmoid(x), logsigmoid(-x), ...),
    with +-1e4 logits, soft and hard targets, scalar and per-channel weights (w- = 0: the fallback)."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(7)
    x = 4 * torch.randn(2, 3, 6, 5, 4, generator=g, dtype=torch.float64)
    x[..., 0] = 1e4 * torch.sign(x[..., 0])
    y = torch.rand(x.shape, generator=g, dtype=torch.float64)
    y = y if soft else (y > 0.5).to(torch.float64)
    x, y = x.to(dtype), y.to(dtype)
    per_channel = torch.tensor([0.2, 1.5, 3.0], dtype=torch.float64)
    wp = per_channel if w_pos == "per-channel" else w_pos
    wn = per_channel.flip(0) if w_neg == "per-channel" else w_neg
    grads = []
    for fused in (True, False):
        xx = x.clone().requires_grad_()
        if fused:
            nll = Fn.sigmoid_binary_nll(xx, y, wp, wn)
        else:
            nll = Fn.binary_focal_nll(F.logsigmoid(xx), F.logsigmoid(-xx), y, wp, wn)
        weights = torch.linspace(0.5, 1.5, nll.numel(), dtype=dtype).view(nll.shape)
        (nll * weights).sum().backward()
        grads.append((nll.detach(), xx.grad))
    (v_fused, g_fused), (v_gen, g_gen) = grads
    rtol = 1e-5 if dtype == torch.float32 else 1e-13
    assert torch.isfinite(v_fused).all() and torch.isfinite(g_fused).all()
    torch.testing.assert_close(v_fused, v_gen, rtol=rtol, atol=rtol)
    torch.testing.assert_close(g_fused, g_gen, rtol=rtol, atol=rtol)


FOCAL_SETTINGS = [([2.0, 2.0, 2.0], None), ([0.5, 0.0, 0.0], [0.4, 0.6, 0.6]), ([0.0, 3.0, 1.5], [1.0, 2.0, 0.5]),
                  ([0.5, 0.5, 0.5], [0.2, 0.3, 0.5])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gammas,weights", FOCAL_SETTINGS)
def test_hard_categorical_focal_equals_the_general_formula(dtype, gammas, weights):
    """Label (softmax) focal NLL: the reference class's factor only (hard=True) vs all C channels, with
    saturated logits (p exactly 0 and 1), per-class gammas (Unified Focal's asymmetric form) and weights."""
    g = torch.Generator().manual_seed(11)
    x = 3 * torch.randn(2, 3, 7, 6, 5, generator=g, dtype=torch.float64)
    x[..., 0] *= 1000
    x = x.to(dtype)
    labels = torch.randint(0, 3, (2, 1, 7, 6, 5), generator=g)
    onehot = torch.zeros(x.shape, dtype=dtype).scatter_(1, labels, 1)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    out = []
    for hard in (True, False):
        xx = x.clone().requires_grad_()
        nll = Fn.categorical_focal_nll(torch.log_softmax(xx, 1), onehot, w, gammas, hard=hard)
        (nll * torch.linspace(0.5, 1.5, nll.numel(), dtype=dtype).view(nll.shape)).sum().backward()
        out.append((nll.detach(), xx.grad))
    (v_hard, g_hard), (v_gen, g_gen) = out
    assert torch.isfinite(v_hard).all() and torch.isfinite(g_hard).all()
    torch.testing.assert_close(v_hard, v_gen, rtol=0, atol=0)  # the same products, only fewer of them
    torch.testing.assert_close(g_hard, g_gen, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma_pos,gamma_neg,w_pos,w_neg", [(2.0, 2.0, 0.5, 0.5), (0.0, 0.5, 0.6, 0.4),
                                                             (3.0, 1.0, 1.0, 0.25), (0.5, 0.5, "per-channel", 1.0),
                                                             (1.0, 1.0, 1.0, 1.0), (0.0, 0.0, 0.3, 0.7)])
def test_hard_binary_focal_equals_the_general_formula(dtype, gamma_pos, gamma_neg, w_pos, w_neg):
    """Region (sigmoid) focal NLL on 0/1 maps: one log-sigmoid of where(y, x, -x) and one factor per voxel vs
    the two-sided formula, with +-1e4 logits."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(5)
    x = 4 * torch.randn(2, 3, 6, 5, 4, generator=g, dtype=torch.float64)
    x[..., 0] = 1e4 * torch.sign(x[..., 0])
    x = x.to(dtype)
    positive = torch.rand(x.shape, generator=g) > 0.5
    y = positive.to(dtype)
    wp = torch.tensor([0.2, 1.5, 3.0], dtype=torch.float64) if w_pos == "per-channel" else w_pos
    out = []
    for hard in (True, False):
        xx = x.clone().requires_grad_()
        if hard:
            nll = Fn.binary_focal_nll_hard(xx, y, wp, w_neg, gamma_pos, gamma_neg)
        else:
            nll = Fn.binary_focal_nll(F.logsigmoid(xx), F.logsigmoid(-xx), y, wp, w_neg, gamma_pos, gamma_neg)
        (nll * torch.linspace(0.5, 1.5, nll.numel(), dtype=dtype).view(nll.shape)).sum().backward()
        out.append((nll.detach(), xx.grad))
    (v_hard, g_hard), (v_gen, g_gen) = out
    assert torch.isfinite(v_hard).all() and torch.isfinite(g_hard).all()
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(v_hard, v_gen, rtol=tol, atol=tol)
    torch.testing.assert_close(g_hard, g_gen, rtol=tol, atol=tol)


@pytest.mark.parametrize("gamma_pos,gamma_neg", [(2.0, 2.0), (0.0, 0.5), (0.5, 1.5)])
def test_hard_binary_focal_gradcheck_and_once_differentiable(gamma_pos, gamma_neg):
    """The hand-written gradient of the fused region focal NLL against finite differences (float64), and a
    clear error rather than a wrong second derivative."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(x.shape, generator=g) > 0.5).to(x.dtype)
    w_pos = torch.tensor([0.7, 1.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: Fn.binary_focal_nll_hard(z, y, w_pos, 0.4, gamma_pos, gamma_neg),
                                    (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    (grad,) = torch.autograd.grad(Fn.binary_focal_nll_hard(x, y, 0.5, 0.5, 2.0, 2.0).sum(), x,
                                  create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_classes,first_channel", [(2, 1), (3, 1), (3, 0), (5, 1)])
@pytest.mark.parametrize("scale,margin", [(3.0, 0.0), (3.0, 800.0), (200.0, 0.0)],
                         ids=["fused", "fused-confident", "saturated-fallback"])
def test_one_vs_rest_softmax_nll_equals_the_general_formula(dtype, n_classes, first_channel, scale, margin):
    """Combo's label-mode modified CE on label maps: log of the other classes' summed probabilities (fused
    gradient) vs log_one_minus_softmax under autograd; the labelled class 800 above the rest (its S_c is 0, the
    fused path still applies); logit gaps of 600 take the general formula."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(17 + n_classes)
    labels = torch.randint(0, n_classes, (2, 1, 6, 5, 4), generator=g)
    onehot = torch.zeros((2, n_classes, 6, 5, 4), dtype=dtype).scatter_(1, labels, 1)
    x = (scale * torch.randn(2, n_classes, 6, 5, 4, generator=g, dtype=torch.float64)).to(dtype) + margin * onehot
    out = []
    for fused in (True, False):
        xx = x.clone().requires_grad_()
        if fused:
            nll = Fn.one_vs_rest_softmax_nll_hard(xx, onehot, first_channel, 0.3, 0.7)
        else:
            nll = Fn.binary_focal_nll(F.log_softmax(xx, 1)[:, first_channel:],
                                      Fn.log_one_minus_softmax(xx)[:, first_channel:], onehot[:, first_channel:],
                                      0.3, 0.7)
        (nll * torch.linspace(0.5, 1.5, nll.numel(), dtype=dtype).view(nll.shape)).sum().backward()
        out.append((nll.detach(), xx.grad))
    (v_fused, g_fused), (v_gen, g_gen) = out
    assert torch.isfinite(v_fused).all() and torch.isfinite(g_fused).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(v_fused, v_gen, rtol=tol, atol=tol)
    torch.testing.assert_close(g_fused, g_gen, rtol=tol, atol=tol)


def test_one_vs_rest_softmax_nll_gradcheck():
    g = torch.Generator().manual_seed(19)
    x = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    onehot = torch.zeros(x.shape, dtype=torch.float64).scatter_(1, torch.randint(0, 4, (2, 1, 3, 3), generator=g), 1)
    for c0 in (0, 1):
        assert torch.autograd.gradcheck(lambda z: Fn.one_vs_rest_softmax_nll_hard(z, onehot, c0, 0.8, 0.4), (x,),
                                        eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gammas,weights", FOCAL_SETTINGS + [(None, None), (None, [0.2, 0.5, 0.3]),
                                                             ([1.0, 1.0, 1.0], None), ([0.0, 1.0, 0.5], None)])
@pytest.mark.parametrize("scale", [3.0, 100.0], ids=["fused", "saturated-fallback"])
def test_fused_categorical_focal_equals_the_general_formula(dtype, gammas, weights, scale):
    """Label (softmax) CE / weighted CE / focal on label maps: one softmax and the gradient written out vs
    categorical_focal_nll of log_softmax under autograd; logit gaps of ~300 take the general formula."""
    g = torch.Generator().manual_seed(23)
    x = (scale * torch.randn(2, 3, 7, 6, 5, generator=g, dtype=torch.float64)).to(dtype)
    onehot = torch.zeros(x.shape, dtype=dtype).scatter_(1, torch.randint(0, 3, (2, 1, 7, 6, 5), generator=g), 1)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    out = []
    for fused in (True, False):
        xx = x.clone().requires_grad_()
        if fused:
            nll = Fn.categorical_focal_nll_hard(xx, onehot, w, gammas)
        else:
            nll = Fn.categorical_focal_nll(torch.log_softmax(xx, 1), onehot, w, gammas)
        (nll * torch.linspace(0.5, 1.5, nll.numel(), dtype=dtype).view(nll.shape)).sum().backward()
        out.append((nll.detach(), xx.grad))
    (v_fused, g_fused), (v_gen, g_gen) = out
    assert torch.isfinite(v_fused).all() and torch.isfinite(g_fused).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(v_fused, v_gen, rtol=tol, atol=tol)
    torch.testing.assert_close(g_fused, g_gen, rtol=tol, atol=tol)


@pytest.mark.parametrize("gammas", [None, [0.5, 0.0, 0.0], [2.0, 2.0, 2.0]])
def test_fused_categorical_focal_gradcheck(gammas):
    g = torch.Generator().manual_seed(29)
    x = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    onehot = torch.zeros(x.shape, dtype=torch.float64).scatter_(1, torch.randint(0, 3, (2, 1, 3, 4), generator=g), 1)
    w = torch.tensor([0.4, 0.6, 0.6], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: Fn.categorical_focal_nll_hard(z, onehot, w, gammas), (x,),
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.float64])
def test_region_ce_is_the_mean_of_the_per_element_terms(dtype, target_dtype):
    """Region CE on float maps without an ignore label takes torch's 'mean' reduction: the same value bit for bit,
    and the same gradient to rounding, as masked_mean of sigmoid_binary_nll (the path with an ignore label). Bool
    maps take the fused sigmoid pass instead (tests/test_sigmoid_fused.py)."""
    from nnunet_losses import get_loss
    g = torch.Generator().manual_seed(31)
    x = (4 * torch.randn(2, 3, 5, 4, 3, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.rand(x.shape, generator=g) > 0.5
    out = []
    for fast in (True, False):
        xx = x.clone().requires_grad_()
        if fast:
            v = get_loss("ce", region_based=True)(xx, y.to(target_dtype))
        else:
            v = Fn.masked_mean(Fn.sigmoid_binary_nll(xx, y.to(dtype)), None)
        v.backward()
        out.append((v.detach(), xx.grad))
    assert torch.equal(out[0][0], out[1][0])
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(out[0][1], out[1][1], rtol=tol, atol=tol * 1e-3)
