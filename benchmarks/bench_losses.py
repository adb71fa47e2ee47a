"""Forward + backward time and peak memory of every loss, relative to nnU-Net's own default loss.

Run from the repository root::

    .venv/bin/python benchmarks/bench_losses.py                 # CPU 2x3x64^3, plus GPU 2x4x128^3 if CUDA works
    .venv/bin/python benchmarks/bench_losses.py --quick         # tiny smoke run (seconds), numbers meaningless
    .venv/bin/python benchmarks/bench_losses.py --device cpu --reps 30 --shape 2,3,64,64,64
    .venv/bin/python benchmarks/bench_losses.py --device cpu --threads 1 --clock cpu   # on a busy shared machine

What is measured
----------------
For every name in :func:`nnunet_losses.available_losses` (``wce`` with nearly uniform ``class_priors``), in
label (softmax) and region (sigmoid) mode, one step is ``logits.grad = None; loss(logits, target).backward()``
on a leaf ``logits`` tensor. The reference in each mode is nnU-Net's own loss, built exactly as
``nnUNetTrainer._build_loss`` builds it (with ``MemoryEfficientSoftDiceLoss``) and measured in the same run on
the same tensors:

* labels:  ``DC_and_CE_loss({'batch_dice': False, 'smooth': 1e-5, 'do_bg': False, 'ddp': False}, {},
  weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)``, target an int16
  label map ``(B, 1, *spatial)`` -- the dtype nnU-Net's data loader produces;
* regions: ``DC_and_BCE_loss({}, {'batch_dice': False, 'do_bg': True, 'smooth': 1e-5, 'ddp': False},
  use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)``, target nested bool region maps
  ``(B, R, *spatial)`` (region r = label > r), as nnU-Net's ``ConvertSegmentationToRegionsTransform`` makes.

**Peers**: the same loss as implemented by torch, MONAI or nnU-Net (``loss_peers.py``: ``ce``/``wce`` vs torch's
cross-entropy, soft Dice / Jaccard / Tversky / Focal vs MONAI's and nnU-Net's, Dice+CE vs MONAI's ``DiceCELoss``),
timed as extra steps of the same rounds on the same tensors. The table gives the fastest peer of each loss, its
time and peak memory, and our time over its time; MONAI's peers are skipped (the header says so) where MONAI is
not installed.

**Time**: after ``--warmup`` untimed steps of every loss, ``--reps`` rounds in which every loss (baseline
included) runs once, in a rotating order, so that the baseline and the losses see the same machine state
(other processes, CPU frequency). The reported time is the median over rounds; "ratio" is the loss's median
divided by the baseline's median. On CUDA each step is bracketed by ``torch.cuda.synchronize()``.
``torch.set_num_threads`` is left at torch's default (printed in the header) unless ``--threads`` is given.
Wall-clock time is what a training run sees, but on a machine shared with other jobs it mostly measures the
scheduler: a loss of many small kernels loses more to preemption than one long sort. ``--clock cpu --threads 1``
measures the CPU time of the (single) computing thread instead, which other processes barely change; the
header says which clock was used and the summary prints the baseline's interquartile range as a noise gauge.

**Peak memory**: the extra memory one step needs on top of its inputs: the high-water mark of bytes held by
torch's allocator during the step, minus the bytes held just before it (``logits`` and ``target`` are not
counted; the ``logits.grad`` the step leaves behind is). It includes every intermediate, every tensor autograd
saves for backward, and every gradient buffer.

* CUDA: ``torch.cuda.reset_peak_memory_stats()``, then ``max_memory_allocated() - memory_allocated()`` before.
* CPU: torch keeps no CPU allocator statistics and ``tracemalloc`` does not see torch's allocations. Process
  RSS deltas (``resource``/``psutil``) measure glibc, not the loss: in a warmed-up process freed pages are
  reused and a step may show no growth at all, in a fresh one every first touch counts. We therefore record one
  step with ``torch.profiler.profile(profile_memory=True)``, which logs every allocation and free of torch's
  CPU allocator with its size and time, and take the maximum of their running sum. This is the same quantity
  as the CUDA number (allocator bytes, no fragmentation or caching), deterministic, and exact to the byte;
  it does not count Python objects or the allocator's own overhead (both negligible next to 6 MB tensors).

**Lovász vs sort**: the Lovász extension needs one descending ``torch.sort`` of a ``(rows, N)`` error tensor
(rows = samples x channels, N = voxels). We time that bare sort (no autograd) on the loss's own error tensor in
the same rounds and report the Lovász forward + backward time relative to it. The library does not call that
sort on CPU: ``functional.sort_order_descending`` gets the same permutation (a stable descending order) from the
compiled radix sort of the errors' float bits in ``nnunet_losses/lovasz_cpu.py`` (the loss itself runs that sort
and its accumulation in one compiled pass per row); its time is printed too, so that what the loss spends besides
sorting is visible.

Nothing here asserts on a time: the numbers are printed (and written to ``benchmarks/results/`` unless
``--no-output``) for a human to read. The targets of the performance issue are printed as a summary.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import nnunet_losses  # noqa: E402
from nnunet_losses import functional as Fn  # noqa: E402
from nnunet_losses.batch import prepare_batch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_peers import make_peers, monai_missing_reason  # noqa: E402

BASELINE = "nnU-Net"
#: prefix of the step names of peer implementations (see loss_peers.py)
PEER = "peer:"
#: Losses whose target is <= 1.05x nnU-Net's Dice+CE (the performance issue's overlap-loss target).
OVERLAP_LOSSES = ("softdice", "softjaccard", "dscpp", "tversky", "focal_tversky", "tversky_pp", "focal_tversky_pp")
OVERLAP_TARGET = 1.05
LOVASZ_SORT_TARGET = 1.3
OWN_SORT = "sort_order_descending"

Step = Callable[[], None]


# ----------------------------------------------------------------------------------------------------------------
# inputs and losses
# ----------------------------------------------------------------------------------------------------------------
def make_inputs(shape: Tuple[int, ...], region: bool, device: torch.device, seed: int = 0
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random logits (leaf, requires grad) and an nnU-Net-style target for ``shape = (B, C, *spatial)``."""
    gen = torch.Generator().manual_seed(seed)
    b, c, *spatial = shape
    logits = (2 * torch.randn(shape, generator=gen)).to(device).requires_grad_(True)
    labels = torch.randint(0, c + (1 if region else 0), (b, 1, *spatial), generator=gen)
    if region:  # nested regions, region r = label > r (like BraTS' whole tumour / core / enhancing)
        target = labels > torch.arange(c).view(1, c, *([1] * len(spatial)))
    else:
        target = labels.to(torch.int16)
    return logits, target.to(device)


