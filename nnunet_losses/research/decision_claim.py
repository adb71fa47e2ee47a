"""Nordström's claim, measured: a CE-trained model's probabilities + the Dice-optimal rule reach at least the Dice
of a soft-Dice-trained model's argmax (Nordström et al., marginal thresholding).

From two ``evaluate`` summaries of the same cases (e.g. the demo's ``nnUNetTrainer_CEonly`` and
``nnUNetTrainer_SoftDice`` evaluations): per class, the mean Dice of every decision rule of the CE model, the
soft-Dice model's argmax Dice, and the paired difference (CE rule - soft Dice argmax) per case with a bootstrap
interval and p-value and the Wilcoxon p-value (:func:`nnunet_losses.evaluation.stats.paired`).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from nnunet_losses.evaluation.stats import DEFAULT_N_BOOT, DEFAULT_SEED, paired

CLAIM_RULES = ("argmax", "dice_optimal", "rankseg_rma", "volume_matched", "best_T_crossfit")


def _per_case(summary: dict, cases: Sequence[str], key: str, rule: str) -> np.ndarray:
    by = {c["case"]: c for c in summary["metric_per_case"]}
    return np.array([by[c]["decisions"][key][rule]["Dice"] for c in cases], dtype=np.float64)


def decision_claim(ce: dict, soft_dice: dict, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED,
                   alpha: float = 0.05) -> Dict[str, dict]:
    """``{key: {"soft_dice_argmax": mean, rule: {mean, diff (paired stats vs soft Dice argmax)}}}``."""
    cases = sorted({c["case"] for c in ce["metric_per_case"]} & {c["case"] for c in soft_dice["metric_per_case"]})
    if not cases:
        raise ValueError("the two evaluations have no case in common")
    out = {}
    for key in ce["decisions"]["mean"]:
        sd = _per_case(soft_dice, cases, key, "argmax")
        entry = {"n_cases": len(cases), "soft_dice_argmax": float(np.nanmean(sd))}
        for rule in CLAIM_RULES:
            v = _per_case(ce, cases, key, rule)
            entry[rule] = {"mean": float(np.nanmean(v)), "vs_soft_dice_argmax": paired(sd, v, n_boot, seed, alpha)}
        out[key] = entry
    return out


def claim_markdown(result: Dict[str, dict]) -> str:
    lines = ["| class | soft Dice model, argmax | CE model, rule | Dice | CE rule - SD argmax (95% CI) | p bootstrap |"
             " p Wilcoxon |", "|---|---|---|---|---|---|---|"]
    for key, e in result.items():
        for rule in CLAIM_RULES:
            d = e[rule]["vs_soft_dice_argmax"]
            lines.append(f"| {key} | {e['soft_dice_argmax']:.4f} | {rule} | {e[rule]['mean']:.4f} | "
                         f"{d['mean_diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | {d['p_bootstrap']:.3g} | "
                         f"{d['p_wilcoxon']:.3g} |")
    return "\n".join(lines) + "\n"
