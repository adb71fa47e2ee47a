"""Public API: registry, argument validation, input validation, the console command and packaging."""
from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nnunet_losses
from loss_cases import ALL_LOSSES, make_loss
from nnunet_losses import available_losses, get_loss, loss_arguments
from nnunet_losses.registry import LOSSES

REPO = Path(__file__).resolve().parents[1]


def one_line_value_error(call, *fragments: str) -> str:
    """``call()`` raises a one-line ValueError whose message contains every fragment; returns the message."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, f"multi-line error message: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
def test_available_losses_lists_exactly_the_registered_losses():
    names = available_losses()
    assert isinstance(names, list)
    assert names == ["ce", "wce", "focal", "softdice", "softjaccard", "lovasz", "dscpp", "tversky", "focal_tversky",
                     "combo", "unified_focal", "tversky_pp", "focal_tversky_pp", "combo_pp", "unified_focal_pp",
                     "dice_ce", "dml", "jml", "metric_tversky"]


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_get_loss_returns_a_working_module(name):
    loss = make_loss(name, False)
    assert isinstance(loss, nn.Module)
    assert isinstance(loss, nnunet_losses.SegmentationLoss)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    value = loss(logits, torch.randint(0, 3, (2, 1, 4, 4)))
    assert value.ndim == 0 and torch.isfinite(value)
    assert repr(loss)  # extra_repr must not fail


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_loss_arguments_are_the_keyword_only_constructor_arguments(name):
    args = loss_arguments(name)
    for common in ("region_based", "ignore_label", "deep_supervision_weights"):
        assert common in args
    cls = LOSSES[name].cls
    params = inspect.signature(cls).parameters
    assert list(args) == list(params)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    with pytest.raises(TypeError):  # no positional arguments: 11 of them in a row were a source of bugs
        cls(False)
    for k, v in LOSSES[name].defaults.items():
        assert args[k] == v and params[k].default != v  # a registry override really overrides


def repr_arguments(loss) -> dict:
    """``name=value`` pairs of a loss's repr, evaluated."""
    text = repr(loss)
    return eval(f"dict({text[text.index('(') + 1:text.rindex(')')]})")


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_repr_names_only_constructor_arguments_with_their_values(name):
    """One public name per hyper-parameter: what the repr (and so the training log) prints is the constructor
    call that rebuilds the loss -- no ``gamma_pp=1.0`` on a loss without such an argument."""
    loss = make_loss(name, False, ignore_label=4, deep_supervision_weights=(0.5, 0.5))
    printed = repr_arguments(loss)
    assert set(printed) <= set(loss_arguments(name)), sorted(set(printed) - set(loss_arguments(name)))
    for k, v in LOSSES[name].defaults.items():
        assert printed[k] == v
    rebuilt = type(loss)(**printed)
    assert repr(rebuilt) == repr(loss)
    changed = {k: v * 1.5 for k, v in printed.items() if k in ("gamma", "gamma_pp", "alpha", "smooth")
               and isinstance(v, float)}
    if changed:  # each printed value comes from its own argument
        assert {k: repr_arguments(make_loss(name, False, **changed))[k] for k in changed} == changed


