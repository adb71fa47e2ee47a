"""Shared argparse pieces: the one validating number type and hidden aliases for renamed flags.

Every numeric option of every subcommand uses :class:`Number` (a test walks all parsers to check it), so a value
out of range is a usage error naming the option and the allowed range before anything runs, e.g.
``argument --alpha: 1.5 is not in (0, 1)``.
"""
from __future__ import annotations

import argparse
import math
from typing import Optional


class Number:
    """argparse ``type=``: an ``int`` or a finite ``float`` in an interval (``low``/``high`` ``None``: unbounded;
    ``open_low``/``open_high``: the bound itself excluded)."""

    def __init__(self, kind: type = float, low: Optional[float] = None, high: Optional[float] = None,
                 open_low: bool = False, open_high: bool = False):
        if kind not in (int, float):
            raise TypeError(f"kind must be int or float, got {kind!r}")
        self.kind, self.low, self.high, self.open_low, self.open_high = kind, low, high, open_low, open_high

    def interval(self) -> str:
        fmt = "{:d}" if self.kind is int else "{:g}"  # :g would print 2**32 - 1 as 4.29497e+09
        lo = "-inf" if self.low is None else fmt.format(self.low)
        hi = "inf" if self.high is None else fmt.format(self.high)
        left = "(" if self.open_low or self.low is None else "["
        right = ")" if self.open_high or self.high is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def __call__(self, text: str):
        kind = "an integer" if self.kind is int else "a number"
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if self.kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is not in {self.interval()}")
        return value

    def __repr__(self) -> str:  # argparse names the type in some messages
        return f"{self.kind.__name__} in {self.interval()}"


COUNT = Number(int, low=1)                                   # workers, cases, bins, resamples, epochs, N
COUNT_OR_ZERO = Number(int, low=0)                           # optional counts (0: none)
DATASET_ID = Number(int, low=1, high=999)                    # nnU-Net's DatasetXXX
SEED = Number(int, low=0, high=2 ** 32 - 1)                  # numpy.random.default_rng accepts these
PROBABILITY = Number(float, low=0.0, high=1.0)               # p, thresholds
OPEN_UNIT = Number(float, low=0.0, high=1.0, open_low=True, open_high=True)  # alpha, eps
POSITIVE = Number(float, low=0.0, open_low=True)             # mu, spacings, radii
NON_NEGATIVE = Number(float, low=0.0)                        # noise, blur
FOLD = Number(int, low=0, high=4)                            # nnU-Net's five-fold cross-validation


def add_option(parser, *flags: str, old: tuple = (), **kwargs) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)``, plus the ``old`` spellings of the flag as hidden aliases (not in
    ``-h``; they set the same destination, so scripts written for earlier versions keep working)."""
    if old and kwargs.get("required"):  # either spelling satisfies "required": a required pair, one hidden
        parser = parser.add_mutually_exclusive_group(required=True)
        kwargs = {k: v for k, v in kwargs.items() if k != "required"}
    action = parser.add_argument(*flags, **kwargs)
    if old:
        hidden = {k: v for k, v in kwargs.items() if k not in ("help", "default", "metavar", "dest")}
        parser.add_argument(*old, dest=action.dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **hidden)
    return action
