"""Subcommands ``nnunet-losses evaluate``, ``compare``, ``threshold`` and ``calibrate``
(:mod:`nnunet_losses.evaluation`).

Why three: ``evaluate`` is the expensive pass over every probability file of one model; ``compare`` only reads
the per-case tables of two or more evaluations (re-run it with other models or settings in seconds);
``threshold`` writes new label maps (a different kind of output, checked against nnU-Net's own export).
"""
from __future__ import annotations

import argparse

from nnunet_losses.cli.errors import UsageError
from nnunet_losses.cli.options import COUNT, OPEN_UNIT, POSITIVE, SEED, Number
from nnunet_losses.evaluation.accumulate import DEFAULT_BINS, DEFAULT_EPS, DEFAULT_THRESHOLDS
from nnunet_losses.evaluation.formatting import number as _fmt
from nnunet_losses.evaluation.stats import DEFAULT_N_BOOT, DEFAULT_SEED
from nnunet_losses.evaluation.surface import DEFAULT_TOLERANCE_MM

#: a label-map threshold (p > T): T = 1 would never predict anything
THRESHOLD = Number(float, low=0.0, high=1.0, open_high=True)

_INPUT_HELP = ("Input: a trainer folder (nnUNet_results/DatasetXXX_Name/Trainer__Plans__Configuration; every "
               "fold_N/validation is read), one or more fold folders of one trainer, or a prediction folder of "
               "nnUNetv2_predict --save_probabilities")


def _add_input_args(p: argparse.ArgumentParser, references: bool) -> None:
    g = p.add_argument_group("input (either -i, or -d/-c/-tr/-p to locate the trainer folder in nnUNet_results)")
    g.add_argument("-i", nargs="+", metavar="FOLDER",
                   help=_INPUT_HELP + (" (then -ref is required)." if references else "."))
    g.add_argument("-d", metavar="DATASET", help="dataset name or id (with -c): the trainer folder in nnUNet_results")
    g.add_argument("-c", metavar="CONFIGURATION", help="configuration, e.g. 3d_fullres (with -d)")
    g.add_argument("-tr", metavar="TRAINER", default="nnUNetTrainer", help="trainer class (with -d). Default: "
                                                                           "nnUNetTrainer")
    g.add_argument("-p", metavar="PLANS", default="nnUNetPlans", help="plans identifier (with -d). Default: nnUNetPlans")
    g.add_argument("-f", nargs="+", metavar="FOLD", help="only these folds (0 1 2 3 4 or all). Default: every numeric "
                                                          "fold_N present; fold_all only when asked for")
    if references:
        g.add_argument("-ref", metavar="FOLDER", help="reference segmentations. Default for trainer/fold folders: "
                                                     "nnUNet_preprocessed/<dataset>/gt_segmentations")
    g.add_argument("-djfile", metavar="FILE", help="dataset.json. Default: the one in the trainer/prediction folder")
    g.add_argument("-pfile", metavar="FILE", help="plans.json. Default: the one in the trainer/prediction folder")


def _add_run_options(p: argparse.ArgumentParser, *, workers: bool, plots: bool, progress: bool) -> None:
    """The options every evaluation subcommand shares: workers, overwriting, plots, progress bar."""
    if workers:
        p.add_argument("-np", type=COUNT, default=1, metavar="N", help="worker processes (cases in parallel). Default: 1")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    if plots:
        p.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    if progress:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _inputs(args) -> list:
    if args.i and args.d:
        raise UsageError("give either -i or -d/-c, not both")
    if args.i:
        return args.i
    if args.d and args.c:
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        try:
            return [get_output_folder(args.d, args.tr, args.p, args.c)]
        except (RuntimeError, ValueError) as e:
            from nnunet_losses.evaluation.errors import EvaluationError
            raise EvaluationError(f"cannot locate dataset {args.d} in nnUNet_results/nnUNet_raw/nnUNet_preprocessed "
                                  f"({e})") from None
    raise UsageError("an input is required: -i FOLDER, or -d DATASET -c CONFIGURATION [-tr TRAINER] [-p PLANS]")


def _user_errors() -> tuple:
    from nnunet_losses.evaluation.errors import EvaluationError
    return (EvaluationError,)


