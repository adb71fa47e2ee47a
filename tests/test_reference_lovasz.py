"""Lovász-softmax / Lovász-hinge against Berman et al.'s original non-vectorised algorithm (tests/reference_impl.py):
one flat problem per image (or for the whole batch), per class: drop ignored voxels, sort that class's errors,
``lovasz_grad`` on that class's foreground. C >= 3 guards against the bug of a well-known vectorised port that
sorts the integer label map instead of each class's foreground indicator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_losses import functional as Fn

import reference_impl as ref
from loss_cases import lib_loss

RTOL, ATOL = 1e-10, 1e-12


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py

SHAPES = [(False, 2, (4, 5)), (False, 3, (4, 5, 3)), (False, 4, (5, 4)), (False, 5, (3, 4, 3)),
          (True, 1, (3, 4, 3)), (True, 2, (4, 5)), (True, 3, (4, 3, 3))]
SHAPE_IDS = [f"{'region' if r else 'label'}{k}-{len(s)}d" for r, k, s in SHAPES]


def lib_lovasz(logits, target, region, ignore_label, **kwargs):
    return lib_loss("lovasz", logits, target, region, ignore_label, **kwargs)


#: region maps: neither do_bg (no background channel) nor only_present (Lovász-hinge) can matter -- one case
SHAPES_OPTIONS = [(r, k, s, bg, present) for r, k, s in SHAPES
                  for bg in ((False,) if r else (False, True)) for present in ((True,) if r else (True, False))]


@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["perimage", "batch"])
@pytest.mark.parametrize("region,n_ch,spatial,do_bg,only_present", SHAPES_OPTIONS,
                         ids=[f"{SHAPE_IDS[SHAPES.index((r, k, s))]}-{'bg' if bg else 'nobg'}-"
                              f"{'present' if pr else 'allclasses'}" for r, k, s, bg, pr in SHAPES_OPTIONS])
def test_lovasz_matches_berman(region, n_ch, spatial, batch_dice, do_bg, only_present, with_ignore):
    logits, target, ignore = ref.make_case(region, n_ch, spatial, with_ignore,
                                           ref.seed_of("lovasz", region, n_ch, spatial, with_ignore))
    expected = ref.ref_lovasz(logits, target, region=region, ignore_label=ignore, batch_dice=batch_dice,
                              do_bg=do_bg, only_present=only_present)
    for tgt in [target, target.astype(bool)] if region else [target]:  # nnU-Net's loader gives bool regions
        value, grad = lib_lovasz(logits, tgt, region, ignore, batch_dice=batch_dice, do_bg=do_bg,
                                 only_present=only_present)
        assert value.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)
        assert torch.isfinite(grad).all()


def test_lovasz_default_arguments():
    """Defaults: per image, no background, only present classes (Berman's classes='present')."""
    logits, target, ignore = ref.make_case(False, 4, (4, 5), True, ref.seed_of("lovasz-defaults"))
    value, _ = lib_lovasz(logits, target, False, ignore)
    assert value.item() == pytest.approx(ref.ref_lovasz(logits, target, ignore_label=ignore, batch_dice=False,
                                                        do_bg=False, only_present=True), rel=RTOL)


def test_lovasz_only_present_matters_when_a_class_is_absent():
    """The test data make the difference visible: sample 0 of a C >= 3 case lacks the last class."""
    logits, target, _ = ref.make_case(False, 4, (4, 5), False, ref.seed_of("present"))
    assert not (target[0] == 3).any()
    a = ref.ref_lovasz(logits, target, only_present=True)
    b = ref.ref_lovasz(logits, target, only_present=False)
    assert abs(a - b) > 1e-3
    assert lib_lovasz(logits, target, False, None, only_present=True)[0].item() == pytest.approx(a, rel=RTOL)
    assert lib_lovasz(logits, target, False, None, only_present=False)[0].item() == pytest.approx(b, rel=RTOL)


def _sort_by_integer_labels_port(probs, labels, classes):
    """The bug this file guards against: sorting each class's errors but computing lovasz_grad on the sorted
    *integer label map* (correct only when labels are 0/1)."""
    losses = []
    for c in classes:
        fg = (labels == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - probs[:, c])
        perm = np.argsort(-errors, kind="stable")
        losses.append(float(np.dot(errors[perm], ref.lovasz_grad(list(labels[perm].astype(np.float64))))))
    return float(np.mean(losses))


def test_lovasz_multiclass_differs_from_the_integer_label_port():
    """For C >= 3 the buggy port gives a different value; the library agrees with Berman's reference instead."""
    logits, target, _ = ref.make_case(False, 4, (5, 6), False, ref.seed_of("buggy-port"), batch=1)
    z = logits[0].reshape(4, -1).T
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = target[0, 0].reshape(-1)
    correct = ref.ref_lovasz(logits, target, do_bg=True, only_present=True)
    buggy = _sort_by_integer_labels_port(probs, labels, range(4))
    assert abs(correct - buggy) > 1e-2
    value, _ = lib_lovasz(logits, target, False, None, do_bg=True, only_present=True)
    assert value.item() == pytest.approx(correct, rel=RTOL)


@pytest.mark.parametrize("seed", range(5))
def test_lovasz_grad_is_the_lovasz_extension_by_definition(seed):
    """Berman's lovasz_grad (reference) and the library's row-wise lovasz_extension both equal the Lovász
    extension written as an integral over level sets of the Jaccard set function."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    errors = rng.random(n) * (rng.random(n) < 0.9)  # some exact zeros
    fg = (rng.random(n) < 0.4).astype(np.float64)
    perm = sorted(range(n), key=lambda i: -errors[i])
    berman = sum(errors[i] * g for i, g in zip(perm, ref.lovasz_grad([fg[i] for i in perm])))
    definition = ref.lovasz_extension_by_definition(list(errors), list(fg))
    assert berman == pytest.approx(definition, rel=1e-12, abs=1e-15)
    lib = Fn.lovasz_extension(torch.tensor(errors)[None], torch.tensor(fg)[None])
    assert lib.item() == pytest.approx(definition, rel=1e-12, abs=1e-15)


def test_lovasz_on_binary_errors_is_the_jaccard_loss():
    """The extension is tight: on 0/1 errors (a hard mistake set M) it is Delta_J(M) = 1 - J of the prediction."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.random(30) < 0.4
        y_hat = np.where(rng.random(30) < 0.7, y, rng.random(30) < 0.5)
        y[0] = True
        errors = (y != y_hat).astype(np.float64)
        value = ref._lovasz_flat(list(errors), list(y.astype(np.float64)), hinge=False)
        assert value == pytest.approx(1 - ref.hard_jaccard(y, y_hat), rel=1e-12, abs=1e-15)
        lib = Fn.lovasz_extension(torch.tensor(errors)[None], torch.tensor(y, dtype=torch.float64)[None])
        assert lib.item() == pytest.approx(1 - ref.hard_jaccard(y, y_hat), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["perimage", "batch"])
def test_lovasz_softmax_on_confident_predictions_is_mean_jaccard_loss(batch_dice):
    """Near-hard softmax (logit gap 60) predicting y~: Lovász-softmax = mean over present classes of 1 - J."""
    rng = np.random.default_rng(4)
    n_cls, shape = 3, (6, 7)
    labels = rng.integers(0, n_cls, size=(2, 1) + shape)
    pred = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, n_cls, size=labels.shape))
    logits = 60.0 * (np.arange(n_cls).reshape(1, n_cls, 1, 1) == pred)
    value, _ = lib_lovasz(logits, labels, False, None, batch_dice=batch_dice, do_bg=True)
    groups = [(labels, pred)] if batch_dice else [(labels[b], pred[b]) for b in range(2)]
    expected = np.mean([np.mean([1 - ref.hard_jaccard(lab == c, prd == c) for c in range(n_cls) if (lab == c).any()])
                        for lab, prd in groups])
    assert value.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["perimage", "batch"])
