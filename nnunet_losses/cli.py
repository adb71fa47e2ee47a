"""The package's single console command, ``nnunet-losses``, with one subcommand per tool.

Each tool registers its own subcommands: a module listed in ``SUBCOMMAND_MODULES`` defines
``add_subcommands(subparsers)``, adding parsers whose ``func(args) -> int`` runs the tool. ``nnunet-losses CMD``
imports only the module of CMD (``SUBCOMMAND_MODULES`` says which), so a tool's heavy imports -- the trainers
import all of nnU-Net, about 5 s -- do not slow down the others; the overview (``-h``) imports them all.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from typing import List, Optional

#: module -> the subcommands its ``add_subcommands`` registers (a test checks that they agree)
SUBCOMMAND_MODULES = {
    "nnunet_losses.cli": ("losses",),
    "nnunet_losses.trainers.cli": ("trainer-path", "trainers"),
    "nnunet_losses.research.theory": ("theory",),
    "nnunet_losses.research.phantom": ("phantom",),
    "nnunet_losses.datasets.cli": ("convert", "package"),
    "nnunet_losses.evaluation.cli": ("evaluate", "compare", "threshold"),
    "nnunet_losses.research.demo": ("demo",),
}


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


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given and known) one with only the subcommands of ``command``'s module."""
    modules = [m for m, commands in SUBCOMMAND_MODULES.items() if command in commands] or list(SUBCOMMAND_MODULES)
    parser = argparse.ArgumentParser(prog="nnunet-losses",
                                     description="Segmentation losses, trainers and evaluation for nnU-Net v2.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        importlib.import_module(module).add_subcommands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None  # the top level has no options but -h
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
