"""``nnunet-losses losses``: the loss registry, with each loss's class, paper and (``-v``) arguments."""
from __future__ import annotations

import argparse
import inspect


def _cmd_losses(args: argparse.Namespace) -> int:
    from nnunet_losses.registry import LOSSES, loss_arguments
    for name, spec in LOSSES.items():
        overrides = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
        call = f"{spec.cls.__name__}({overrides})" if overrides else spec.cls.__name__
        print(f"{name:18s} {call:32s} {spec.paper}")
        if args.verbose:
            defaults = ", ".join(f"{k}={'<required>' if v is inspect.Parameter.empty else repr(v)}"
                                 for k, v in loss_arguments(name).items())
            print(f"{'':18s} {defaults}")
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("losses", help="list the available losses, their classes and papers")
    p.add_argument("-v", "--verbose", action="store_true", help="also print every argument with its default")
    p.set_defaults(func=_cmd_losses)