def nnunet_loss(region: bool) -> torch.nn.Module:
    """nnU-Net's default loss as ``nnUNetTrainer._build_loss`` builds it (batch_dice False, no ignore label)."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    if region:
        return DC_and_BCE_loss({}, {'batch_dice': False, 'do_bg': True, 'smooth': 1e-5, 'ddp': False},
                               use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    return DC_and_CE_loss({'batch_dice': False, 'smooth': 1e-5, 'do_bg': False, 'ddp': False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def uniformish_priors(n: int, region: bool) -> List[float]:
    """Nearly uniform priors (so that the weighting code runs but the loss stays close to plain CE)."""
    if region:
        return [0.45 + 0.1 * i / max(n - 1, 1) for i in range(n)]
    raw = [1.0 + 0.1 * i for i in range(n)]
    return [r / sum(raw) for r in raw]


def make_losses(region: bool, n_channels: int, device: torch.device) -> Dict[str, torch.nn.Module]:
    """``{name: module}``: nnU-Net's reference first, then every registered loss with its defaults."""
    losses = {BASELINE: nnunet_loss(region)}
    for name in nnunet_losses.available_losses():
        kwargs = {"region_based": region}
        if name == "wce":
            kwargs["class_priors"] = uniformish_priors(n_channels, region)
        losses[name] = nnunet_losses.get_loss(name, **kwargs)
    return {k: v.to(device) for k, v in losses.items()}


