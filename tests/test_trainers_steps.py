"""Every trainer class of the package, in-process: found by nnU-Net's own lookup, instantiated on the tiny
synthetic datasets and one real training step (nnU-Net's data loader and augmentation, our loss, the optimiser).
Plus the pieces behind them: short-run variables, nnU-Net's deep supervision rule, class priors and their cache,
the volume-bias paper's networks, the plateau schedule, and that nnUNetTrainer_DiceCE reproduces nnU-Net's own
loss exactly on each dataset."""
from __future__ import annotations

import json
import os
import pickle
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunet_losses.trainers as T
from nnunet_losses import nnunet_deep_supervision_weights
from nnunet_losses.trainers import priors as P
from nnunet_losses.trainers.networks import AvgPoolDown, BaselineNet

LABELS3, REGIONS3, IGNORE2 = ("labels", 3), ("regions", 3), ("ignore", 2)
PLANS = "nnUNetPlansSmall"
FOLD = 1  # the nnU-Net CLI tests use fold 0 of the same datasets
BASELINES = [n for n, c in T.TRAINERS.items() if issubclass(c, T.ArchitectureMixin)]
# the soft-target trainers need a teacher or raters: tests/test_soft_trainers_nnunet.py runs them
NNUNET_NET = [n for n in T.TRAINERS if n not in BASELINES and n not in T.SOFT_TRAINERS]


# ------------------------------------------------------------------------------------------------------------
# catalogue, discovery, CLI
# ------------------------------------------------------------------------------------------------------------
def test_catalogue():
    names = set(T.TRAINERS)
    required = {f"nnUNetTrainer_{t}" for t in ("CEonly", "wCE", "Focal", "SoftDice", "SoftJaccard", "Lovasz", "DSCpp",
                                               "Tversky", "FocalTversky", "Combo", "UnifiedFocal", "TverskyPP",
                                               "FocalTverskyPP", "ComboPP", "UnifiedFocalPP")}
    required |= {f"nnUNetTrainer_DSCpp_g{g}" for g in ("0p5", "1", "1p5", "2", "2p5", "3", "4", "5")}
    required |= {f"nnUNetTrainer_{a}_{l}" for a in ("LR", "ConvNet", "UNet") for l in ("CE", "SoftDice")}
    required |= {"nnUNetTrainer_SoftDice_finetune"}
    assert required <= names
    n_losses = len(__import__("nnunet_losses").available_losses())  # one trainer per loss, x 3 networks, finetune
    assert len(names) == n_losses + 8 + 3 * n_losses + n_losses + len(T.SOFT_TRAINERS)
    assert sorted(T.__all__) == sorted(names)
    for name, cls in T.TRAINERS.items():
        assert cls.__name__ == name and issubclass(cls, nnUNetTrainer)
        assert pickle.loads(pickle.dumps(cls)) is cls  # importable under its module name
        assert cls.loss_name in __import__("nnunet_losses").available_losses()
    assert {T.TRAINERS[f"nnUNetTrainer_DSCpp_g{T.number_tag(g)}"].effective_loss_kwargs()["gamma"]
            for g in T.DSCPP_GAMMAS} == {0.5, 1, 1.5, 2, 2.5, 3, 4, 5}


def test_trainer_path_cli():
    folder = run_cli(["nnunet-losses", "trainer-path"]).stdout.strip()
    assert folder == T.trainer_path() and Path(folder).is_dir()
    # exactly one module: nnU-Net imports every module of this folder on every lookup
    assert sorted(p.name for p in Path(folder).glob("*.py")) == ["nnunet_losses_trainers.py"]
    assert not any(p.is_dir() and p.name != "__pycache__" for p in Path(folder).iterdir())


@pytest.fixture
def ext_trainer_env(monkeypatch, tmp_path):
    recipe = tmp_path / "my_trainers"
    recipe.mkdir()
    # the documented 3-line variant recipe, verbatim
    (recipe / "my_variants.py").write_text(textwrap.dedent("""\
        from nnunet_losses.trainers import nnUNetTrainer_DSCpp
        class nnUNetTrainer_DSCpp_g3p5(nnUNetTrainer_DSCpp):
            loss_kwargs = {"gamma": 3.5}
        """))
    monkeypatch.setenv("nnUNet_extTrainer", T.trainer_path() + os.pathsep + str(recipe))
    return recipe


