"""Is each loss minimised at p = y for soft targets y? (issue 14: a proper-scoring check for every loss)

A loss is counted as minimised at the target on a soft map y if no small move of the prediction away from
p = y lowers it: the move of every single voxel up and down, and random moves of all voxels, in logit space.
This is checked on a grid of soft binary maps (one sigmoid region; a two-class softmax is the same loss, see
test_reference.py) -- all voxels 0.5 (issue 14's example), an even ramp, a random map and a sparse map -- and
the answer (yes on every map / no) must be the one in the README's loss table.

The metric losses (``dml``, ``jml``, ``metric_tversky``) are also compared with the float64 references on soft
targets with every overlap option here.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import reference_impl as ref
from loss_cases import ALL_LOSSES, make_loss
from test_targets import reference_target, soft_case

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: see conftest.py

README = Path(__file__).resolve().parents[1] / "README.md"
STEP = 0.05  # logit step of the moves
N_RANDOM = 20


def soft_maps():
    rng = np.random.default_rng(0)
    sparse = np.full(12, 0.03)
    sparse[:3] = [0.9, 0.6, 0.35]
    return {"half": np.full(12, 0.5), "ramp": np.linspace(0.05, 0.95, 12), "random": rng.uniform(0.02, 0.98, 12),
            "sparse": sparse}


def minimised_at_target(name: str, y: np.ndarray) -> bool:
    loss = make_loss(name, True, class_priors=[0.3]) if name == "wce" else make_loss(name, True)
    target = torch.tensor(y).view(1, 1, 3, 4)
    at_target = torch.logit(target)
    best = loss(at_target, target).item()
    moves = []
    for i in range(y.size):
        for sign in (1, -1):
            d = torch.zeros(y.size, dtype=torch.float64)
            d[i] = sign
            moves.append(d)
    g = torch.Generator().manual_seed(1)
    moves += [torch.randn(y.size, generator=g, dtype=torch.float64) for _ in range(N_RANDOM)]
    tolerance = 1e-12 * max(1.0, abs(best))
    return all(loss(at_target + STEP * d.view(1, 1, 3, 4), target).item() >= best - tolerance for d in moves)


def finding(name: str) -> str:
    return "yes" if all(minimised_at_target(name, y) for y in soft_maps().values()) else "no"


def readme_column() -> dict:
    """name -> value of the README loss table's 'minimised at p = y' column."""
    section = README.read_text()
    section = section[section.index("## Losses"):]
    section = section[:section.index("\n## ", 1)]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")]
    col = next(i for i, c in enumerate(header) if c.startswith("minimised at p = y"))
    return {line.split("|")[1].strip().strip("`"): line.split("|")[col].strip().split()[0]
            for line in lines[2:] if line.startswith("| `")}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_readme_states_whether_each_loss_is_minimised_at_soft_targets(name):
    assert readme_column()[name] == finding(name), f"README's answer for {name} disagrees with the check"


def test_metric_losses_are_minimised_at_soft_targets_and_soft_dice_is_not():
    for name in ("dml", "jml", "metric_tversky", "ce"):
        assert finding(name) == "yes", name
    assert not minimised_at_target("softdice", soft_maps()["half"])
    # issue 14: with y = 0.5 soft Dice is lower at p = 0.9 than at p = y
    loss = make_loss("softdice", True)
    y = torch.full((1, 1, 3, 4), 0.5, dtype=torch.float64)
    assert loss(torch.logit(torch.full_like(y, 0.9)), y) < loss(torch.logit(y), y)


METRIC_MODES = [(False, 3, (3, 4), False), (False, 3, (2, 3, 2), True), (True, 2, (3, 4), False),
                (True, 2, (2, 3, 2), True)]


METRIC_MODES_BG = [(m, bg) for m in METRIC_MODES for bg in ((False,) if m[0] else (False, True))]  # see with_do_bg


@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample", "batch"])
@pytest.mark.parametrize("mode,do_bg", METRIC_MODES_BG,
                         ids=[f"{'region' if m[0] else 'label'}-{len(m[2])}d{'-ignore' if m[3] else ''}-"
                              f"{'bg' if bg else 'nobg'}" for m, bg in METRIC_MODES_BG])
@pytest.mark.parametrize("name,kw", [("dml", {}), ("jml", {"smooth": 0.5}), ("metric_tversky", {"alpha": 0.8,
                                                                                              "beta": 0.2})])
def test_metric_losses_on_soft_targets_match_reference(name, kw, mode, do_bg, batch_dice):
    region, n_ch, spatial, with_ignore = mode
    logits, target, ignore = soft_case(region, n_ch, spatial, with_ignore, ref.seed_of("metric", name, mode))
    kw = dict(kw, batch_dice=batch_dice, do_bg=do_bg)
    x = torch.tensor(logits, requires_grad=True)
    value = make_loss(name, region, ignore_label=ignore, **kw)(x, torch.from_numpy(target))
    expected = ref.REFERENCES[name](logits, reference_target(target, ignore), region=region, ignore_label=ignore,
                                    **kw)
    assert value.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    loss = make_loss(name, region, ignore_label=ignore, **kw)
    t = torch.from_numpy(target)
    assert torch.autograd.gradcheck(lambda z: loss(z, t), (x.detach().requires_grad_(),), eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


def test_readme_column_parser_reads_every_loss():
    assert sorted(readme_column()) == sorted(ALL_LOSSES)
    assert set(readme_column().values()) <= {"yes", "no"}
    assert re.search(r"minimised at p = y", README.read_text())
