"""The fused region pass (nnunet_losses/sigmoid_fused.py) gives the general formulas' values and gradients.

* :func:`sigmoid_hard_terms` against ``overlap_stats`` of ``sigmoid`` and the sums of ``binary_focal_nll`` of
  ``logsigmoid`` under autograd (float32 and float64, masks, DSC++ exponents 1 and 2, BCE and focal exponents
  equal, per side, below and above 1, both sides summed or split, moderate and confident logits with +-1e4
  confidently right voxels), and against finite differences (gradcheck);
* every region loss on bool maps (the fused path) against the same loss on the same maps as floats (the general
  path), with an ignore label, deep supervision, batch dice, and confidently wrong voxels (the fallback);
* the asymmetric focal pass (nnunet_losses/sigmoid_asymmetric.py: foreground exponent 0) on its own branches:
  background exponents 1/2, 2, 1, 1.5, 0.3, safe_pow's linear piece, logits up to 60 on the wrong side;
* ``prepare_batch``'s bool -> float conversion through the uint8 view.

The float64 paper references (tests/test_reference*.py) run on bool region maps too and so check the fused path.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import nnunet_losses
from loss_cases import assert_gradcheck_once_differentiable, values_and_grads
from nnunet_losses import functional as Fn
from nnunet_losses import sigmoid_asymmetric, sigmoid_fused
from nnunet_losses.batch import prepare_batch
from nnunet_losses.sigmoid_fused import sigmoid_hard_terms

FOCALS = {"none": None, "bce": (0.0, 0.0), "focal2": (2.0, 2.0), "asymmetric": (0.0, 0.5), "half": (0.5, 0.5),
          "mixed": (3.0, 1.0), "one": (1.0, 1.0), "reversed": (1.5, 0.0)}


def _general(x, y, mask, gamma, focal, split):
    """The same numbers from the formulas of functional.py under autograd: (TP, FP, FN) and (L+, L-)."""
    out = []
    if gamma is not None:
        out += list(Fn.overlap_stats(torch.sigmoid(x), y, mask, gamma))
    if focal is not None:
        axes = tuple(range(2, x.ndim))
        m = 1 if mask is None else mask

        def side_sum(w_pos, w_neg):  # -binary_focal_nll is w+ y F+ log q + w- (1-y) F- log q
            if focal == (0.0, 0.0):  # the BCE's general path: torch's kernel (its gradient is sigmoid(x) - y)
                nll = Fn.sigmoid_binary_nll(x, y) * (w_pos * y + w_neg * (1 - y))
            else:
                nll = Fn.binary_focal_nll(F.logsigmoid(x), F.logsigmoid(-x), y, w_pos, w_neg, *focal)
            return -(nll * m).sum(axes)
        out += [side_sum(1.0, 1.0)] if not split else [side_sum(1.0, 0.0), side_sum(0.0, 1.0)]
    return out


def _fused(x, y, mask, gamma, focal, split):
    result = sigmoid_hard_terms(x, y, mask, gamma, focal, split)
    assert result is not None, "the fused path was expected to apply"
    stats, sums = result
    assert (stats is None) == (gamma is None) and (sums is None) == (focal is None)
    return (list(stats) if stats is not None else []) + ([] if sums is None else [sums[0]] if not split
                                                          else list(sums))


def _case(dtype, masked, seed, margin=0.0, saturated=True):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand((2, 3, 6, 5, 4), generator=g) > 0.6).to(torch.float64)
    x = 3 * torch.randn(y.shape, generator=g, dtype=torch.float64) + margin * (2 * y - 1)
    if saturated:  # confidently right: q = 1 and u = 0 exactly (focal exponents < 1: safe_pow's linear piece)
        x[:, :, 0, 0] = 1e4 * (2 * y[:, :, 0, 0] - 1)
    mask = (torch.rand((2, 1, 6, 5, 4), generator=g) > 0.3).to(dtype) if masked else None
    return x.to(dtype), y.to(dtype), mask


CASES = [(gamma, focal, split) for gamma, focal, split in itertools.product((None, 1.0, 2.0), FOCALS, (True, False))
         if (gamma is not None or focal != "none") and (split or focal != "none")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("margin,saturated", [(0.0, True), (12.0, True), (0.0, False)],
                         ids=["moderate", "confident", "unsaturated"])
@pytest.mark.parametrize("gamma,focal,split", CASES, ids=[f"gamma={g}-{f}-{'split' if s else 'summed'}"
                                                          for g, f, s in CASES])
def test_fused_region_terms_equal_the_general_formulas(dtype, masked, margin, saturated, gamma, focal, split):
    """'confident': every logit 12 on its reference's side (u ~ 6e-6: the focal factors' small-u range), and
    +-1e4 logits; 'unsaturated': no u below 1e-8 (focal exponents < 1 take the one-power formula)."""
    x, y, mask = _case(dtype, masked, seed=len(focal) + int(10 * (gamma or 0)) + split, margin=margin,
                       saturated=saturated)
    fused, g_fused = values_and_grads(_fused, x, y, mask, gamma, FOCALS[focal], split)
    general, g_general = values_and_grads(_general, x, y, mask, gamma, FOCALS[focal], split)
    exact = values_and_grads(_general, *(None if t is None else t.double() for t in (x, y, mask)), gamma,
                              FOCALS[focal], split)
    assert torch.isfinite(g_fused).all()
    # the BCE sums take log q of the rounded q: up to 2^-24 per element where q rounds near 1 (see sigmoid_fused)
    per_element = 2.0 ** -24 * x[0, 0].numel() if focal == "bce" else 0.0
    for i, (a, b, c) in enumerate(zip(fused + [g_fused], general + [g_general], exact[0] + [exact[1]])):
        sums = i >= len(fused) - (focal != "none") * (1 + split) and i < len(fused)
        assert_as_close_as_the_general_formula(a, b, c, per_element if sums else 0.0)


def assert_as_close_as_the_general_formula(fused, general, exact, slack=0.0):
    """``fused`` equals the general formula's result to rounding: within 1e-12 (float64) or 1e-5 (float32) of
    it, relative to the largest element -- or, in float32, at most twice as far from the float64 result as the
    general formula itself (the fused path computes 1 - p as sigmoid(-x) where the general one rounds 1 - p),
    plus ``slack``."""
    if fused.dtype == torch.float64:
        torch.testing.assert_close(fused, general, rtol=1e-12, atol=1e-12 * max(general.abs().max().item(), 1))
        return
    scale = max(general.abs().max().item(), 1e-30)
    own_error = (general.double() - exact).abs().max().item()
    torch.testing.assert_close(fused.double(), exact, rtol=1e-5, atol=max(1e-5 * scale, 2 * own_error) + slack)


@pytest.mark.parametrize("focal", ["bce", "focal2", "asymmetric"])
def test_confidently_wrong_voxels_take_the_general_path(focal):
    """A voxel 80 on the wrong side (q < 1e-30) has no fused focal sums; the statistics alone never saturate."""
    x, y, _ = _case(torch.float32, False, seed=5)
    x[0, 1, 2, 3, 1] = -80 * (2 * y[0, 1, 2, 3, 1] - 1)
    assert sigmoid_hard_terms(x, y, None, 1.0, FOCALS[focal]) is None
    assert sigmoid_hard_terms(x, y, None, 2.0, None) is not None
    with pytest.raises(ValueError, match="FP/FN exponents"):
        sigmoid_hard_terms(x, y, None, 3.0, None)


@pytest.mark.parametrize("gamma,focal", [(1.0, "bce"), (None, "focal2"), (2.0, "asymmetric")])
def test_confidently_wrong_ignored_voxels_keep_the_fused_path(gamma, focal):
    """Ignored voxels do not count: a logit 500 on the wrong side there does not send the batch to the general
    path, and the numbers are the general formula's."""
    x, y, mask = _case(torch.float32, True, seed=9)
    ignored = (mask[:, 0] == 0).nonzero()[0]
    x[ignored[0], :, ignored[1], ignored[2], ignored[3]] = -500 * (2 * y[ignored[0], :, ignored[1], ignored[2],
                                                                         ignored[3]] - 1)
    fused, g_fused = values_and_grads(_fused, x, y, mask, gamma, FOCALS[focal], True)
    general, g_general = values_and_grads(_general, x, y, mask, gamma, FOCALS[focal], True)
    for a, b in zip(fused + [g_fused], general + [g_general]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("gamma,focal,split", [(1.0, "bce", False), (2.0, "asymmetric", True), (None, "focal2", True),
                                               (2.0, "none", True), (1.0, "mixed", False), (None, "half", False)])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_fused_region_terms_gradcheck_and_once_differentiable(gamma, focal, split, masked):
    x, y, mask = _case(torch.float64, masked, seed=11)
    x = x[:, :, 1:4, :3, :2].contiguous().requires_grad_()  # small, and without the +-1e4 voxels
    y, mask = y[:, :, 1:4, :3, :2], None if mask is None else mask[:, :, 1:4, :3, :2]
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(5)]

    def combined(z):
        return sum((w * o).sum() for w, o in zip(weights, _fused(z, y, mask, gamma, FOCALS[focal], split)))

    assert_gradcheck_once_differentiable(combined, x, eps=1e-6, atol=1e-8, rtol=1e-6)