def train_step(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> Step:
    def step():
        logits.grad = None
        loss(logits, target).backward()
    return step


def lovasz_errors(logits: torch.Tensor, target: torch.Tensor, region: bool) -> torch.Tensor:
    """The ``(rows, N)`` error tensor LovaszLoss (default arguments) sorts, without autograd."""
    loss = nnunet_losses.get_loss("lovasz", region_based=region)
    with torch.no_grad():
        batch = prepare_batch(logits, target, region, None)
        c0 = batch.first_channel(loss.do_bg)
        fg = batch.onehot[:, c0:]
        errors = torch.relu(1 - batch.logits * (2 * fg - 1)) if region else (fg - batch.probs[:, c0:]).abs()
        return errors.flatten(0, 1).flatten(1).contiguous()


def sort_step(errors: torch.Tensor) -> Step:
    def step():
        torch.sort(errors, dim=1, descending=True)
    return step


def own_sort_step(errors: torch.Tensor) -> Step:
    """The sort the library runs (the compiled radix sort of the errors' bits on CPU, see ``sort_order_descending``)."""
    def step():
        Fn.sort_order_descending(errors)
    return step


# ----------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps: Dict[str, Step], device: torch.device, reps: int, warmup: int,
               clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Milliseconds per step: ``warmup`` untimed rounds, then ``reps`` rounds of every step in rotating order."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            _sync(device)
            t0 = clock()
            steps[name]()
            _sync(device)
            times[name].append(1e3 * (clock() - t0))
    return times


def _bench_mode_in_child(shape, region, dev_name, reps, warmup, only, clock_name, threads) -> dict:
    torch.set_num_threads(threads)
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    return bench_mode(shape, region, torch.device(dev_name), reps, warmup, only, clock)


def bench_mode_fresh_process(shape, region, dev_name, reps, warmup, only, clock_name, threads) -> dict:
    """:func:`bench_mode` in a freshly spawned process, so that every mode starts from the same allocator state.

    Why: glibc returns freed memory at the top of the heap to the OS and faults it in again later (~4 ms per
    6 MB on this VM), and whether a step pays that depends on what ran before in the process. Run after the
    label mode in one process, the region mode once read 1.2-1.6x higher for some losses (Unified Focal, Combo++,
    Dice+BCE) than in a process of its own; a training run uses one mode, so each mode gets a fresh process.
    """
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_bench_mode_in_child, (shape, region, dev_name, reps, warmup, only, clock_name, threads))


def peak_bytes_cuda(step: Step, device: torch.device) -> int:
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs two lines per profile otherwise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes_cpu(step: Step) -> float:
    """High-water mark of torch's CPU allocator during ``step``, from the profiler's allocation log.

    Uses the profiler's event tree (a semi-private API); returns NaN if this torch version lacks it.
    """
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:  # pragma: no cover - depends on the torch version
        return float("nan")

    events: List[Tuple[int, int]] = []

    def walk(node):
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))  # negative for a free
        for child in node.children:
            walk(child)

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch version
        return float("nan")
    current = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        current += size
        peak = max(peak, current)
    return peak


def peak_bytes(step: Step, device: torch.device) -> float:
    # the caller has cleared logits.grad (the step does too) so that the step starts from the inputs alone
    return peak_bytes_cuda(step, device) if device.type == "cuda" else peak_bytes_cpu(step)


# ----------------------------------------------------------------------------------------------------------------
# one benchmark (device x mode) and reporting
# ----------------------------------------------------------------------------------------------------------------
def bench_mode(shape: Tuple[int, ...], region: bool, device: torch.device, reps: int, warmup: int,
               only: Optional[List[str]] = None, clock: Callable[[], float] = time.perf_counter) -> dict:
    logits, target = make_inputs(shape, region, device)
    losses = make_losses(region, shape[1], device)
    if only:
        losses = {k: v for k, v in losses.items() if k == BASELINE or k in only}
    steps = {name: train_step(loss, logits, target) for name, loss in losses.items()}
    # peers of our losses, timed in the same rotating rounds: {our name: [step names of its peers]}
    peers = {name: [] for name in losses}
    for name, impls in make_peers(region, uniformish_priors(shape[1], region)).items():
        for label, impl in impls.items() if name in losses else ():
            steps[f"{PEER}{name}:{label}"] = train_step(impl, logits, target)
            peers[name].append(f"{PEER}{name}:{label}")
    sort_name = None
    if "lovasz" in losses:
        sort_name = "torch.sort"
        errors = lovasz_errors(logits, target, region)
        steps[sort_name] = sort_step(errors)
        steps[OWN_SORT] = own_sort_step(errors)
    times = time_steps(steps, device, reps, warmup, clock)
    peaks = {}
    for name in list(losses) + [p for ps in peers.values() for p in ps]:
        logits.grad = None
        peaks[name] = peak_bytes(steps[name], device)
    logits.grad = None
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"mode": "region (sigmoid)" if region else "label (softmax)", "shape": shape, "device": device,
            "median_ms": med, "times": times, "peak": peaks, "names": list(losses), "peers": peers,
            "sort": None if sort_name is None else (tuple(errors.shape), med[sort_name], med[OWN_SORT])}


