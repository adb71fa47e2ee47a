"""Timing shared by the benchmark scripts: variants run in rotated order, medians, a ratio table to the first."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict


def time_variants(variants: Dict[str, Callable[[], object]], reps: int) -> Dict[str, float]:
    """Median wall time (s) of each callable over ``reps`` rounds. The order rotates every round so that no
    variant always runs first (cold caches) or right after the same neighbour."""
    names = list(variants)
    times = {k: [] for k in names}
    for rep in range(reps):
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            t = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def print_ratio_table(medians: Dict[str, float], baseline: str) -> None:
    """Markdown table of each variant's median time and its ratio to the first variant, named ``baseline``."""
    base = next(iter(medians.values()))
    print(f"| variant | time (s) | ratio to {baseline} |\n|---|---|---|")
    for k, m in medians.items():
        print(f"| {k} | {m:.2f} | {m / base:.2f}x |")
