"""``nnunet-losses trainer-path`` and ``nnunet-losses trainers``."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def ext_trainer_folder() -> Path:
    """``nnunet_losses.trainers.trainer_path()``, found without importing the trainers: importing them imports all
    of nnU-Net (seconds), too slow for ``$(nnunet-losses trainer-path)`` in every shell start-up."""
    spec = importlib.util.find_spec("nnunet_losses.trainers")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "nnunet_ext"


def _cmd_trainer_path(args: argparse.Namespace) -> int:
    print(ext_trainer_folder())
    return 0


def _describe(cls) -> str:
    from nnunet_losses.trainers.baselines import ArchitectureMixin
    from nnunet_losses.trainers.mixins import PaperAdamMixin
    arch = cls.architecture if issubclass(cls, ArchitectureMixin) else "nnU-Net"
    optim = f"Adam {cls.paper_lr:g}" if issubclass(cls, PaperAdamMixin) else "SGD 1e-2 (nnU-Net)"
    kwargs = ", ".join(f"{k}={v!r}" for k, v in cls.effective_loss_kwargs().items())
    return f"{cls.loss_name}({kwargs})  net={arch}  optim={optim}"


def _cmd_trainers(args: argparse.Namespace) -> int:
    from nnunet_losses.trainers import TRAINERS
    for name, cls in TRAINERS.items():
        if args.verbose:
            print(f"{name:40s} {_describe(cls)}  [{cls.paper}]")
        else:
            print(name)
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "trainer-path", help="print the folder for nnU-Net's nnUNet_extTrainer",
        description="Print the folder that makes nnU-Net find this package's trainers: "
                    "export nnUNet_extTrainer=$(nnunet-losses trainer-path)")
    p.set_defaults(func=_cmd_trainer_path)
    p = subparsers.add_parser("trainers", help="list the nnU-Net trainers of this package")
    p.add_argument("-v", "--verbose", action="store_true", help="with loss, hyper-parameters, network, optimiser")
    p.set_defaults(func=_cmd_trainers)