@pytest.mark.parametrize("do_bg", [False, True], ids=["nobg", "bg"])
@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
def test_lovasz_softmax_perfect_prediction_is_zero(batch_dice, do_bg, with_ignore):
    logits, target, ignore = ref.make_case(False, 3, (4, 5, 3), with_ignore, ref.seed_of("perfect-softmax"))
    labels = np.where(target == ignore, 0, target) if with_ignore else target
    rng = np.random.default_rng(0)
    perfect = 100.0 * (np.arange(3).reshape(1, 3, 1, 1, 1) == labels) + rng.normal(0, 1, logits.shape)
    value, grad = lib_lovasz(perfect, target, False, ignore, batch_dice=batch_dice, do_bg=do_bg)
    assert 0 <= value.item() < 1e-30
    assert ref.ref_lovasz(perfect, target, ignore_label=ignore, batch_dice=batch_dice, do_bg=do_bg) < 1e-30
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("batch_dice", [False, True], ids=["perimage", "batch"])
@pytest.mark.parametrize("with_ignore", [False, True], ids=["all", "ignore"])
def test_lovasz_hinge_perfect_prediction_is_zero(batch_dice, with_ignore):
    """Hinge errors 1 - x s vanish once every logit has the right sign and margin >= 1."""
    logits, target, ignore = ref.make_case(True, 2, (4, 5, 3), with_ignore, ref.seed_of("perfect-hinge"))
    signs = 2 * target[:, :2] - 1
    perfect = signs * (1 + np.abs(logits))  # x s >= 1 everywhere
    value, _ = lib_lovasz(perfect, target, True, ignore, batch_dice=batch_dice)
    assert value.item() == 0.0
    assert ref.ref_lovasz(perfect, target, region=True, ignore_label=ignore, batch_dice=batch_dice) == 0.0
    if with_ignore:  # wrong logits on ignored voxels change nothing
        ignored = target[:, 2:3] == 1
        value, _ = lib_lovasz(np.where(ignored, -perfect, perfect), target, True, ignore, batch_dice=batch_dice)
        assert value.item() == 0.0