def _cmd_evaluate(args) -> int:
    from nnunet_losses.evaluation.evaluate import evaluate
    s = evaluate(_inputs(args), args.o, reference_folder=args.ref, folds=args.f, dataset_json=args.djfile,
                 plans=args.pfile, n_bins=args.bins, thresholds=args.thresholds, eps=args.eps, num_processes=args.np,
                 chill=args.chill, overwrite=args.overwrite, plots=not args.no_plots, progress=not args.quiet,
                 name=args.name, fixed_threshold=args.fixed_threshold, bands=args.bands,
                 surface_tolerance_mm=args.surface)
    if "calibration" not in s:  # label maps without probabilities: hard and surface metrics only
        fg = s["foreground_mean"]
        if "Dice" in fg:
            what = (f"(label maps, no probabilities): foreground mean Dice {_fmt(fg['Dice'])}, dV {_fmt(fg['dV'])} "
                    f"{s['volume_unit']}, HD95 {_fmt(fg['HD95'])} mm, NSD {_fmt(fg['NSD'])}")
        else:
            soft = ", soft (Poisson-binomial) where npz exist" if "V_mean" in fg else ""
            what = f"(no references): predicted volumes, hard{soft}"
        print(f"{s['n_cases']} cases of {s['name']} {what}")
        print(f"written to {s.get('output_folder', '(not written: no -o)')}")
        return 0
    cal = s["calibration"]["pooled"]
    print(f"{s['n_cases']} cases of {s['name']}: foreground mean Dice {_fmt(s['foreground_mean']['Dice'])}, "
          f"soft Dice {_fmt(s['foreground_mean']['soft_Dice'])}, dV {_fmt(s['foreground_mean']['dV'])} "
          f"{s['volume_unit']}; pooled NLL {_fmt(cal['NLL'])}, Brier {_fmt(cal['Brier'])}, top-label ECE "
          f"{_fmt(cal['top_label_ECE'])}, classwise ECE {_fmt(cal['classwise_ECE'])}")
    for k, e in s["threshold_sweep"]["per_class"].items():
        print(f"  class {k}: Dice {_fmt(s['mean'][k]['Dice'])} (NaN in {s['nan_counts'][k]['Dice']} of "
              f"{s['n_cases']} cases), best T {e['best_threshold']} -> Dice {_fmt(e['best_Dice_mean'])}")
    print(f"written to {s['output_folder']}")
    return 0


def _cmd_compare(args) -> int:
    from nnunet_losses.evaluation.compare import compare
    r = compare(args.i, args.o, names=args.names, n_boot=args.n_boot, seed=args.seed, alpha=args.alpha,
                common_cases=args.common_cases, overwrite=args.overwrite, plots=not args.no_plots)
    n_sig = sum(1 for x in r["paired"] if x["p_bootstrap_holm"] < args.alpha)
    biased = [f"{x['model']} {x['metric']} class {x['class']}: {x['bias']}" for x in r["volume_bias"] if x["bias"]]
    print(f"{len(r['models'])} models on {r['n_cases']} common cases: {n_sig} of {len(r['paired'])} paired "
          f"differences significant (Holm-adjusted bootstrap p < {args.alpha})")
    for b in biased:
        print(f"  volume bias: {b}")
    print(f"written to {r['output_folder']}")
    return 0


