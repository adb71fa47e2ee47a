"""The study's own overhead -- everything but nnU-Net's training -- against doing the same by hand.

Run from the repository root, on a study whose trainings are finished (nnUNet_raw/preprocessed/results set)::

    .venv/bin/python benchmarks/bench_study.py --study my_study.toml [--reps 3]

What is measured, each repetition running every variant once in a rotating order (the machine may be shared),
medians reported:

* **by hand**: ``evaluate`` of every trainer over the study's folds + one ``compare`` of all of them, written to a
  temporary folder -- what a user would otherwise script;
* **study, cold**: ``run_study`` with nothing to train and no cached evaluation: the run states, the same
  evaluations and comparison, plus the report (table, five figures, report.md/html/json);
* **study, warm**: ``run_study`` again with nothing changed (evaluations reused: their inputs' sizes and mtimes
  are unchanged), i.e. comparison + report;
* **study status**: reading every run's state.

The ratios are against "by hand" measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from timing import print_ratio_table, time_variants  # benchmarks/timing.py, beside this script


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, type=Path, help="a study file whose trainings are all finished")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    from nnunet_losses.evaluation import compare, evaluate
    from nnunet_losses.study import load_study, run_study, study_status
    from nnunet_losses.study.pipeline import complete_folds
    from nnunet_losses.study.runs import trainer_folder

    study = load_study(a.study)
    statuses = study_status(study)
    folds = complete_folds(study, statuses)
    if folds != study.folds:
        sys.exit(f"{a.study}: not every training is finished (folds done by all trainers: {folds}); run the study")
    scratch = Path(tempfile.mkdtemp(prefix="bench_study_"))

    def by_hand():
        out = scratch / f"hand_{time.perf_counter_ns()}"
        for t in study.trainers:
            evaluate(trainer_folder(study, t), out / t, folds=folds, name=t)
        compare([out / t for t in study.trainers], out / "comparison", names=study.trainers, n_boot=study.n_boot)

    def cold():
        for stamp in (study.folder / "evaluation").glob(".*.inputs.json"):
            stamp.unlink()
        run_study(study, progress=False)

    variants = {"by hand (evaluate x trainers + compare)": by_hand, "study, cold": cold,
                "study, warm (nothing changed)": lambda: run_study(study, progress=False),
                "study status": lambda: study_status(study)}
    medians = time_variants(variants, a.reps)
    print(f"study {a.study}: {len(study.trainers)} trainers x {len(folds)} folds, "
          f"{study.n_boot} bootstrap resamples, {a.reps} repetitions (medians)")
    print_ratio_table(medians, "by hand")
    return 0


if __name__ == "__main__":
    sys.exit(main())
