"""The package's single console command, ``nnunet-losses``, with one subcommand per tool.

One argparse module per domain (``nnunet_losses/cli/{losses,trainers,evaluation,research,datasets}.py``) defines
``add_subcommands(subparsers)``; each parser it adds sets ``func(args) -> int``, the code that calls the domain's
plain functions. ``nnunet-losses CMD`` imports only the module of CMD (``SUBCOMMAND_MODULES`` says which), so a
tool's heavy imports -- the trainers import all of nnU-Net, about 5 s -- do not slow down the others; the overview
(``-h``) imports them all.

Flags follow nnU-Net's own style: ``-d -c -tr -p -f -o -np``, underscores in long flags (``--best_from``).

Exit status, the same for every subcommand (see :mod:`nnunet_losses.cli.errors`):
0 done; 1 bad input the user can fix (a missing file, a used dataset id, an unwritable or full output location),
printed as one line ``nnunet-losses CMD: error: ...``; 2 a usage error (an unknown flag, an invalid value),
printed by argparse with the usage line.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from nnunet_losses.cli.errors import EXIT_STATUS_HELP, run_command

#: module -> the subcommands its ``add_subcommands`` registers (a test checks that they agree)
SUBCOMMAND_MODULES = {
    "nnunet_losses.cli.losses": ("losses",),
    "nnunet_losses.cli.trainers": ("trainer-path", "trainers"),
    "nnunet_losses.cli.research": ("theory", "phantom", "demo"),
    "nnunet_losses.cli.datasets": ("convert", "package"),
    "nnunet_losses.cli.evaluation": ("evaluate", "compare", "threshold", "calibrate"),
    "nnunet_losses.cli.study": ("study",),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given and known) one with only the subcommands of ``command``'s module."""
    modules = [m for m, commands in SUBCOMMAND_MODULES.items() if command in commands] or list(SUBCOMMAND_MODULES)
    parser = argparse.ArgumentParser(prog="nnunet-losses", epilog=EXIT_STATUS_HELP,
                                     description="Segmentation losses, trainers and evaluation for nnU-Net v2.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        importlib.import_module(module).add_subcommands(sub)
    for subparser in sub.choices.values():  # every `CMD -h` states the exit statuses
        subparser.epilog = f"{subparser.epilog}\n\n{EXIT_STATUS_HELP}" if subparser.epilog else EXIT_STATUS_HELP
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    command = argv[0] if argv and not argv[0].startswith("-") else None  # the top level has no options but -h
    args = build_parser(command).parse_args(argv)
    return run_command(args)