def test_nnunet_finds_every_trainer(ext_trainer_env, capsys):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    for name, cls in T.TRAINERS.items():
        assert recursive_find_trainer_class_by_name(name) is cls  # the package's own class object
    assert "nnunet_losses_trainers" not in sys.modules  # nnU-Net dropped the thin module again
    user = recursive_find_trainer_class_by_name("nnUNetTrainer_DSCpp_g3p5")
    assert issubclass(user, T.nnUNetTrainer_DSCpp) and user.effective_loss_kwargs() == {"gamma": 3.5}
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainer_SoftDcie"):
        recursive_find_trainer_class_by_name("nnUNetTrainer_SoftDcie")
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------------------
def test_short_run_overrides():
    assert T.short_run_overrides({}) == {}
    env = {"NNUNET_LOSSES_EPOCHS": "3", "NNUNET_LOSSES_ITERATIONS": " 7 ", "NNUNET_LOSSES_VAL_ITERATIONS": ""}
    assert T.short_run_overrides(env) == {"num_epochs": 3, "num_iterations_per_epoch": 7}
    for bad in ("0", "-2", "1.5", "many"):
        with pytest.raises(ValueError, match="NNUNET_LOSSES_EPOCHS must be a positive integer"):
            T.short_run_overrides({"NNUNET_LOSSES_EPOCHS": bad})


@pytest.mark.parametrize("ddp,compiled", [(False, False), (True, False), (True, True), (False, True)])
def test_deep_supervision_weights_follow_nnunet(ddp, compiled):
    """nnUNetTrainer._build_loss: 1/2**i, lowest 0 -- 1e-6 only under DDP without torch.compile."""
    scales = [[1, 1, 1], [.5, .5, .5], [.25, .25, .25], [.125, .125, .125]]
    fake = SimpleNamespace(enable_deep_supervision=True, is_ddp=ddp, _do_i_compile=lambda: compiled,
                           _get_deep_supervision_scales=lambda: scales)
    w = np.array([1 / 2 ** i for i in range(4)])
    w[-1] = 1e-6 if ddp and not compiled else 0
    np.testing.assert_allclose(T.deep_supervision_weights(fake), w / w.sum())
    assert T.deep_supervision_weights(SimpleNamespace(enable_deep_supervision=False)) is None


def test_loss_kwargs_merge_along_mro():
    class A(T.nnUNetTrainer_Tversky):
        loss_kwargs = {"alpha": 0.5, "beta": 0.5}

    class B(A):
        loss_kwargs = {"beta": 0.6}

    class C(B):
        loss_name = "softdice"  # another loss: the Tversky settings do not leak into it

    assert B.effective_loss_kwargs() == {"alpha": 0.5, "beta": 0.6}
    assert C.effective_loss_kwargs() == {}


def test_class_prior_counting():
    labels = {"mode": "labels", "num_classes": 3, "ignore_label": None}
    seg = np.array([[0, 1, 2, -1], [0, 0, 1, 1]])  # -1: outside nnU-Net's crop -> background
    assert P.count_voxels([seg], labels) == ([4, 3, 1], 8)
    ignore = {"mode": "labels", "num_classes": 2, "ignore_label": 2}
    assert P.count_voxels([np.array([0, 1, 2, 2, 1])], ignore) == ([1, 2], 3)
    regions = {"mode": "regions", "regions": [[1, 2], [2]], "ignore_label": None}
    assert P.count_voxels([seg], regions) == ([4, 1], 8)
    assert P.priors_from_counts([4, 0, 4], 8) == [0.5, P.EPS, 0.5]


def test_class_prior_cache(tmp_path):
    definition = {"mode": "labels", "num_classes": 2, "ignore_label": None}
    loaded = []

    def load(k):
        loaded.append(k)
        return np.array([0, 0, 0, 1])

    assert P.load_or_compute_priors(tmp_path, "p/c/fold_0", definition, ["a", "b"], load, log=lambda *a: None) \
        == [0.75, 0.25]
    assert loaded == ["a", "b"]
    # cached: no rescan; another fold is added without touching the first entry
    assert P.load_or_compute_priors(tmp_path, "p/c/fold_0", definition, ["b", "a"], load, log=lambda *a: None) \
        == [0.75, 0.25]
    assert loaded == ["a", "b"]
    P.load_or_compute_priors(tmp_path, "p/c/fold_1", definition, ["a"], load, log=lambda *a: None)
    data = json.loads((tmp_path / P.CACHE_FILE).read_text())
    assert set(data["entries"]) == {"p/c/fold_0", "p/c/fold_1"}
    assert [p.name for p in tmp_path.iterdir()] == [P.CACHE_FILE]  # no lock or temporary files left
    # other training cases (a new splits_final.json) -> recomputed
    P.load_or_compute_priors(tmp_path, "p/c/fold_0", definition, ["a", "b", "c"], load, log=lambda *a: None)
    assert loaded[-3:] == ["a", "b", "c"]
    # a file of the same name that is not ours is never overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / P.CACHE_FILE).write_text("user data")
    msgs = []
    assert P.load_or_compute_priors(other, "k", definition, ["a"], load, log=msgs.append) == [0.75, 0.25]
    assert (other / P.CACHE_FILE).read_text() == "user data" and "WARNING" in msgs[0]


