"""The demo's decision-rule claim (nnunet_losses/research/decision_claim.py) on hand-made summaries."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_losses.research.decision_claim import CLAIM_RULES, claim_markdown, decision_claim


def summary(dice_by_rule, cases):
    rows = []
    for i, c in enumerate(cases):
        rows.append({"case": c, "decisions": {"1": {r: {"Dice": v[i]} for r, v in dice_by_rule.items()}}})
    return {"metric_per_case": rows, "decisions": {"mean": {"1": {}}}}


def test_claim_pairs_ce_rules_with_soft_dice_argmax_case_by_case():
    rng = np.random.default_rng(0)
    cases = [f"c{i}" for i in range(8)]
    ce = {r: rng.uniform(0.5, 0.9, 8) for r in CLAIM_RULES}
    sd = {r: rng.uniform(0.5, 0.9, 8) for r in CLAIM_RULES}
    ce["dice_optimal"][3] = np.nan  # dropped pairwise
    # case order differs between the summaries: pairing is by case name
    s_ce = summary(ce, cases)
    s_sd = summary(sd, cases)
    s_sd["metric_per_case"] = s_sd["metric_per_case"][::-1]
    r = decision_claim(s_ce, s_sd, n_boot=500)["1"]
    assert r["soft_dice_argmax"] == pytest.approx(sd["argmax"].mean())
    d = r["dice_optimal"]["vs_soft_dice_argmax"]
    ok = ~np.isnan(ce["dice_optimal"])
    assert d["n"] == 7 and d["mean_diff"] == pytest.approx((ce["dice_optimal"] - sd["argmax"])[ok].mean())
    assert "dice_optimal" in claim_markdown({"1": r})