REGION_LOSSES = ["ce", "wce", "focal", "softdice", "softjaccard", "dscpp", "tversky", "focal_tversky", "tversky_pp",
                 "focal_tversky_pp", "combo", "combo_pp", "unified_focal", "unified_focal_pp", "dice_ce"]
VARIANTS = {"combo": {"beta": 0.7}, "focal": {"alpha": 0.25}, "unified_focal": {"asymmetric": False}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore_label", [None, 3])
@pytest.mark.parametrize("wrong", [False, True], ids=["fused", "saturated-fallback"])
@pytest.mark.parametrize("name", REGION_LOSSES)
def test_bool_region_maps_equal_the_float_maps(name, wrong, ignore_label, dtype, monkeypatch):
    """Deep supervision (two outputs), +-1e4 logits (confidently right; with 'saturated-fallback' one confidently
    wrong voxel too), batch dice on: bool maps (fused path) and the same maps as floats (general path) give the
    same value and gradient -- with the default arguments and one variant (split sides, symmetric focal)."""
    g = torch.Generator().manual_seed(len(name) + 2 * wrong)
    calls = _spy(monkeypatch, sigmoid_fused._SigmoidHardTerms, sigmoid_asymmetric._AsymmetricFocalTerms)
    for variant in ({}, VARIANTS.get(name)):
        if variant is None:
            continue
        kwargs = dict(variant, **({"class_priors": [0.3, 0.6, 0.2]} if name == "wce" else {}))
        if "batch_dice" in nnunet_losses.loss_arguments(name):
            kwargs["batch_dice"] = True
        loss = nnunet_losses.get_loss(name, region_based=True, ignore_label=ignore_label,
                                      deep_supervision_weights=[0.7, 0.3], **kwargs)
        outputs, maps = [], []
        for shape in ((6, 5, 4), (3, 3, 2)):
            y = torch.rand((2, 3) + shape, generator=g) > 0.5
            x = (3 * torch.randn((2, 3) + shape, generator=g, dtype=torch.float64)).to(dtype)
            x[:, 1, 0, 0] = 1e4 * (2 * y[:, 1, 0, 0].to(dtype) - 1)  # confidently right: q = 1, u = 0 exactly
            if wrong:
                x[0, 2, 1, 1] = -100.0 * (2 * y[0, 2, 1, 1].to(dtype) - 1)
            if ignore_label is not None:
                y = torch.cat([y, torch.rand((2, 1) + shape, generator=g) > 0.7], 1)
            outputs.append(x)
            maps.append(y)
        results = []
        for xs, targets in ((outputs, maps), (outputs, [m.to(dtype) for m in maps]),
                            ([o.double() for o in outputs], [m.double() for m in maps])):
            xs = [o.clone().requires_grad_() for o in xs]
            value = loss(xs, targets)
            value.backward()
            results.append([value.detach()] + [xx.grad for xx in xs])
        for fused, general, exact in zip(*results):
            assert torch.isfinite(fused).all()
            assert_as_close_as_the_general_formula(fused, general, exact)
    # with a confidently wrong voxel the CE-like losses (no statistics) take the general formula only
    assert calls or (wrong and name in ("ce", "wce", "focal")), "the bool maps were expected to take the fused path"


@pytest.mark.parametrize("ignore_label", [None, 2])
def test_bool_region_maps_are_converted_exactly(ignore_label):
    """prepare_batch converts bool maps through their uint8 view: the same 0/1 floats as .to(float), also for the
    strided region/ignore slices of a target with an ignore channel."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 2 + (ignore_label is not None), 5, 4, 3, generator=g) > 0.5
    batch = prepare_batch(torch.randn(2, 2, 5, 4, 3, generator=g), target, region_based=True,
                          ignore_label=ignore_label)
    assert batch.hard and batch.onehot.dtype == torch.float32
    assert torch.equal(batch.onehot, target[:, :2].float())
    if ignore_label is not None:
        assert torch.equal(batch.mask, 1 - target[:, 2:].float())


def _spy(monkeypatch, *functions):
    """Record the arguments of every ``apply`` of the given autograd Functions (one list for all)."""
    calls = []
    for function in functions:
        monkeypatch.setattr(function, "apply", lambda *a, _apply=function.apply: calls.append(a) or _apply(*a))
    return calls


ASYMMETRIC_GAMMAS = (0.5, 2.0, 1.0, 1.5, 0.3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("logits", ["confident", "wrong", "saturated"])
@pytest.mark.parametrize("stats_gamma", [None, 1.0, 2.0])
@pytest.mark.parametrize("gamma", ASYMMETRIC_GAMMAS)
def test_asymmetric_focal_pass_equals_the_general_formulas(gamma, stats_gamma, logits, masked, dtype, monkeypatch):
    """Foreground exponent 0, background ``gamma``: the asymmetric pass (checked to be taken, with or without
    safe_pow's linear piece) against the general formulas and float64. 'confident': 3..16 on the reference's side
    (u down to 1e-7); 'wrong': some voxels 25..60 on the wrong side (q down to 1e-26; ignored ones at 500); 'saturated':
    +-1e4 confidently right voxels (u = 0 exactly: the linear piece for gamma < 1)."""
    x, y, mask = _case(dtype, masked, seed=int(10 * gamma) + int(stats_gamma or 0), margin=12.0 * (logits != "wrong"),
                       saturated=logits == "saturated")
    if logits == "confident":  # 3..16 on the reference's side: u >= 1e-7, above the linear piece
        x = x.clamp(-16, 16)
    if logits == "wrong":
        x[0, :, 1, 2] = -torch.linspace(25, 60, 4, dtype=dtype).view(1, 4) * (2 * y[0, :, 1, 2] - 1)
        if masked:
            x[mask.expand_as(x) == 0] = -500 * (2 * y[mask.expand_as(x) == 0] - 1)
    calls = _spy(monkeypatch, sigmoid_asymmetric._AsymmetricFocalTerms)
    roots = []  # DSC++'s squared FP map: the square root taken from u (gamma 0.5 without the linear piece)
    monkeypatch.setattr(sigmoid_asymmetric, "_root_from_u",
                        lambda *a, _root=sigmoid_asymmetric._root_from_u, **k: roots.append(1) or _root(*a, **k))
    for split in (True, False):
        args = (x, y, mask, stats_gamma, (0.0, gamma), split)
        fused, g_fused = values_and_grads(_fused, *args)
        general, g_general = values_and_grads(_general, *args)
        exact = values_and_grads(_general, *(None if t is None else t.double() for t in (x, y, mask)), *args[3:])
        assert torch.isfinite(g_fused).all()
        for a, b, c in zip(fused + [g_fused], general + [g_general], exact[0] + [exact[1]]):
            assert_as_close_as_the_general_formula(a, b, c)
    assert [a[6] for a in calls] == [gamma < 1 and logits == "saturated"] * 2  # the linear-piece branch or not
    assert len(roots) == 2 * (stats_gamma == 2 and gamma == 0.5 and logits != "saturated")


@pytest.mark.parametrize("stats_gamma,gamma,split", [(1.0, 0.5, True), (None, 0.5, False), (2.0, 0.3, True),
                                                     (1.0, 1.5, True), (2.0, 0.5, True)])
@pytest.mark.parametrize("linear_piece", [False, True], ids=["exact-power", "linear-piece"])
def test_asymmetric_focal_pass_gradcheck(stats_gamma, gamma, split, linear_piece, monkeypatch):
    """Finite differences; 'linear-piece': some background voxels at u ~ 2e-9 (logit 20 on their side), below
    safe_pow's POW_EPS, away from its kink at 1e-8 (and the pass must take its linear-piece branch for gamma < 1;
    the other branch's error there is ~1e-14, below what finite differences see)."""
    calls = _spy(monkeypatch, sigmoid_asymmetric._AsymmetricFocalTerms)
    x, y, mask = _case(torch.float64, True, seed=13, saturated=False)
    x, y, mask = x[:, :, 1:4, :3, :2].clone(), y[:, :, 1:4, :3, :2], mask[:, :, 1:4, :3, :2]
    if linear_piece:
        x[:, :, 0] = 20.0 * (2 * y[:, :, 0] - 1)
    x.requires_grad_()
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(5)]

    def combined(z):
        return sum((w * o).sum() for w, o in zip(weights, _fused(z, y, mask, stats_gamma, (0.0, gamma), split)))

    assert torch.autograd.gradcheck(combined, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert {a[6] for a in calls} == {linear_piece and gamma < 1}
