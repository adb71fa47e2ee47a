"""``nnunet-losses study run|status|report|example``: a loss study from a study file (:mod:`nnunet_losses.study`).

``run`` trains what is missing (nnU-Net's own ``nnUNetv2_train --npz``; finished runs skipped, interrupted ones
continued with ``--c``), evaluates, compares and writes the report; ``status`` only looks; ``report`` redoes the
evaluation/comparison/report from the finished runs (what the SLURM report job runs); ``example`` prints a study
file to start from.
"""
from __future__ import annotations

import argparse
import sys


def _gpus(text: str):
    try:
        gpus = [int(g) for g in text.split(",") if g.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of GPU indices such as 0,1") from None
    if any(g < 0 for g in gpus):
        raise argparse.ArgumentTypeError(f"{text!r}: GPU indices are >= 0")
    return gpus


def _load(args):
    from nnunet_losses.study import load_study
    study = load_study(args.study_file)
    if getattr(args, "gpus", None) is not None:
        study.gpus = args.gpus
    if getattr(args, "executor", None):
        study.executor = args.executor
    return study


def _cmd_run(args) -> int:
    from nnunet_losses.study import run_study
    result = run_study(_load(args), progress=not args.no_progress)
    if "submitted" in result:
        s = result["submitted"]
        print(f"submitted {s['n_trainings']} training(s) as SLURM job array {s['array_job']} and the report as job "
              f"{s['report_job']}; follow with `nnunet-losses study status {args.study_file}`")
        return 0
    print(f"report: {result['report']['html']} (and report.md)")
    return 0


def _cmd_status(args) -> int:
    from nnunet_losses.study.runs import format_status, study_status
    print(format_status(study_status(_load(args))))
    return 0


def _cmd_report(args) -> int:
    from nnunet_losses.study import finish_study
    result = finish_study(_load(args))
    print(f"report: {result['report']['html']} (and report.md)")
    return 0


def _cmd_example(args) -> int:
    from nnunet_losses.study.config import EXAMPLE
    sys.stdout.write(EXAMPLE)
    return 0


def add_subcommands(subparsers) -> None:
    from nnunet_losses.evaluation.errors import EvaluationError
    from nnunet_losses.study.config import StudyError
    p = subparsers.add_parser("study", help="a loss study: trainers x folds -> evaluation -> comparison -> report",
                              description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, help_text in (("run", _cmd_run, "train what is missing, evaluate, compare, write the report"),
                                  ("status", _cmd_status, "show each (trainer, fold): done, running, interrupted, "
                                                          "failed, missing, no_npz"),
                                  ("report", _cmd_report, "evaluate, compare and write the report from the finished "
                                                          "runs, training nothing")):
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("study_file", help="the study file (TOML); `nnunet-losses study example` prints one")
        if name == "run":
            a.add_argument("--gpus", type=_gpus, metavar="0,1", help="local executor: one training per listed GPU at "
                                                                   "a time (overrides the study file)")
            a.add_argument("--executor", choices=("local", "slurm"), help="overrides the study file's executor")
            a.add_argument("--no_progress", action="store_true", help="no progress bar")
        a.set_defaults(func=func, user_errors=(StudyError, EvaluationError))
    a = actions.add_parser("example", help="print an example study file")
    a.set_defaults(func=_cmd_example)