@pytest.mark.parametrize("dim", [2, 3])
def test_baseline_networks_follow_the_paper(dim):
    def convs(module):
        return [m.out_channels for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]

    unet = BaselineNet("UNet", dim, in_channels=2, num_classes=3)
    assert convs(unet.encoder) == [10, 20, 20, 40, 40, 80, 40, 20]  # levels 1-3 and the bottom
    assert convs(unet.decoder) == [80, 40, 40, 20, 20, 10, 3]  # up-sampling path, then the 1x1 classifier
    convnet = BaselineNet("ConvNet", dim, 2, 3)
    assert convs(convnet) == [10, 20, 20, 40, 40, 20, 20, 10, 3]
    lr = BaselineNet("LR", dim, 2, 3)
    assert convs(lr) == [3] and sum(p.numel() for p in lr.parameters()) == 2 * 3 + 3
    for net in (unet, convnet, lr):
        assert not any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
                       for m in net.modules())
        assert sum(isinstance(m, AvgPoolDown) for m in net.modules()) == (0 if net is lr else 1)
        shape = (2, 2) + ((13, 22) if dim == 2 else (7, 13, 10))  # any patch size, not only multiples of 8
        net.decoder.deep_supervision = True  # what nnU-Net's set_deep_supervision_enabled does: ignored
        out = net(torch.randn(shape))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3) + shape[2:]
    # the pooling: average over 3 (padding not counted), stride 2; thin axes averaged whole
    x = torch.arange(5.0).reshape((1, 1) + (1,) * (dim - 1) + (5,))
    y = AvgPoolDown(dim)(x)
    np.testing.assert_allclose(y.flatten().numpy(), [0.5, 2.0, 3.5])
    x = torch.ones((1, 1) + (2,) * dim)
    assert AvgPoolDown(dim)(x).shape == (1, 1) + (1,) * dim


def test_validation_plateau_schedule():
    logger = SimpleNamespace(values=[], get_value=lambda key, step: logger.values)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = T.ValidationPlateauLR(opt, 1e-3, logger, factor=0.2, patience=3)
    sched.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    logger.values = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    sched.step(5)  # 3 epochs without a new best (0.9) -> one drop
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    sched.step(12)  # new best 0.8, then 6 epochs without: two more drops
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.2 ** 3)


# ------------------------------------------------------------------------------------------------------------
# one real training step per trainer class
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def step_env(nnunet_workspace):
    """nnU-Net's folders and CPU settings in this process's environment, one torch thread (restored after)."""
    for key in (LABELS3, REGIONS3, IGNORE2):  # plan first: nnUNet_n_proc_DA=0 below is for training only
        nnunet_workspace.small_plans(nnunet_workspace.dataset(*key)[0])
    mp = pytest.MonkeyPatch()
    env = nnunet_workspace.env(nnUNet_n_proc_DA=0, nnUNet_def_n_proc=1)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_compile", "nnUNet_n_proc_DA",
              "nnUNet_def_n_proc"):
        mp.setenv(k, env[k])
    for k in T.SHORT_RUN_ENV:
        mp.delenv(k, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield nnunet_workspace
    torch.set_num_threads(threads)
    mp.undo()


def make_trainer(ws, cls, key, fold=FOLD):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    did, cfg = ws.dataset(*key)
    plans_name = ws.small_plans(did)
    folder = next(ws.preprocessed.glob(f"Dataset{did:03d}_*"))
    plans = load_json(str(folder / f"{plans_name}.json"))
    plans["continue_training"] = False
    return cls(plans, cfg, fold, load_json(str(folder / "dataset.json")), device=torch.device("cpu"))


def one_step(ws, cls, key):
    trainer = make_trainer(ws, cls, key)
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    batch = next(trainer.dataloader_train)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]), f"{cls.__name__}: loss {out['loss']}"
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.network.parameters())), "no update"
    return trainer, batch