def test_readme_loss_table_lists_exactly_the_registry():
    """The README's loss table has one row per registry entry, in registry order, with the entry's class."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Losses"):]
    section = section[:section.index("\n## ", 1)]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    assert [r[1].strip().strip("`") for r in rows] == available_losses()
    for r in rows:
        spec = LOSSES[r[1].strip().strip("`")]
        overrides = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
        assert r[2].strip() == f"`{spec.cls.__name__}" + (f"({overrides})`" if overrides else "`")


def test_one_trainer_per_registry_entry():
    from nnunet_losses.trainers import LOSS_TRAINERS, TRAINERS
    assert sorted(LOSS_TRAINERS) == sorted(spec.trainer for spec in LOSSES.values())
    for name, spec in LOSSES.items():
        trainer = TRAINERS[f"nnUNetTrainer_{spec.trainer}"]
        assert trainer.loss_name == name and trainer.paper == spec.paper
        assert trainer.__module__ == "nnunet_losses.trainers.loss_trainers"


def test_get_loss_is_case_insensitive():
    assert type(get_loss("SoftDice")) is type(get_loss("softdice"))


@pytest.mark.parametrize("bad", ["dice", "", "soft_dice", None, 3])
def test_unknown_loss_name_lists_valid_names(bad):
    one_line_value_error(lambda: get_loss(bad), "unknown loss", *ALL_LOSSES)


def test_unknown_kwarg_names_it_and_the_valid_kwargs():
    message = one_line_value_error(lambda: get_loss("softdice", batchdice=True), "batchdice", "valid arguments")
    for valid in loss_arguments("softdice"):
        assert valid in message
    one_line_value_error(lambda: get_loss("lovasz", smooth=1.0), "smooth", "only_present")
    one_line_value_error(lambda: get_loss("ce", gamma=2.0), "gamma", "region_based")


# ----------------------------------------------------------------------------------------------------------------
# argument values
# ----------------------------------------------------------------------------------------------------------------
INVALID = [
    ("tversky", {"alpha": -1}, "alpha"), ("focal_tversky", {"beta": -0.5}, "beta"), ("focal", {"alpha": -1}, "alpha"),
    ("focal", {"alpha": 1.5}, "alpha"), ("combo", {"alpha": -1}, "alpha"), ("combo", {"beta": 2}, "beta"),
    ("softdice", {"smooth": -1}, "smooth"), ("dice_ce", {"smooth": -1}, "smooth"), ("dscpp", {"smooth": -1}, "smooth"),
    ("softdice", {"smooth": float("nan")}, "smooth"), ("softdice", {"smooth": float("inf")}, "smooth"),
    ("dscpp", {"gamma": 0}, "gamma"), ("dscpp", {"gamma": -2}, "gamma"), ("dscpp", {"gamma": float("inf")}, "gamma"),
    ("focal_tversky", {"gamma": 0}, "gamma"), ("focal", {"gamma": -1}, "gamma"),
    ("unified_focal", {"gamma": 1}, "gamma"), ("unified_focal", {"gamma": -0.1}, "gamma"),
    ("metric_tversky", {"alpha": 0, "beta": 0}, "alpha and beta"),
    ("tversky_pp", {"gamma_pp": 0}, "gamma_pp"), ("combo_pp", {"gamma_pp": -1}, "gamma_pp"),
    ("unified_focal", {"lambda_": 2}, "lambda_"), ("unified_focal_pp", {"lambda_": -0.5}, "lambda_"),
    ("unified_focal", {"delta": 1.5}, "delta"), ("unified_focal_pp", {"delta": -1}, "delta"),
    ("tversky", {"alpha": 0, "beta": 0}, "alpha and beta"),
    ("dice_ce", {"weight_ce": -1}, "weight_ce"), ("dice_ce", {"weight_dice": -1}, "weight_dice"),
    ("softdice", {"batch_dice": "yes"}, "batch_dice"), ("dice_ce", {"batch_dice": 1}, "batch_dice"),
    ("lovasz", {"batch_dice": "yes"}, "batch_dice"), ("softdice", {"do_bg": "no"}, "do_bg"),
    ("softdice", {"ddp": None}, "ddp"), ("lovasz", {"only_present": 0}, "only_present"),
    ("unified_focal", {"asymmetric": "true"}, "asymmetric"), ("ce", {"region_based": 1}, "region_based"),
    ("ce", {"ignore_label": 1.5}, "ignore_label"), ("softdice", {"ignore_label": "2"}, "ignore_label"),
    ("lovasz", {"ignore_label": True}, "ignore_label"), ("tversky", {"alpha": "0.3"}, "alpha"),
    ("wce", {}, "class_priors"), ("wce", {"class_priors": None}, "class_priors"),
    ("wce", {"class_priors": [0.5, 0.3]}, "sum to 1"), ("wce", {"class_priors": [0.9, 0.3, 0.1]}, "sum to 1"),
    ("wce", {"class_priors": [1.0, 0.0]}, "class_priors"), ("wce", {"class_priors": []}, "class_priors"),
    ("wce", {"class_priors": [0.5, 1.0], "region_based": True}, "class_priors"),
    ("softdice", {"deep_supervision_weights": [1, -0.5]}, "deep_supervision_weights"),
    ("lovasz", {"deep_supervision_weights": [float("nan"), 1]}, "deep_supervision_weights"),
    ("ce", {"deep_supervision_weights": [0, 0]}, "deep_supervision_weights"),
    ("dscpp", {"deep_supervision_weights": []}, "deep_supervision_weights"),
    ("combo", {"deep_supervision_weights": 0.5}, "deep_supervision_weights"),
    ("dice_ce", {"deep_supervision_weights": "1,0.5"}, "deep_supervision_weights"),
    ("tversky", {"deep_supervision_weights": [1, float("inf")]}, "deep_supervision_weights"),
]


@pytest.mark.parametrize("name,kwargs,fragment", INVALID,
                         ids=[f"{n}-{'-'.join(f'{k}={v!r}' for k, v in kw.items()) or 'missing'}"
                              for n, kw, _ in INVALID])
def test_invalid_argument_values_raise_one_line_value_error(name, kwargs, fragment):
    one_line_value_error(lambda: get_loss(name, **kwargs), fragment)


VALID_EDGES = [("focal", {"gamma": 0}), ("focal", {"alpha": None}), ("unified_focal", {"gamma": 0}),
               ("unified_focal", {"lambda_": 0}), ("unified_focal", {"lambda_": 1}), ("softdice", {"smooth": 0}),
               ("tversky", {"alpha": 0}), ("combo", {"alpha": 1}), ("dice_ce", {"weight_ce": 0}),
               ("wce", {"class_priors": [0.2, 0.7], "region_based": True}), ("ce", {"ignore_label": 4}),
               ("softdice", {"deep_supervision_weights": [1, 0.5, 0]}), ("ce", {"deep_supervision_weights": (0, 1)})]


@pytest.mark.parametrize("name,kwargs", VALID_EDGES, ids=[f"{n}-{kw}" for n, kw in VALID_EDGES])
def test_boundary_values_are_accepted(name, kwargs):
    get_loss(name, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["softdice", "ce", "lovasz", "unified_focal"])
def test_wrong_label_target_shapes_are_explained(name):
    loss = get_loss(name)
    x = torch.randn(2, 3, 4, 5)
    one_line_value_error(lambda: loss(x, torch.zeros(2, 2, 4, 5)), "label map", "region_based=True")
    one_line_value_error(lambda: loss(x, torch.zeros(3, 1, 4, 5)), "does not match", "(3, 1, 4, 5)", "(2, 3, 4, 5)")
    one_line_value_error(lambda: loss(x, torch.zeros(2, 1, 4, 4)), "does not match", "spatial")
    one_line_value_error(lambda: loss(x, torch.zeros(2, 1, 4, 5, 1)), "does not match")
    one_line_value_error(lambda: loss(torch.randn(2, 3, 4), torch.zeros(2, 1, 4)), "(B, C, X, Y)")
    one_line_value_error(lambda: loss(torch.randn(2, 1, 4, 5), torch.zeros(2, 1, 4, 5)),
                         "at least 2 output channels", "region_based=True")
    one_line_value_error(lambda: loss(x, x.argmax(1).tolist()), "torch.Tensor")
    loss(x, torch.zeros(2, 4, 5))  # a label map without channel axis is accepted


@pytest.mark.parametrize("name", ["softdice", "ce", "lovasz", "combo"])
def test_wrong_region_target_channels_are_explained(name):
    x = torch.randn(2, 3, 4, 5)
    loss = get_loss(name, region_based=True)
    one_line_value_error(lambda: loss(x, torch.zeros(2, 1, 4, 5)), "3 channels", "region_based=False")
    one_line_value_error(lambda: loss(x, torch.zeros(2, 4, 4, 5)), "3 channels")
    loss = get_loss(name, region_based=True, ignore_label=7)
    one_line_value_error(lambda: loss(x, torch.zeros(2, 3, 4, 5)), "4 channels", "ignore mask")


@pytest.mark.parametrize("name", ["softdice", "ce", "lovasz", "dice_ce"])
def test_label_out_of_range_is_explained(name):
    x = torch.randn(2, 3, 4, 5)
    target = torch.zeros(2, 1, 4, 5, dtype=torch.long)
    loss = get_loss(name)
    too_high = target.clone()
    too_high[0, 0, 1, 1] = 3
    one_line_value_error(lambda: loss(x, too_high), "label 3", "3 output channels", "dataset.json", "ignore_label")
    negative = target.clone()
    negative[1, 0, 0, 0] = -1
    one_line_value_error(lambda: loss(x, negative), "label -1")
    # label 3 is fine once it is the ignore label, another stray label is not
    get_loss(name, ignore_label=3)(x, too_high)
    too_high[0, 0, 2, 2] = 5
    one_line_value_error(lambda: get_loss(name, ignore_label=3)(x, too_high), "label 5", "ignore label 3")


def test_wce_prior_count_must_match_channels():
    loss = get_loss("wce", class_priors=[0.6, 0.3, 0.1])
    one_line_value_error(lambda: loss(torch.randn(2, 2, 4, 4), torch.zeros(2, 1, 4, 4)), "3 class_priors",
                         "2 output channels")


# ----------------------------------------------------------------------------------------------------------------
# console command
# ----------------------------------------------------------------------------------------------------------------
CONSOLE_SCRIPT = Path(sys.executable).parent / "nnunet-losses"


def listed_names(stdout: str):
    """Loss names: the first word of every line that is not an indented continuation (``-v`` argument lines)."""
    return [line.split()[0] for line in stdout.splitlines() if line.strip() and not line[0].isspace()]


def test_console_command_lists_every_loss():
    """The installed console script (``python -m nnunet_losses.cli`` where it is not installed) in a subprocess."""
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "nnunet_losses.cli"]
    proc = subprocess.run(command + ["losses"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert listed_names(proc.stdout) == available_losses()


def test_cli_subcommand_table_matches_what_the_modules_register():
    """``nnunet-losses CMD`` imports only the module SUBCOMMAND_MODULES names for CMD: the table must be right."""
    import argparse
    import importlib
    from nnunet_losses.cli import SUBCOMMAND_MODULES
    for module, commands in SUBCOMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_subcommands(sub)
        assert tuple(sub.choices) == commands, module


def test_cli_runs_a_subcommand_without_importing_the_trainers():
    """``nnunet-losses losses`` must not pay for importing nnU-Net's trainers (seconds)."""
    code = ("import sys; from nnunet_losses.cli import main; main(['losses']); "
            "print('TRAINERS_IMPORTED' if 'nnunet_losses.trainers' in sys.modules else 'LIGHT')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LIGHT"


def test_cli_verbose_listing_and_usage_errors(capsys):
    from nnunet_losses.cli import main
    assert main(["losses", "-v"]) == 0
    out = capsys.readouterr().out
    assert listed_names(out) == available_losses()
    lines = out.splitlines()
    wce_args = lines[[i for i, line in enumerate(lines) if line.startswith("wce ")][0] + 1]
    assert "class_priors=<required>" in wce_args  # a marker, not a string default '<required>'
    assert "ignore_label=None" in wce_args
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code != 0
    assert "losses" in capsys.readouterr().err  # argparse lists the valid subcommands


# ----------------------------------------------------------------------------------------------------------------
# packaging
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a pip build in a subprocess: ~3 s idle, more on a busy machine
def test_wheel_installs_trainers_and_evaluation_inside_the_package(tmp_path):
    """trainers/ and evaluation/ sit at the top of the repository but must be installed as
    nnunet_losses.trainers / nnunet_losses.evaluation, never as top-level packages that would clash with others."""
    pytest.importorskip("setuptools", reason="--no-build-isolation needs setuptools in the environment")
    # build from a copy: an in-tree build would write build/ and *.egg-info into the shared working tree
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "results"))
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (target / "nnunet_losses" / "__init__.py").is_file()
    assert (target / "nnunet_losses" / "losses" / "__init__.py").is_file()
    assert (target / "nnunet_losses" / "trainers" / "__init__.py").is_file()
    assert (target / "nnunet_losses" / "evaluation" / "__init__.py").is_file()
    for name in ("trainers", "evaluation", "tests", "losses", "benchmarks", "scripts"):
        assert not (target / name).exists(), f"top-level {name!r} installed into site-packages"
    # every Python file of the repo's trainers/ and evaluation/ folders is shipped
    for folder in ("trainers", "evaluation"):
        shipped = {p.relative_to(target / "nnunet_losses" / folder)
                   for p in (target / "nnunet_losses" / folder).rglob("*.py")}
        expected = {p.relative_to(REPO / folder) for p in (REPO / folder).rglob("*.py")}
        assert expected <= shipped, (f"{folder}/{sorted(map(str, expected - shipped))} not installed: list the "
                                     f"sub-folder under [tool.setuptools] packages or package-data in pyproject.toml")
    dist_info = list(target.glob("nnunet_losses-*.dist-info"))
    assert len(dist_info) == 1
    assert "nnunet-losses = nnunet_losses.cli:main" in (dist_info[0] / "entry_points.txt").read_text()
    # the installed copy imports and lists the same losses
    # (find_spec locates the sub-packages without running them: importing the trainers imports all of nnU-Net)
    script = ("import importlib.util, nnunet_losses; print(nnunet_losses.__file__); "
              "print(importlib.util.find_spec('nnunet_losses.trainers').origin); "
              "print(importlib.util.find_spec('nnunet_losses.evaluation').origin); "
              "print(','.join(nnunet_losses.available_losses()))")
    check = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(target)})
    assert check.returncode == 0, check.stderr
    *files, names = check.stdout.split()
    for file in files:
        assert Path(file).is_relative_to(target), f"{file} is not the installed copy"
    assert names.split(",") == available_losses()
