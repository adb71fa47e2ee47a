#!/usr/bin/env python
"""Soft labels on a rater phantom, through real nnU-Net runs: soft Dice on soft targets vs DML on soft targets vs
CE on hard labels vs CE on soft targets, evaluated against the phantom's *known* probability map.

A 2D regions phantom (``nnunet-losses phantom``: certain core, ring of N sectors each drawn in with probability p,
K raters drawn independently; rater 0 is labelsTr) is planned with nnU-Net, each trainer is trained on fold 0
with the test suite's narrow network (``nnUNetPlansSmall``) and ``--npz``, and nnU-Net's validation
probabilities are evaluated with ``nnunet_losses.evaluation.soft_reference`` against ``probabilitiesTr/``:
expected-volume error of the soft and of the argmax volume, calibration error against the reference
probabilities, mean |p - y| on the uncertain ring, Brier, NLL. Writes ``study.json`` and a markdown table.

    .venv/bin/python scripts/rater_phantom_study.py --out /tmp/rater_study --epochs 20 --iterations 25 --parallel 2

An existing ``--out`` of this script is continued: runs with a ``checkpoint_final.pth`` are kept, the others
trained, then everything is evaluated.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP is many times slower on a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

#: (label in the table, trainer)
RUNS = [("soft Dice, soft targets (rater mean)", "nnUNetTrainer_MultiRaterMean_SoftDice"),
        ("DML, soft targets (rater mean)", "nnUNetTrainer_MultiRaterMean_DML"),
        ("CE, hard labels (rater 0)", "nnUNetTrainer_CEonly"),
        ("CE, soft targets (rater mean)", "nnUNetTrainer_MultiRaterMean_CEonly")]
DATASET_ID = 960
PLANS = "nnUNetPlansSmall"


def _run(cmd, env, log: Path):
    bin_dir = Path(sys.executable).parent
    with open(log, "w") as fh:
        proc = subprocess.run([str(bin_dir / cmd[0]), *map(str, cmd[1:])], env=env, stdout=fh,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed; see {log}")


def train_env(ws, args) -> dict:
    from nnunet_losses.trainers import trainer_path
    return ws.env(nnUNet_extTrainer=trainer_path(), OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, nnUNet_def_n_proc=1,
                  nnUNet_n_proc_DA="0", NNUNET_LOSSES_EPOCHS=str(args.epochs),
                  NNUNET_LOSSES_ITERATIONS=str(args.iterations), NNUNET_LOSSES_VAL_ITERATIONS="2")


def train_all(ws, args, trainers) -> None:
    """Train ``trainers`` on fold 0, ``args.parallel`` at a time (each trainer's log in the workspace)."""
    bin_dir = Path(sys.executable).parent
    env, pending, running = train_env(ws, args), list(trainers), []
    while pending or running:
        while pending and len(running) < args.parallel:
            trainer = pending.pop(0)
            fh = open(ws.root / f"train_{trainer}.log", "w")
            cmd = [str(bin_dir / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", trainer, "-p", PLANS,
                   "-device", "cpu", "--npz"]
            running.append((trainer, subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT), fh))
        for item in list(running):
            trainer, proc, fh = item
            if proc.poll() is not None:
                fh.close()
                running.remove(item)
                if proc.returncode:
                    raise SystemExit(f"training {trainer} failed; see {ws.root / f'train_{trainer}.log'}")
        time.sleep(2)


def evaluate_all(ws, raw: Path, out: Path, args) -> None:
    from nnunet_losses.evaluation.soft_reference import evaluate_soft_reference
    results = {"settings": vars(args), "runs": {}}
    for label, trainer in RUNS:
        val = ws.results / raw.name / f"{trainer}__{PLANS}__2d" / "fold_0" / "validation"
        res = evaluate_soft_reference(val, raw, kind="probabilities")
        results["runs"][trainer] = {"label": label, "mean": res["mean"], "per_case": res["per_case"]}
    (out / "study.json").write_text(json.dumps(results, indent=2))
    unit = results["runs"][RUNS[0][1]]["per_case"][0]["volume_unit"]
    v_ref = results["runs"][RUNS[0][1]]["mean"]["classes"]["1"]["expected_reference_volume"]
    lines = [f"Mean over the {len(results['runs'][RUNS[0][1]]['per_case'])} validation cases of fold 0; expected "
             f"reference volume {v_ref:.4f} {unit}.", "",
             f"| training | dV soft ({unit}) | dV argmax ({unit}) | calibration error vs reference | "
             f"mean p (mean y) on the uncertain ring | mean abs(p - y) there | soft Dice | Brier | NLL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for trainer, r in results["runs"].items():
        m, c = r["mean"], r["mean"]["classes"]["1"]
        lines.append(f"| {r['label']} | {c['dV_soft']:+.4f} | {c['dV_hard']:+.4f} | {c['calibration_error']:.4f} | "
                     f"{c['mean_p_uncertain']:.3f} ({c['mean_y_uncertain']:.3f}) | {c['mae_uncertain']:.3f} | "
                     f"{c['soft_dice']:.3f} | {m['brier']:.4f} | {m['nll']:.4f} |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="new folder for the nnU-Net workspace and the results "
                                                 "(an existing one of this script: train what is missing)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--parallel", type=int, default=1, help="trainings at a time [1]")
    ap.add_argument("--only", nargs="+", default=None, metavar="TRAINER",
                    help="train only these of the missing runs (e.g. while another process trains the rest)")
    ap.add_argument("--no_evaluation", action="store_true", help="train only")
    ap.add_argument("--raters", type=int, default=3)
    ap.add_argument("-p", type=float, default=0.3, help="probability of every ring sector [0.3]")
    ap.add_argument("--n_cases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import NnUNetWorkspace  # the test suite's narrow-network plans
    from nnunet_losses.research.phantom import write_phantom_dataset

    out = Path(args.out)
    ws = NnUNetWorkspace(out)
    raw = next(ws.raw.glob(f"Dataset{DATASET_ID:03d}_*"), None)
    if raw is None:
        raw = write_phantom_dataset(ws.raw, DATASET_ID, name="RaterStudy", dim=2, p=args.p, n_cases=args.n_cases,
                                    shape=(64, 64), n_raters=args.raters, seed=args.seed)
        _run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1", "-npfp", "1",
              "--verify_dataset_integrity"], ws.env(nnUNet_def_n_proc=1), out / "plan.log")
        ws.small_plans(DATASET_ID, PLANS)
    missing = [t for _, t in RUNS if not (ws.results / raw.name / f"{t}__{PLANS}__2d" / "fold_0" /
                                          "checkpoint_final.pth").is_file()]
    train_all(ws, args, [t for t in missing if args.only is None or t in args.only])
    if not args.no_evaluation:
        evaluate_all(ws, raw, out, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