def check_trainer(trainer, key):
    cls = type(trainer)
    loss = trainer.loss
    assert loss.region_based == (key == REGIONS3)
    assert loss.ignore_label == (2 if key == IGNORE2 else None)
    if hasattr(loss, "batch_dice"):
        assert loss.batch_dice == trainer.configuration_manager.batch_dice
    for k, v in cls.effective_loss_kwargs().items():
        assert getattr(loss, k) == pytest.approx(v)  # one name per hyper-parameter: argument = attribute
    if issubclass(cls, T.ArchitectureMixin):
        assert isinstance(trainer.network, BaselineNet) and trainer.network.architecture == cls.architecture
        assert not trainer.enable_deep_supervision and loss.deep_supervision_weights is None
        trainer.set_deep_supervision_enabled(True)  # nnU-Net calls this after validation: must be harmless
        trainer.set_deep_supervision_enabled(False)
    else:
        n = len(trainer.configuration_manager.pool_op_kernel_sizes) - 1
        assert loss.deep_supervision_weights == pytest.approx(nnunet_deep_supervision_weights(n))
    if issubclass(cls, T.PaperAdamMixin):
        assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.weight_decay == 0
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cls.paper_lr)
        assert cls.paper_lr == (1e-4 if issubclass(cls, T.FineTuneMixin) else 1.0 if "_LR_" in cls.__name__ else 1e-3)
    else:
        assert isinstance(trainer.optimizer, torch.optim.SGD)


@pytest.mark.slow
@pytest.mark.parametrize("name", NNUNET_NET + ["nnUNetTrainer_LR_CE", "nnUNetTrainer_ConvNet_CE",
                                               "nnUNetTrainer_UNet_CE"])
def test_step_labels_3d(step_env, name):
    trainer, _ = one_step(step_env, T.TRAINERS[name], LABELS3)
    check_trainer(trainer, LABELS3)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES + list(T.LOSS_TRAINERS and
                                                  [c.__name__ for c in T.LOSS_TRAINERS.values()]))
def test_step_ignore_2d(step_env, name):
    trainer, _ = one_step(step_env, T.TRAINERS[name], IGNORE2)
    check_trainer(trainer, IGNORE2)


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.__name__ for c in T.LOSS_TRAINERS.values()] + ["nnUNetTrainer_UNet_wCE"])
def test_step_regions_3d(step_env, name):
    trainer, _ = one_step(step_env, T.TRAINERS[name], REGIONS3)
    check_trainer(trainer, REGIONS3)
    if trainer.loss_name == "wce":  # one prior per region, from the preprocessed training labels
        assert len(trainer.loss.class_priors) == 2 and trainer.loss.class_priors[0] > trainer.loss.class_priors[1]


class nnUNetTrainer_DSCpp_typo(T.nnUNetTrainer_DSCpp):
    loss_kwargs = {"gama": 3.5}  # typo of gamma


class nnUNetTrainer_SoftDice_ignore1(T.nnUNetTrainer_SoftDice):
    loss_kwargs = {"ignore_label": 1}  # nnU-Net's own setting (dataset.json says 2)


class nnUNetTrainer_Tversky_alpha_neg(T.nnUNetTrainer_Tversky):
    loss_kwargs = {"alpha": -1.0}  # a value the loss rejects


class nnUNetTrainer_DSCpp_batch(T.nnUNetTrainer_DSCpp):
    loss_kwargs = {"batch_dice": False}  # the plans decide


@pytest.mark.slow
@pytest.mark.parametrize("cls,match", [
    (nnUNetTrainer_DSCpp_typo, r"\['gama'\] not arguments of loss 'dscpp'"),
    (nnUNetTrainer_SoftDice_ignore1, r"sets \['ignore_label'\], which nnU-Net takes from"),
    (nnUNetTrainer_DSCpp_batch, r"sets \['batch_dice'\]"),
    (nnUNetTrainer_Tversky_alpha_neg, r"rejects loss_kwargs \{'alpha': -1.0\}: alpha must be"),
])
def test_bad_loss_kwargs_fail_at_construction_before_any_folder(step_env, cls, match):
    """Before the fix these trained (ignore_label 1 silently replaced the dataset's 2) or failed only in
    ``initialize``, after nnU-Net had created the results folder and its log."""
    with pytest.raises(ValueError, match=match) as info:
        make_trainer(step_env, cls, IGNORE2)
    assert "\n" not in str(info.value)
    assert not list(step_env.results.glob(f"*/{cls.__name__}__*")), "a results folder was created"


