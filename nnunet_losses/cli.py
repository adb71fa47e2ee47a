"""The package's single console command, ``nnunet-losses``, with one subcommand per tool."""
from __future__ import annotations

import argparse
import inspect
import sys
from typing import List, Optional


def _cmd_losses(args: argparse.Namespace) -> int:
    from .registry import LOSSES, loss_arguments
    for name, (cls, paper) in LOSSES.items():
        if args.verbose:
            defaults = ", ".join(f"{k}={'<required>' if v is inspect.Parameter.empty else v!r}"
                                 for k, v in loss_arguments(name).items())
            print(f"{name:18s} {cls.__name__:28s} {paper}\n{'':18s} {defaults}")
        else:
            print(f"{name:18s} {cls.__name__:28s} {paper}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-losses", description="Segmentation losses for nnU-Net v2.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("losses", help="list the available losses, their classes and papers")
    p.add_argument("-v", "--verbose", action="store_true", help="also print every argument with its default")
    p.set_defaults(func=_cmd_losses)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
