"""Real 2-process DDP (gloo, CPU): ``batch_dice=True, ddp=True`` equals single-process training on the whole batch.

Every rank holds half of a batch of 4 and runs a tiny ``Conv3d`` wrapped in ``DistributedDataParallel``; the
single-process reference runs the same model on all 4 samples with ``ddp=False``.

Why the parameter gradients agree, for a pure overlap loss: with ``ddp=True`` each rank all-gathers the TP/FP/FN
statistics (nnU-Net's ``AllGatherGrad``), so every rank computes the *same* global loss ``L``. ``AllGatherGrad``'s
backward all-reduces (sums) the incoming gradient over ranks and hands each rank the slice of its own statistics:
``W * dL/dstats_r`` for ``W`` ranks, since each of the ``W`` identical losses contributes ``dL/dstats_r``. DDP then
*averages* the parameter gradients over the ``W`` ranks, cancelling the factor ``W``:
``(1/W) sum_r W dL/dtheta|_r = sum_r dL/dtheta|_r``, the gradient of the single-process loss on the concatenated
batch. (Without the sum in ``AllGatherGrad``'s backward the result would be ``1/W`` of the true gradient.)

Compound losses with a per-voxel mean term (combo, dice_ce, unified_focal and ++ forms): that term is a mean
over each rank's own voxels; DDP averages its gradient over ranks, and with equal halves the average of the two
per-rank means is the global mean. So the gradients agree as well, and the *average* of the per-rank loss values
equals the single-process value (each rank's value differs by its own voxel-mean term).
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from loss_cases import (BATCH_DICE_LOSSES, IGNORE, N_CLASSES, N_REGIONS, VOXEL_MEAN_COMPOUND, make_loss, make_target)


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with the gloo backend is not available"),
    pytest.mark.usefixtures("single_torch_thread"),  # tiny tensors: see conftest.py
]


WORLD = 2
BATCH = 4
SPATIAL = (6, 5, 4)
TIMEOUT_S = 120


def cases():
    """(case id, loss name, region_based, extra kwargs); all with batch_dice=True."""
    out = []
    for name in BATCH_DICE_LOSSES:
        for region in (False, True):
            out.append((f"{name}-{'region' if region else 'label'}", name, region, {}))
    # the ignore label in DDP: exact for the pure overlap losses (the masked voxel means of compound losses would
    # be per-rank means over unequal numbers of valid voxels)
    for name in ("softdice", "dscpp", "lovasz", "focal_tversky"):
        for region in (False, True):
            out.append((f"{name}-{'region' if region else 'label'}-ignore", name, region, {"ignore_label": IGNORE}))
    return out


def make_data(region: bool, ignore: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand((BATCH, 1, *SPATIAL), generator=g) < 0.25 if ignore else None
    target = make_target(region, BATCH, SPATIAL, ignore=mask, generator=g)
    images = torch.randn((BATCH, 1, *SPATIAL), generator=g, dtype=torch.float64)
    return images, target


def make_model(region: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv3d(1, N_REGIONS if region else N_CLASSES, kernel_size=3, padding=1).double()


def run_case(name, region, kwargs, seed, ddp, rank=0):
    """Loss value and parameter gradients: on this rank's half with DDP, or on the whole batch without."""
    images, target = make_data(region, "ignore_label" in kwargs, seed)
    model = make_model(region, seed)
    net = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model)
        half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        images, target = images[half], target[half]
    loss = make_loss(name, region, batch_dice=True, ddp=ddp, **kwargs)
    value = loss(net(images), target)
    value.backward()
    return value.item(), [p.grad.detach().clone() for p in model.parameters()]


def _worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        results = {}
        for i, (cid, name, region, kwargs) in enumerate(cases()):
            results[cid] = run_case(name, region, kwargs, seed=100 + i, ddp=True, rank=rank)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Spawn the 2 ranks once for all losses; per rank {case id: (value, parameter gradients)}."""
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):  # re-raises a rank's exception with its traceback
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


CASES = cases()


def test_every_batch_dice_loss_is_covered():
    assert set(BATCH_DICE_LOSSES) == {"softdice", "softjaccard", "lovasz", "dscpp", "tversky", "focal_tversky",
                                      "combo", "unified_focal", "tversky_pp", "focal_tversky_pp", "combo_pp",
                                      "unified_focal_pp", "dice_ce", "dml", "jml", "metric_tversky"}


@pytest.mark.parametrize("cid,name,region,kwargs", CASES, ids=[c[0] for c in CASES])
def test_ddp_batch_dice_equals_single_process(ddp_results, cid, name, region, kwargs):
    i = [c[0] for c in CASES].index(cid)
    value, grads = run_case(name, region, kwargs, seed=100 + i, ddp=False)
    rank_values = [r[cid][0] for r in ddp_results]
    if name in VOXEL_MEAN_COMPOUND:
        # each rank's value has its own voxel-mean term; their average is the global voxel mean
        assert sum(rank_values) / WORLD == pytest.approx(value, rel=1e-10, abs=1e-12)
    else:
        for r, v in enumerate(rank_values):
            assert v == pytest.approx(value, rel=1e-10, abs=1e-12), f"rank {r}"
    for r, result in enumerate(ddp_results):  # DDP has averaged the gradients: identical on every rank
        for p, (g_ddp, g_ref) in enumerate(zip(result[cid][1], grads)):
            torch.testing.assert_close(g_ddp, g_ref, rtol=1e-9, atol=1e-12, msg=f"rank {r}, parameter {p}")
