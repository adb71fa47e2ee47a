"""One way to run a function over the cases: in this process, or spread over worker processes, with a
progress bar -- used by ``evaluate`` (reduce each case) and ``threshold`` (export each case)."""
from __future__ import annotations

import multiprocessing
import sys
from typing import Callable, List, Sequence

#: a worker's function and its fixed keyword arguments, set once per worker by :func:`_init_worker` (they are
#: sent once per worker, not once per case)
_WORKER: dict = {}


def mp_context():
    """Worker processes: ``fork`` on Linux (workers use numpy and the image reader only, so they need not import
    torch again as ``spawn`` workers would -- seconds each), ``spawn`` elsewhere or once CUDA is initialised."""
    torch = sys.modules.get("torch")
    cuda = torch is not None and getattr(torch, "cuda", None) is not None and torch.cuda.is_initialized()
    if sys.platform.startswith("linux") and not cuda:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _init_worker(func: Callable, kwargs: dict) -> None:
    _WORKER.update(func=func, kwargs=kwargs)


def _call(item):
    i, case = item
    return i, _WORKER["func"](case, **_WORKER["kwargs"])


def map_cases(func: Callable, cases: Sequence, kwargs: dict, num_processes: int = 1, progress: bool = False,
              desc: str = "") -> List:
    """``[func(case, **kwargs) for case in cases]``, in ``num_processes`` worker processes when > 1 (``func``
    must then be a module-level function); the first error stops everything and is raised here."""
    from tqdm import tqdm
    results: List = [None] * len(cases)
    with tqdm(total=len(cases), disable=not progress, desc=desc, unit="case", file=sys.stderr,
              dynamic_ncols=True) as bar:
        if num_processes > 1 and len(cases) > 1:
            with mp_context().Pool(min(num_processes, len(cases)), initializer=_init_worker,
                                   initargs=(func, kwargs)) as pool:
                for i, res in pool.imap_unordered(_call, list(enumerate(cases))):
                    results[i] = res
                    bar.update()
        else:
            for i, case in enumerate(cases):
                results[i] = func(case, **kwargs)
                bar.update()
    return results