def fastest_peer(res: dict, name: str) -> Optional[str]:
    """Step name of the fastest peer of loss ``name`` in this run, or None if it has none."""
    return min(res["peers"].get(name, []), key=lambda p: res["median_ms"][p], default=None)


def format_table(results: List[dict]) -> str:
    lines = ["| loss | mode | time ms | ratio vs nnU-Net | peak MB | ratio | fastest peer | peer ms | ratio vs peer "
             "| peer MB |", "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for res in results:
        med, peak = res["median_ms"], res["peak"]
        base_t, base_m = med[BASELINE], peak[BASELINE]
        mode = res["mode"].split()[0]
        for name in res["names"]:
            label = f"{BASELINE} ({'DC_and_BCE' if mode == 'region' else 'DC_and_CE'})" if name == BASELINE else name
            peer = fastest_peer(res, name)
            peer_cols = ("- | - | - | -" if peer is None else
                         f"{peer.split(':', 2)[2]} | {med[peer]:.2f} | {med[name] / med[peer]:.2f} | "
                         f"{peak[peer] / 2 ** 20:.1f}")
            lines.append(f"| {label} | {mode} | {med[name]:.2f} | {med[name] / base_t:.2f} | "
                         f"{peak[name] / 2 ** 20:.1f} | {peak[name] / base_m if base_m > 0 else float('nan'):.2f} | "
                         f"{peer_cols} |")
    return "\n".join(lines)


def format_summary(results: List[dict]) -> str:
    """The performance issue's targets, met or not (informational; nothing asserts on a time)."""
    lines = []
    for res in results:
        med, mode = res["median_ms"], res["mode"].split()[0]
        base_t = med[BASELINE]
        q1, _, q3 = statistics.quantiles(res["times"][BASELINE], n=4) if len(res["times"][BASELINE]) > 1 else [base_t] * 3
        lines.append(f"- {mode}: noise -- nnU-Net's step took {q1:.2f}..{q3:.2f} ms (25th..75th percentile)")
        slower = [f"{n} {med[n] / base_t:.2f}x" for n in res["names"] if n != BASELINE and med[n] > base_t]
        lines.append(f"- {mode}: every loss <= 1.0x nnU-Net's default: "
                     + ("met" if not slower else "missed by " + ", ".join(slower)))
        behind = [f"{n} {med[n] / med[p]:.2f}x {p.split(':', 2)[2]}" for n in res["names"]
                  for p in [fastest_peer(res, n)] if p is not None and med[n] > med[p]]
        with_peer = [n for n in res["names"] if fastest_peer(res, n) is not None]
        lines.append(f"- {mode}: every loss <= its fastest peer ({', '.join(with_peer)}): "
                     + ("met" if not behind else "missed by " + ", ".join(behind)))
        missed = [f"{n} {med[n] / base_t:.2f}x" for n in OVERLAP_LOSSES if n in med and med[n] / base_t > OVERLAP_TARGET]
        checked = [n for n in OVERLAP_LOSSES if n in med]
        if checked:
            lines.append(f"- {mode}: overlap losses <= {OVERLAP_TARGET}x nnU-Net time: "
                         + ("all met" if not missed else "missed by " + ", ".join(missed)))
        if res["sort"] is not None and "lovasz" in med:
            shape, sort_ms, own_ms = res["sort"]
            ratio = med["lovasz"] / sort_ms
            lines.append(f"- {mode}: Lovász forward+backward {med['lovasz']:.2f} ms = {ratio:.2f}x the bare torch.sort "
                         f"of its {shape[0]} x {shape[1]} errors ({sort_ms:.2f} ms); target <= {LOVASZ_SORT_TARGET}x: "
                         f"{'met' if ratio <= LOVASZ_SORT_TARGET else 'missed'}. The library's own sort of the same "
                         f"errors (sort_order_descending) takes {own_ms:.2f} ms ({own_ms / sort_ms:.2f}x torch.sort); "
                         f"everything else in the loss {med['lovasz'] - own_ms:.2f} ms")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} logical CPUs)"