class nnUNetTrainer_SoftDice_shortrun(T.nnUNetTrainer_SoftDice):
    pass  # a name no other test trains, so its results folder exists only if this test made it


@pytest.mark.slow
def test_invalid_short_run_variable_fails_before_any_folder(step_env, monkeypatch):
    monkeypatch.setenv("NNUNET_LOSSES_EPOCHS", "0")
    with pytest.raises(ValueError, match="NNUNET_LOSSES_EPOCHS must be a positive integer"):
        make_trainer(step_env, nnUNetTrainer_SoftDice_shortrun, IGNORE2)
    assert not list(step_env.results.glob("*/nnUNetTrainer_SoftDice_shortrun__*"))


@pytest.mark.slow
def test_step_user_variant(step_env, ext_trainer_env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    cls = recursive_find_trainer_class_by_name("nnUNetTrainer_DSCpp_g3p5")
    trainer, _ = one_step(step_env, cls, LABELS3)
    assert trainer.loss.gamma == 3.5


class nnUNetTrainer_UNet_SoftDice_finetune(T.FineTuneMixin, T.nnUNetTrainer_UNet_SoftDice):
    pass  # docs/trainers.md: a baseline network with the fine-tune optimiser


class nnUNetTrainer_UNet_TverskyB08(T.UNetMixin, T.nnUNetTrainer_Tversky):
    loss_kwargs = {"beta": 0.8}  # a network of the paper, a loss with one hyper-parameter changed


def _no_mirroring_dscpp():
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
        nnUNetTrainerNoMirroring

    class nnUNetTrainerNoMirroring_DSCpp(T.LossTrainerMixin, nnUNetTrainerNoMirroring):
        loss_name = "dscpp"  # our loss on top of another nnU-Net trainer variant
    return nnUNetTrainerNoMirroring_DSCpp


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: nnUNetTrainer_UNet_SoftDice_finetune,
                                  lambda: nnUNetTrainer_UNet_TverskyB08, _no_mirroring_dscpp])
def test_step_documented_compositions(step_env, make):
    cls = make()
    trainer, _ = one_step(step_env, cls, LABELS3)
    check_trainer(trainer, LABELS3)
    if cls is nnUNetTrainer_UNet_TverskyB08:
        assert (trainer.loss.alpha, trainer.loss.beta) == (0.3, 0.8)
    if "NoMirroring" in cls.__name__:
        assert trainer.inference_allowed_mirroring_axes is None and trainer.loss.gamma == 2


@pytest.mark.slow
@pytest.mark.parametrize("key", [LABELS3, REGIONS3, IGNORE2])
def test_dice_ce_trainer_reproduces_nnunet_default_loss(step_env, key):
    """Same network output and targets: our DiceCE trainer's loss = nnU-Net's default trainer's loss + 1 (nnU-Net
    returns -Dice where we return 1 - Dice; the deep supervision weights sum to 1) -- so region/label mode, ignore
    label, batch_dice, do_bg and deep supervision weights are plumbed exactly as nnU-Net does."""
    ours, batch = one_step(step_env, T.nnUNetTrainer_DiceCE, key)
    theirs = make_trainer(step_env, nnUNetTrainer, key)
    theirs.initialize()
    with torch.no_grad():
        output = ours.network(batch["data"])
        a = ours.loss(output, batch["target"])
        b = theirs.loss(output, batch["target"])
    assert float(a) == pytest.approx(float(b) + 1, abs=1e-5)


@pytest.mark.slow
def test_class_priors_of_a_fold_are_cached(step_env):
    trainer = make_trainer(step_env, T.nnUNetTrainer_wCE, LABELS3)
    priors = P.trainer_class_priors(trainer)
    did, _ = step_env.dataset(*LABELS3)
    cache = next(step_env.preprocessed.glob(f"Dataset{did:03d}_*")) / P.CACHE_FILE
    entry = json.loads(cache.read_text())["entries"][f"{PLANS}/3d_fullres/fold_{FOLD}"]
    assert entry["priors"] == priors and sum(priors) == pytest.approx(1) and priors[0] > priors[1] > priors[2]
    train_keys, _ = trainer.do_split()
    assert entry["num_training_cases"] == len(train_keys) == 8
    mtime = cache.stat().st_mtime_ns
    assert P.trainer_class_priors(make_trainer(step_env, T.nnUNetTrainer_LR_wCE, LABELS3)) == priors
    assert cache.stat().st_mtime_ns == mtime  # read from the cache, not rescanned or rewritten
