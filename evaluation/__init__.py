"""Evaluation of nnU-Net predictions (installed as ``nnunet_losses.evaluation``); see docs/evaluation.md.

>>> from nnunet_losses.evaluation import evaluate, compare, export_thresholded
>>> s = evaluate("nnUNet_results/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres", "eval/ce")
>>> s["mean"]["1"]["dV"], s["calibration"]["pooled"]["top_label_ECE"]
>>> s["threshold_sweep"]["per_class"]["1"]["best_threshold"]
>>> compare(["eval/ce", "eval/dice"], "eval/ce_vs_dice")
>>> export_thresholded("nnUNet_results/.../fold_0", "submission", best_from="eval/ce")

The building blocks work on arrays too: :func:`accumulate_case` reduces one case's probabilities and reference
to fixed-size statistics, :func:`case_metrics` turns them into metrics.
"""
from nnunet_losses.evaluation.accumulate import DEFAULT_BINS, DEFAULT_EPS, DEFAULT_THRESHOLDS, BinGrid, CaseStats, accumulate_case
from nnunet_losses.evaluation.compare import compare
from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.evaluate import evaluate
from nnunet_losses.evaluation.export import export_thresholded
from nnunet_losses.evaluation.metrics import case_metrics
from nnunet_losses.evaluation.spec import TaskSpec

__all__ = ["evaluate", "compare", "export_thresholded", "accumulate_case", "case_metrics", "BinGrid", "CaseStats",
           "TaskSpec", "EvaluationError", "DEFAULT_BINS", "DEFAULT_EPS", "DEFAULT_THRESHOLDS"]