def header(device: torch.device, shape, reps: int, warmup: int, clock_name: str = "wall") -> str:
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    monai = monai_missing_reason()
    if monai is None:
        import monai as monai_module
        monai = f"MONAI {monai_module.__version__}"
    return (f"### {device.type.upper()} {'x'.join(map(str, shape))} -- {dev}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {clock_name}-clock median of {reps} rounds after {warmup} warm-up, "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}; {monai}")


def parse_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be B,C,X,Y[,Z], got {text!r}")
    if len(shape) not in (4, 5) or shape[1] < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape must be B,C,X,Y[,Z] with C >= 2, got {text!r}")
    return shape


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto (default): CPU, plus CUDA when available")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 15 CPU, 30 CUDA, 3 quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; 5 CUDA; 1 quick)")
    parser.add_argument("--shape", type=parse_shape, default=None,
                        help="B,C,X,Y[,Z] logits shape for every device (default 2,3,64,64,64 CPU / 2,4,128,128,128 CUDA)")
    parser.add_argument("--mode", choices=["both", "label", "region"], default="both")
    parser.add_argument("--losses", default=None, help="comma-separated subset of losses (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: shape 2,3,8,8,8, 3 rounds, no output file")
    parser.add_argument("--output", default=None, help="Markdown file to write (default benchmarks/results/"
                                                       "bench_losses_<device>.md; not written with --quick)")
    parser.add_argument("--no-output", action="store_true", help="only print the table")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) first (default: leave torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall (default): elapsed time. cpu: CPU time of this process (all its threads; "
                             "CPU only) -- less disturbed by other processes on a shared machine, best with "
                             "--threads 1, since idle-spinning worker threads count too")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    if args.clock == "cpu":
        if args.device == "cuda":
            parser.error("--clock cpu measures CPU work; use the default wall clock on CUDA")
        devices = ["cpu"]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda but torch.cuda.is_available() is False")
        devices.remove("cuda")
    modes = {"both": [False, True], "label": [False], "region": [True]}[args.mode]
    only = [s.strip() for s in args.losses.split(",")] if args.losses else None
    if only:
        unknown = sorted(set(only) - set(nnunet_losses.available_losses()))
        if unknown:
            parser.error(f"unknown loss(es) {', '.join(unknown)}; available: {', '.join(nnunet_losses.available_losses())}")

    blocks = []
    for dev_name in devices:
        device = torch.device(dev_name)
        if args.quick:
            shape, reps, warmup = args.shape or (2, 3, 8, 8, 8), args.reps or 3, args.warmup or 1
        else:
            shape = args.shape or ((2, 4, 128, 128, 128) if dev_name == "cuda" else (2, 3, 64, 64, 64))
            reps = args.reps or (30 if dev_name == "cuda" else 15)
            warmup = args.warmup if args.warmup is not None else (5 if dev_name == "cuda" else 2)
        results = [bench_mode_fresh_process(shape, region, dev_name, reps, warmup, only, args.clock,
                                            torch.get_num_threads()) for region in modes]
        block = "\n\n".join([header(device, shape, reps, warmup, args.clock), format_table(results),
                              format_summary(results)])
        print(block + "\n", flush=True)
        blocks.append((dev_name, block))

    if not (args.quick or args.no_output) or (args.output and not args.no_output):
        for dev_name, block in blocks:
            path = Path(args.output) if args.output else ROOT / "benchmarks" / "results" / f"bench_losses_{dev_name}.md"
            if args.output and len(blocks) > 1:
                path = path.with_name(f"{path.stem}_{dev_name}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block + "\n")
            print(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