def _cmd_threshold(args) -> int:
    from nnunet_losses.evaluation.export import export_thresholded
    info = export_thresholded(_inputs(args), args.o, thresholds=args.t, best_from=args.best_from,
                              nnunet_rule=args.nnunet, decision_rule=args.rule, folds=args.f, dataset_json=args.djfile, plans=args.pfile,
                              num_processes=args.np, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{info['n_cases']} label maps ({info['rule']}"
          f"{', ' + str(info['thresholds']) if 'thresholds' in info else ''}) written to {info['output_folder']}")
    return 0


def _cmd_calibrate(args) -> int:
    if args.apply:
        from nnunet_losses.evaluation.calibrate import apply_calibration
        info = apply_calibration(args.apply, _inputs(args), args.o, folds=args.f, dataset_json=args.djfile,
                                 plans=args.pfile, overwrite=args.overwrite, progress=not args.quiet)
        print(f"{info['n_cases']} calibrated probability files ({info['method']} scaling) written to "
              f"{info['output_folder']}")
        return 0
    from nnunet_losses.evaluation.calibrate import calibrate
    r = calibrate(_inputs(args), args.o, method=args.method, reference_folder=args.ref, folds=args.f,
                  dataset_json=args.djfile, plans=args.pfile, per_label=args.per_label, seed=args.seed,
                  num_processes=args.np, overwrite=args.overwrite, plots=not args.no_plots, progress=not args.quiet)
    o = r["overall"]
    print(f"{r['n_cases']} cases, {args.method} scaling cross-fitted ({r['scheme']}): NLL {_fmt(o['NLL']['before'])}"
          f" -> {_fmt(o['NLL']['after'])}, classwise ECE {_fmt(o['classwise_ECE']['before'])} -> "
          f"{_fmt(o['classwise_ECE']['after'])}; "
          f"{100 * r['saturated_fraction']:.2f} % of the sampled voxels saturated")
    print(f"written to {r['output_folder']}")
    return 0


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="volume bias, overlap, calibration, threshold sweep of one model's probabilities (npz)",
        description="Evaluate one model's saved probabilities (nnUNetv2_train ... --npz, or nnUNetv2_predict "
                    "--save_probabilities) against the reference segmentations: Dice/IoU/soft Dice, volumes and "
                    "volume error (hard and soft, in ml), NLL, Brier, top-label/classwise/one-vs-rest ECE and "
                    "reliability diagrams, a threshold "
                    "sweep with the best threshold per class, Dice per reference-size decile. Writes "
                    "summary.json (nnU-Net's schema, extended), per_case.csv, threshold_sweep.csv, "
                    "size_deciles.csv, reliability.csv, summary.md and PNG plots into -o. "
                    "See docs/evaluation.md.")
    _add_input_args(p, references=True)
    p.add_argument("-o", required=True, metavar="FOLDER",
                   help="output folder (not inside nnU-Net's folders; created; existing files only replaced with "
                        "--overwrite)")
    p.add_argument("--bins", type=COUNT, default=DEFAULT_BINS, help="equal-width calibration bins (ECE, reliability). Default: 15")
    p.add_argument("--thresholds", type=OPEN_UNIT, nargs="+", default=list(DEFAULT_THRESHOLDS), metavar="T",
                   help="thresholds of the sweep (p > T). Default: 0.05 0.10 ... 0.95")
    p.add_argument("--eps", type=OPEN_UNIT, default=DEFAULT_EPS, help="NLL clips probabilities at eps: -log(max(p, eps)). Default: float32 machine epsilon "
                        "(1.19e-7, as scikit-learn's log_loss for float32)")
    p.add_argument("--fixed_threshold", type=OPEN_UNIT, default=0.5, metavar="T",
                   help="threshold of the decision rule fixed_T (p > T; added to the sweep). Default: 0.5")
    p.add_argument("--bands", action="store_true",
                   help="also FP/FN volume and ECE per distance band from the reference surface (0-1, 1-2, 2-4, "
                        ">4 mm inside and outside; a few distance transforms per case and class)")
    p.add_argument("--surface", type=POSITIVE, nargs="?", const=DEFAULT_TOLERANCE_MM, default=None, metavar="MM",
                   help="also HD95 and the normalized surface Dice at tolerance MM (default 1 mm) per case and class "
                        "of the probabilities' hard map (label-map folders always get them)")
    p.add_argument("--name", help="model name in outputs and comparisons. Default: the trainer/prediction folder name")
    p.add_argument("--chill", action="store_true",
                   help="prediction folder only: evaluate the predicted cases even if some references have none")
    _add_run_options(p, workers=True, plots=True, progress=True)
    p.set_defaults(func=_cmd_evaluate, user_errors=_user_errors())


