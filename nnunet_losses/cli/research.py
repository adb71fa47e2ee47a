"""``nnunet-losses theory``, ``phantom`` and ``demo``: the volume-bias paper's theory, phantoms and experiment
(:mod:`nnunet_losses.research`)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nnunet_losses.cli.options import (COUNT, COUNT_OR_ZERO, DATASET_ID, FOLD, NON_NEGATIVE, POSITIVE,
                                       PROBABILITY, SEED, add_option)
from nnunet_losses.research import PAPER
from nnunet_losses.research.demo import DEFAULT_TRAINERS
from nnunet_losses.research.phantom import SIDECAR, VARIANTS
from nnunet_losses.research.theory import FIG1_MU, FIG1_N


# ----------------------------------------------------------------------------------------------------- theory
def _cmd_theory(args: argparse.Namespace) -> int:
    from nnunet_losses.research.theory import flip_threshold_limit, plot_figure1, summary_table
    n_values, mu_values = tuple(args.N), tuple(args.mu)
    print(f"{PAPER}, Sect. 2.2, exact expectations "
          f"(alpha: 100, p=0; beta: mu in N sub-regions, p; gamma: 1, p=1)")
    print(f"{'N':>4s} {'mu':>6s} {'flip p':>10s} {'max|dV_SD|':>11s} {'max|p^-p|':>10s}  SD optimum in {{0,1}}")
    for row in summary_table(n_values, mu_values):
        print(f"{row['N']:>4d} {row['mu']:>6g} {row['flip']:>10.6f} {row['max_abs_bias']:>11.4f} "
              f"{row['max_abs_uncertainty_error']:>10.4f}  {row['binary_optimum']}")
    for mu in mu_values:
        print(f"N -> inf, mu = {mu:g}: flip -> (sqrt(1+mu)-1)/mu = {flip_threshold_limit(mu):.6f}")
    print("CE: optimal p_hat = p for every N and mu (volume bias 0)")
    if args.o:
        out = plot_figure1(args.o, n_values=n_values, mu_values=mu_values, dpi=args.dpi)
        print(f"figure written to {out}")
    return 0


def _add_theory(subparsers) -> None:
    p = subparsers.add_parser(
        "theory", help=f"exact soft Dice vs CE volume-bias theory ({PAPER}, Sect. 2.2): table and Fig. 1",
        description="Prints, for every N (sub-regions) and mu (uncertain/certain volume ratio), the p at which the "
                    "soft-Dice-optimal prediction flips from 0 to 1 and the largest volume bias, all computed as "
                    f"exact expectations; optionally draws Fig. 1 of {PAPER} to a PNG.")
    add_option(p, "-o", old=("--output",), default=None, metavar="PNG",
               help="write Fig. 1 to this PNG (e.g. docs/figures/theory_fig1.png); default: no figure")
    add_option(p, "-N", old=("--n",), type=COUNT, nargs="+", default=list(FIG1_N),
               help="numbers of sub-regions (rows) [1 4 16]")
    p.add_argument("--mu", type=POSITIVE, nargs="+", default=list(FIG1_MU),
                   help="volume ratios mu (columns/colours) [0.25 1 4]")
    p.add_argument("--dpi", type=COUNT, default=80, help="PNG resolution [80]")
    p.set_defaults(func=_cmd_theory)


# ----------------------------------------------------------------------------------------------------- phantom
def _cmd_phantom(args: argparse.Namespace) -> int:
    import numpy as np
    from nnunet_losses.research.phantom import write_phantom_dataset
    raw = args.raw or os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("no raw folder: give --raw or set nnUNet_raw")
    out = write_phantom_dataset(raw, args.d, name=args.name, dim=args.dim, variant=args.variant, p=args.p,
                                n_subregions=args.N, mu=args.mu, n_cases=args.n_cases, shape=args.shape,
                                spacing=args.spacing, radius_range=args.radius, noise=args.noise,
                                blur=args.blur, seed=args.seed, n_raters=args.raters)
    meta = json.loads((out / SIDECAR).read_text())
    exp = [c["expected_volume_ml"] for c in meta["cases"].values()]
    ref = [c["reference_volume_ml"] for c in meta["cases"].values()]
    print(f"wrote {out}: {len(exp)} cases, mean expected volume {np.mean(exp):.4f} ml, "
          f"mean drawn reference volume {np.mean(ref):.4f} ml")
    if meta["theory"]:
        print(f"theory ({PAPER}): soft-Dice flip at p = {meta['theory']['flip_threshold']:.4f}; "
              f"SD-optimal p_hat = {meta['theory']['sd_optimal_p_hat']:.3g}, CE-optimal p_hat = {args.p:g}")
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.d} -c {'2d' if args.dim == 2 else '3d_fullres'} "
          f"--verify_dataset_integrity")
    return 0


def _add_phantom(subparsers) -> None:
    p = subparsers.add_parser(
        "phantom", help="write an nnU-Net raw dataset whose expected reference volumes are known exactly",
        description="Write Dataset{ID}_{NAME} into $nnUNet_raw (or --raw): images of a certain core, a ring of N "
                    "uncertain sub-regions (each drawn into the reference with probability p, independently per "
                    "case; all shown at the same intensity) and background, plus a sidecar phantom.json with every "
                    "case's expected and drawn volume and its probability map. Never overwrites a dataset.")
    p.add_argument("-d", type=DATASET_ID, required=True, metavar="ID", help="dataset id (1-999), required")
    p.add_argument("--name", default=None, help="dataset name [Phantom{Variant}{dim}D]")
    p.add_argument("--raw", default=None, help="nnU-Net raw folder [$nnUNet_raw]")
    p.add_argument("--dim", type=int, choices=(2, 3), default=2, help="2D (single-slice, default) or 3D images")
    p.add_argument("--variant", choices=VARIANTS, default="regions",
                   help="'regions' (default): N independent ring sectors; 'voxel': every voxel drawn from a blurred map")
    p.add_argument("-p", type=PROBABILITY, default=0.5,
                   help="probability that an uncertain sub-region is structure [0.5]")
    p.add_argument("-N", type=COUNT, default=4, help="number of independent uncertain sub-regions [4]")
    p.add_argument("--mu", type=POSITIVE, default=1.0, help="uncertain volume / certain core volume [1]")
    add_option(p, "--n_cases", old=("--n-cases",), type=COUNT, default=20, help="number of training cases [20]")
    p.add_argument("--shape", type=COUNT, nargs="+", default=None,
                   help="image size: H W (2D) or Z Y X (3D) [64 64 / 32 32 32]")
    p.add_argument("--spacing", type=POSITIVE, nargs="+", default=None,
                   help="voxel spacing in mm, array order: Y X or Z Y X (2D: Z is the slice thickness) [1 1 1]")
    p.add_argument("--radius", type=POSITIVE, nargs=2, default=(6.0, 10.0), metavar=("MIN", "MAX"),
                   help="core radius range in mm, uniform per case [6 10]")
    p.add_argument("--noise", type=NON_NEGATIVE, default=0.1, help="sd of the Gaussian image noise [0.1]")
    p.add_argument("--blur", type=NON_NEGATIVE, default=1.5,
                   help="voxel variant: sd (mm) of the probability map's blur [1.5]")
    p.add_argument("--seed", type=SEED, default=0, help="random seed [0]")
    p.add_argument("--raters", type=COUNT_OR_ZERO, default=0, metavar="K",
                   help="also write K >= 2 independent rater label maps per case into ratersTr/ (rater 0 = labelsTr), "
                        "the multi-rater format of the MultiRater trainers [0: none]")
    p.set_defaults(func=_cmd_phantom)


# ----------------------------------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_losses.research.demo import format_table, run_demo, verdict
    results = run_demo(args.workdir, p_values=args.p, n_subregions=args.N, mu=args.mu, n_cases=args.n_cases,
                       shape=args.shape, trainers=args.tr, epochs=args.epochs, iterations=args.iterations,
                       fold=args.f, device=args.device, n_boot=args.n_boot)
    print()
    print(format_table(results))
    print()
    for line in verdict(results):
        print(line)
    from nnunet_losses.research.decision_claim import claim_markdown
    for exp in results["experiments"]:
        if "decision_claim" in exp:
            print(f"\np = {exp['p']}: the CE model's decision rules vs the soft-Dice model's argmax (Dice, paired)")
            print(claim_markdown(exp["decision_claim"]))
    print(f"\nplot: {results['plot']}\nresults: {Path(args.workdir).resolve() / 'demo_results.json'}\n"
          f"wall time: {results['wall_time_s'] / 60:.1f} min")
    return 0


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help=f"reproduce the volume bias of soft Dice vs CE ({PAPER}) on phantoms with real nnU-Net runs",
        description=f"{PAPER}'s central result, from exact theory to a real nnU-Net experiment: two 2D phantoms, "
                    "nnUNetv2_plan_and_preprocess and nnUNetv2_train for each trainer, evaluation and a paired "
                    "comparison. Defaults run on a CPU in minutes; for the full-length experiment on a GPU use "
                    "e.g. -device cuda --epochs 100 --iterations 250 --n_cases 200 --shape 96 96.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default="nnunet_losses_demo", help="new folder for all data, models and results")
    p.add_argument("-p", nargs="+", type=PROBABILITY, default=[0.2, 0.8], help="inherent uncertainties to run")
    p.add_argument("-N", type=COUNT, default=4, help="number of uncertain sub-regions")
    p.add_argument("--mu", type=POSITIVE, default=1.0, help="uncertain volume relative to the certain core")
    add_option(p, "--n_cases", old=("--n-cases",), type=COUNT, default=50,
               help="phantom cases per dataset (fold 0 validates 1/5)")
    p.add_argument("--shape", type=COUNT, nargs=2, default=[48, 48], help="image size")
    add_option(p, "-tr", old=("--trainers",), nargs="+", default=list(DEFAULT_TRAINERS), metavar="TRAINER",
               help="trainers to compare")
    p.add_argument("--epochs", type=COUNT, default=10, help="epochs per training (NNUNET_LOSSES_EPOCHS)")
    p.add_argument("--iterations", type=COUNT, default=25, help="iterations per epoch (NNUNET_LOSSES_ITERATIONS)")
    add_option(p, "-f", old=("--fold",), type=FOLD, default=0, metavar="FOLD",
               help="cross-validation fold to train and validate")
    add_option(p, "-device", old=("--device",), default="cpu", choices=["cpu", "cuda", "mps"],
               help="nnUNetv2_train -device")
    add_option(p, "--n_boot", old=("--n-boot",), type=COUNT, default=10000,
               help="bootstrap resamples for the significance tests")
    p.set_defaults(func=_cmd_demo)


def add_subcommands(subparsers) -> None:
    _add_theory(subparsers)
    _add_phantom(subparsers)
    _add_demo(subparsers)
