"""Soft training targets of the trainers (boundary label smoothing, deep-supervision averaging, multi-rater mean and
sampling, distillation targets and loss) against slow, obvious float64 references written from the formulas, and
the rater phantom. In-process, no nnU-Net run (those are in test_soft_trainers_nnunet.py)."""
from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_losses.trainers.distillation import DistillationMixin, teacher_soft_target
from nnunet_losses.trainers.multirater import find_raters, rater_mean_target, sampled_rater
from nnunet_losses.trainers.soft_targets import boundary_band, boundary_smoothed_target, like_target, onehot_labels

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def blob_labels(rng, shape, n_classes):
    """A label map with spatially coherent regions (so that there are interiors and boundaries)."""
    coarse = rng.integers(0, n_classes, size=tuple(max(1, s // 3) for s in shape))
    for axis, s in enumerate(shape):
        coarse = np.repeat(coarse, 3, axis=axis)[tuple(slice(None) if a != axis else slice(0, s)
                                                       for a in range(len(shape)))]
    return coarse


def naive_band(labels: np.ndarray, width: int) -> np.ndarray:
    """True where the width-voxel neighbourhood (clipped at the image border) holds more than one label."""
    r = width // 2
    out = np.zeros(labels.shape, dtype=bool)
    for idx in itertools.product(*[range(s) for s in labels.shape]):
        window = labels[tuple(slice(max(0, i - r), i + r + 1) for i in idx)]
        out[idx] = len(np.unique(window)) > 1
    return out


@pytest.mark.parametrize("shape,width", [((9, 11), 3), ((7, 8, 6), 3), ((10, 9), 5)])
def test_boundary_band_labels(shape, width):
    rng = np.random.default_rng(len(shape) * width)
    labels = blob_labels(rng, shape, 3)
    target = torch.from_numpy(labels)[None, None]
    band = boundary_band(onehot_labels(target, 3), width).any(1)[0].numpy()
    np.testing.assert_array_equal(band, naive_band(labels, width))
    assert 0 < band.sum() < band.size


@pytest.mark.parametrize("region_based", [False, True])
def test_boundary_smoothed_target(region_based):
    rng = np.random.default_rng(3)
    eps, width, n_classes = 0.3, 3, 3
    if region_based:  # two overlapping regions, each smoothed in its own band, as a two-class problem
        maps = np.stack([blob_labels(rng, (8, 10), 2) for _ in range(2)])[None]
        soft = boundary_smoothed_target(torch.from_numpy(maps).bool(), 2, True, eps, width).double().numpy()
        for r in range(2):
            y = maps[0, r].astype(np.float64)
            band = naive_band(maps[0, r], width)
            ref = np.where(band, (1 - eps) * y + eps / 2, y)
            np.testing.assert_allclose(soft[0, r], ref, atol=1e-7)
        return
    labels = blob_labels(rng, (8, 10), n_classes)
    soft = boundary_smoothed_target(torch.from_numpy(labels)[None, None], n_classes, False, eps, width).double()
    band = naive_band(labels, width)
    for c in range(n_classes):
        y = (labels == c).astype(np.float64)
        np.testing.assert_allclose(soft[0, c].numpy(), np.where(band, (1 - eps) * y + eps / n_classes, y), atol=1e-7)
    np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, atol=1e-6)


def naive_band_with_ignore(labels: np.ndarray, ignored: np.ndarray, width: int) -> np.ndarray:
    """JDTLosses' rule: a mixed neighbourhood that holds no ignored voxel."""
    r = width // 2
    out = np.zeros(labels.shape, dtype=bool)
    for idx in itertools.product(*[range(s) for s in labels.shape]):
        window = tuple(slice(max(0, i - r), i + r + 1) for i in idx)
        out[idx] = not ignored[window].any() and len(np.unique(np.where(ignored, -1, labels)[window])) > 1
    return out


@pytest.mark.parametrize("region_based", [False, True])
def test_boundary_smoothing_with_ignore_label(region_based):
    """The loss core's ignore channel is appended; nothing within the band width of an ignored voxel is smoothed."""
    rng = np.random.default_rng(7)
    eps, width, ignore_label = 0.4, 3, 3
    labels = blob_labels(rng, (9, 12), 3)
    ignored = np.zeros(labels.shape, dtype=bool)
    ignored[2:4, 5:9] = True
    if region_based:  # nnU-Net's region target: (B, R + 1, ...) with the ignore mask last
        maps = np.stack([labels >= 1, labels >= 2, ignored])[None]
        soft = boundary_smoothed_target(torch.from_numpy(maps), 2, True, eps, width, ignore_label).double().numpy()
        np.testing.assert_array_equal(soft[0, 2], ignored)
        for r in range(2):
            y = maps[0, r].astype(np.float64)
            band = naive_band_with_ignore(maps[0, r].astype(int), ignored, width)
            np.testing.assert_allclose(soft[0, r][~ignored], np.where(band, (1 - eps) * y + eps / 2, y)[~ignored])
        return
    target = np.where(ignored, ignore_label, labels)
    soft = boundary_smoothed_target(torch.from_numpy(target)[None, None], 3, False, eps, width, ignore_label).double()
    soft = soft.numpy()
    assert soft.shape == (1, 4, 9, 12)
    np.testing.assert_array_equal(soft[0, 3], ignored)
    band = naive_band_with_ignore(labels, ignored, width)
    assert band.sum() > 0
    for c in range(3):
        y = (labels == c).astype(np.float64)
        np.testing.assert_allclose(soft[0, c][~ignored], np.where(band, (1 - eps) * y + eps / 3, y)[~ignored])


def test_distillation_target_carries_the_ignore_channel():
    zt = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 4, (2, 1, 8, 8))  # 3 = ignore
    trainer = SimpleNamespace(distillation_temperature=1.0, teacher=lambda data: zt,
                              label_manager=SimpleNamespace(has_regions=False, ignore_label=3))
    soft = DistillationMixin.teacher_target(trainer, None, labels)
    torch.testing.assert_close(soft[:, :3], torch.softmax(zt, 1))
    torch.testing.assert_close(soft[:, 3:], (labels == 3).float())


def test_boundary_band_width_must_be_odd():
    with pytest.raises(ValueError, match="odd integer >= 3"):
        boundary_band(torch.zeros(1, 2, 4, 4), 4)


def test_downsample_soft_target_averages_blocks():
    rng = np.random.default_rng(0)
    soft = torch.from_numpy(rng.dirichlet(np.ones(3), size=(2, 8, 12)).transpose(0, 3, 1, 2).copy())
    hard = [torch.zeros(2, 1, *shape) for shape in [(8, 12), (4, 6), (2, 3)]]  # nnU-Net's deep-supervision targets
    full, half, quarter = like_target(soft, hard)
    assert full is soft
    x = soft.numpy()
    for out, f in ((half, 2), (quarter, 4)):
        ref = x.reshape(2, 3, 8 // f, f, 12 // f, f).mean(axis=(3, 5))
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
        np.testing.assert_allclose(out.sum(1).numpy(), 1.0, atol=1e-12)


def test_rater_mean_and_sampling():
    rng = np.random.default_rng(1)
    raters = rng.integers(0, 3, size=(2, 4, 5, 6))
    soft = rater_mean_target(torch.from_numpy(raters), 3).double().numpy()
    for b, c in itertools.product(range(2), range(3)):
        np.testing.assert_allclose(soft[b, c], (raters[b] == c).sum(0) / 4.0)
    choice = torch.tensor([3, 1])
    picked = sampled_rater(torch.from_numpy(raters), choice).numpy()
    np.testing.assert_array_equal(picked[:, 0], raters[[0, 1], [3, 1]])


def test_teacher_soft_target():
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    q = teacher_soft_target(z, 2.0, False).double().numpy()
    e = np.exp(z.numpy() / 2.0)
    np.testing.assert_allclose(q, e / e.sum(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(teacher_soft_target(z, 0.5, True).double().numpy(), 1 / (1 + np.exp(-z.numpy() / 0.5)),
                               atol=1e-6)


def soft_ce64(logits, target):
    """Float64 CE with a label map (B, 1, ...) or a soft target (B, C, ...), mean over voxels."""
    logp = torch.log_softmax(logits.double(), 1)
    if target.shape[1] == 1:
        target = onehot_labels(target, logits.shape[1], torch.float64)
    return -(target.double() * logp).sum(1).mean()


@pytest.mark.parametrize("temperature,weight", [(1.0, 0.5), (2.0, 0.25), (3.0, 1.0)])
def test_distillation_loss(temperature, weight):
    """(1 - w) L(z, y) + w T^2 L(z / T, softmax(z_t / T)), with deep supervision outputs."""
    torch.manual_seed(0)
    out = [torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)]
    y = [torch.randint(0, 3, (2, 1, 8, 8)), torch.randint(0, 3, (2, 1, 4, 4))]
    zt = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    weights = (0.75, 0.25)

    def loss(o, t):
        return sum(w * soft_ce64(oi, ti) for w, oi, ti in zip(weights, o, t))

    trainer = SimpleNamespace(loss=loss, distillation_weight=weight, distillation_temperature=temperature,
                              teacher=lambda data: zt, label_manager=SimpleNamespace(has_regions=False,
                                                                                     ignore_label=None))
    trainer.teacher_target = lambda data, target: DistillationMixin.teacher_target(trainer, data, target)
    got = DistillationMixin.training_loss(trainer, None, out, y)
    q = torch.softmax(zt / temperature, 1)
    q_half = q.reshape(2, 3, 4, 2, 4, 2).mean((3, 5))
    soft = weights[0] * soft_ce64(out[0] / temperature, q) + weights[1] * soft_ce64(out[1] / temperature, q_half)
    ref = (1 - weight) * loss(out, y) + weight * temperature ** 2 * soft
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


# ------------------------------------------------------------------------------------------------ rater phantom
def _read(path):
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize("variant", ["regions", "voxel"])
def test_phantom_raters(tmp_path, variant):
    from nnunet_losses.research.phantom import load_sidecar, write_phantom_dataset
    kw = dict(dim=2, variant=variant, n_cases=3, shape=(40, 40), radius_range=(5, 7), seed=4)
    plain = write_phantom_dataset(tmp_path / "a", 1, **kw)
    rated = write_phantom_dataset(tmp_path / "b", 1, n_raters=3, **kw)
    meta = load_sidecar(rated)
    assert meta["n_raters"] == 3
    cases = sorted(meta["cases"])
    assert find_raters(rated, cases, ".nii.gz")[cases[0]][2].name == f"{cases[0]}_rater2.nii.gz"
    for case in cases:
        # everything of n_raters=0 is unchanged; rater 0 is labelsTr; the raters differ from each other somewhere
        for sub in ("imagesTr", "labelsTr"):
            name = f"{case}_0000.nii.gz" if sub == "imagesTr" else f"{case}.nii.gz"
            np.testing.assert_array_equal(_read(plain / sub / name), _read(rated / sub / name))
        raters = np.stack([_read(f) for f in meta["cases"][case]["raters"]])
        np.testing.assert_array_equal(raters[0], _read(rated / "labelsTr" / f"{case}.nii.gz"))
        prob = _read(meta["cases"][case]["probability_map"])
        assert np.all(raters[:, prob == 1] == 1) and np.all(raters[:, prob == 0] == 0)
        assert meta["cases"][case]["rater_volumes_ml"] == pytest.approx(raters.reshape(3, -1).sum(1) / 1000.0)


def test_phantom_raters_follow_the_probabilities(tmp_path):
    """With many raters the rater mean approaches the known probability map (regions: p = 0.3 per sector)."""
    from nnunet_losses.research.phantom import load_sidecar, write_phantom_dataset
    folder = write_phantom_dataset(tmp_path, 2, dim=2, p=0.3, n_cases=1, shape=(40, 40), radius_range=(6, 7),
                                   n_raters=400, seed=5)
    rec = load_sidecar(folder)["cases"]["case_000"]
    mean = np.mean([_read(f) for f in rec["raters"]], axis=0)
    prob = _read(rec["probability_map"])
    ring = (prob > 0) & (prob < 1)
    # 400 Bernoulli(0.3) sector draws: sd of the mean 0.023 per sector; all ring voxels of a sector move together
    assert abs(mean[ring].mean() - 0.3) < 0.07 and np.abs(mean[~ring] - prob[~ring]).max() == 0


def test_phantom_raters_bad_input(tmp_path):
    from nnunet_losses.research.phantom import write_phantom_dataset
    with pytest.raises(ValueError, match="n_raters"):
        write_phantom_dataset(tmp_path, 3, n_raters=1)
    assert not list(tmp_path.iterdir())  # nothing written


def test_find_raters_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ratersTr"):
        find_raters(tmp_path, ["a"], ".nii.gz")
    (tmp_path / "ratersTr").mkdir()
    for name in ("a_rater0", "a_rater1", "b_rater0", "b_rater1", "b_rater2"):
        (tmp_path / "ratersTr" / f"{name}.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="same number K >= 2"):
        find_raters(tmp_path, ["a", "b"], ".nii.gz")
    assert [len(v) for v in find_raters(tmp_path, ["a"], ".nii.gz").values()] == [2]


def _bare(mixin, **attrs):
    """An instance of ``mixin`` without nnU-Net's constructor, for its option checks."""
    obj = type("Bare", (mixin,), {})()
    obj.label_manager = SimpleNamespace(has_regions=False, has_ignore_label=False)
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


def test_soft_trainers_refuse_what_they_cannot_train():
    from nnunet_losses.trainers import BoundarySmoothingMixin, MultiRaterMixin
    with pytest.raises(ValueError, match="label \\(softmax\\) datasets only"):
        _bare(MultiRaterMixin, label_manager=SimpleNamespace(has_regions=True, has_ignore_label=False)).check_dataset()
    with pytest.raises(ValueError, match="rater_mode must be one of"):
        _bare(MultiRaterMixin, rater_mode="median").check_dataset()
    with pytest.raises(ValueError, match="ignore label are not supported"):
        _bare(MultiRaterMixin, label_manager=SimpleNamespace(has_regions=False, has_ignore_label=True)
              ).check_dataset()
    _bare(BoundarySmoothingMixin, label_manager=SimpleNamespace(has_regions=False, has_ignore_label=True)
          ).check_dataset()  # builds the loss core's ignore channel
    with pytest.raises(ValueError, match="smoothing_epsilon must be a number in \\[0.0, 1.0\\]"):
        _bare(BoundarySmoothingMixin, smoothing_epsilon=1.5).check_dataset()
    with pytest.raises(ValueError, match="band_width must be an odd integer"):
        _bare(BoundarySmoothingMixin, smoothing_band_width=2).check_dataset()
    with pytest.raises(ValueError, match="distillation_weight must be a number"):
        _bare(DistillationMixin, distillation_weight=-0.1, teacher_model_folder="x").check_dataset()
    _bare(BoundarySmoothingMixin).check_dataset()  # the defaults are valid


@pytest.mark.parametrize("name", ["ce", "softdice", "dice_ce", "dml"])
def test_smoothed_target_with_ignore_channel_in_the_losses(name):
    """The loss core reads the ignore channel: the logits of ignored voxels change nothing."""
    from nnunet_losses import get_loss
    torch.manual_seed(0)
    labels = torch.from_numpy(blob_labels(np.random.default_rng(8), (2, 12, 12), 3))[:, None]
    labels[:, :, 3:6, 4:9] = 3
    target = boundary_smoothed_target(labels, 3, False, 0.5, 3, ignore_label=3)
    loss = get_loss(name, ignore_label=3)
    logits = torch.randn(2, 3, 12, 12)
    other = torch.where(labels == 3, torch.randn(2, 3, 12, 12) * 5, logits)
    value = loss(logits, target)
    assert torch.isfinite(value)
    torch.testing.assert_close(loss(other, target), value)