def _add_compare(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="paired comparison of evaluated models (bootstrap CI/p, Wilcoxon, Holm; Table-1 style)",
        description="Compare two or more models of one dataset, evaluated with `nnunet-losses evaluate`, on the same cases: "
                    "per-model means with significant volume under-/over-estimation flagged, and for every pair "
                    "the mean difference with a bootstrap confidence interval and p-value and the Wilcoxon "
                    "signed-rank p-value for Dice, soft Dice, dV, |dV|, NLL, Brier and the ECEs, Holm-corrected "
                    "across classes. Writes comparison.md, comparison.csv, volume_bias.csv, comparison.json and "
                    "volume_error_per_trainer.png into -o.")
    p.add_argument("-i", nargs="+", required=True, metavar="EVALUATION",
                   help="evaluation output folders (or their summary.json), two or more")
    p.add_argument("-o", required=True, metavar="FOLDER",
                   help="output folder (not one of the evaluations, not inside nnU-Net's folders)")
    p.add_argument("--names", nargs="+", help="model names, one per input. Default: the names stored by evaluate")
    p.add_argument("--n_boot", type=COUNT, default=DEFAULT_N_BOOT, help="bootstrap resamples. Default: 10000")
    p.add_argument("--seed", type=SEED, default=DEFAULT_SEED, help="bootstrap seed. Default: 0")
    p.add_argument("--alpha", type=OPEN_UNIT, default=0.05, help="significance level (after Holm). Default: 0.05")
    p.add_argument("--common_cases", action="store_true",
                   help="compare on the cases common to all evaluations instead of refusing different case sets")
    _add_run_options(p, workers=False, plots=True, progress=False)
    p.set_defaults(func=_cmd_compare, user_errors=_user_errors())


def _add_threshold(subparsers) -> None:
    p = subparsers.add_parser(
        "threshold",
        help="write thresholded label maps in the original geometry (challenge submission)",
        description="Turn saved probabilities into label maps with per-class thresholds and write them with the "
                    "dataset's reader/writer and each case's .pkl properties (spacing, origin, direction as "
                    "nnU-Net's own export). --nnunet reproduces nnU-Net's export voxel for voxel. Writes "
                    "<case><file_ending> files, thresholds.json and the model's dataset.json (read by "
                    "`nnunet-losses package`) into -o; with --overwrite, maps an earlier run wrote for cases no "
                    "longer in the run are removed.")
    _add_input_args(p, references=False)
    p.add_argument("-o", required=True, metavar="FOLDER",
                   help="output folder (not inside nnU-Net's folders nor the folders read)")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("-t", type=THRESHOLD, nargs="+", metavar="T",
                      help="one threshold for all classes, or one per class in dataset.json order (p > T)")
    rule.add_argument("--best_from", metavar="EVALUATION",
                      help="use the best threshold per class of this evaluation's sweep (folder or summary.json); "
                           "it must be of the same dataset and model")
    rule.add_argument("--nnunet", action="store_true", help="nnU-Net's own rule (argmax / p > 0.5 for regions)")
    rule.add_argument("--rule", choices=("dice_optimal", "rankseg_rma", "volume_matched"),
                      help="a decision rule per class and case (docs/evaluation.md): Nordstrom's Dice-optimal "
                           "threshold, RankSEG-RMA, or the top round(sum p) voxels")
    _add_run_options(p, workers=True, plots=False, progress=True)
    p.set_defaults(func=_cmd_threshold, user_errors=_user_errors())


def _add_calibrate(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="cross-fitted post-hoc calibration (temperature / vector / Dirichlet) of saved probabilities",
        description="Fit a calibration map on log-probabilities by NLL, cross-fitted: each fold's cases are "
                    "calibrated by a map fitted on the other folds only (five groups of cases without folds). "
                    "Writes calibrated npz into -o/calibrated (never into nnU-Net's folders), before/ and after/ "
                    "evaluations, calibration.md, calibration_summary.json and calibration.json (the map fitted "
                    "on all cases). With --apply calibration.json, -i is a folder of nnUNetv2_predict "
                    "--save_probabilities output and only the calibrated npz are written. See docs/evaluation.md.")
    _add_input_args(p, references=True)
    p.add_argument("-o", required=True, metavar="FOLDER", help="output folder (not inside nnU-Net's folders)")
    p.add_argument("--method", choices=("temperature", "vector", "dirichlet"), default="temperature",
                   help="calibration map. Default: temperature")
    p.add_argument("--apply", metavar="CALIBRATION_JSON", help="apply a fitted calibration.json to -i instead")
    p.add_argument("--per_label", type=COUNT, default=4000, metavar="N",
                   help="voxels sampled per reference label and case for the fit. Default: 4000")
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed. Default: 0")
    _add_run_options(p, workers=True, plots=True, progress=True)
    p.set_defaults(func=_cmd_calibrate, user_errors=_user_errors())


def add_subcommands(subparsers) -> None:
    for add in (_add_evaluate, _add_compare, _add_threshold, _add_calibrate):
        add(subparsers)
