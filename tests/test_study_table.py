"""The study table's rows for the decision rules and the probabilistic volume read the right fields of
``evaluate``'s summary and carry ``compare``'s significance (a wrong rule, field or metric name fails here)."""
from __future__ import annotations

import math

from nnunet_losses.study.table import DECISION_ROWS, main_table

RULES = ("argmax", *DECISION_ROWS)


def _summary(offset: float) -> dict:
    """A summary of one class "1" whose every field holds a distinct number (rule i, field j -> offset + i + j/10)."""
    rules = {r: {"Dice": offset + i + 0.1, "abs_dV": offset + i + 0.2} for i, r in enumerate(RULES)}
    ba = {"bias": offset + 0.5, "loa_low": offset + 0.6, "loa_high": offset + 0.7}
    return {"mean": {"1": {"Dice": offset}}, "foreground_mean": {"Dice": offset}, "volume_unit": "ml",
            "decisions": {"mean": {"1": rules}},
            "volume": {"1": {"coverage_95": offset + 0.3, "CRPS_mean": offset + 0.4, "bland_altman_soft": ba,
                             "bland_altman_hard": {"bias": -1.0}}}}


def _row(table: dict, start: str) -> dict:
    found = [r for r in table["rows"] if r["label"].startswith(start)]
    assert len(found) == 1, [r["label"] for r in table["rows"]]
    return found[0]


def test_decision_rule_and_volume_rows_read_their_own_fields():
    paired = [{"model_a": "CE", "model_b": "SD", "metric": f"Dice[{rule}]", "class": "1", "mean_diff": -(i + 1.0),
               "ci_low": -9.0, "ci_high": -0.5, "p_bootstrap_holm": 0.001 * (i + 1), "p_wilcoxon_holm": 0.01}
              for i, rule in enumerate(DECISION_ROWS)]
    table = main_table({"CE": _summary(0.0), "SD": _summary(100.0)}, {"paired": paired, "alpha": 0.05}, "CE",
                       {"1": "tumour"})
    for i, (rule, name) in enumerate(DECISION_ROWS.items(), start=1):
        row = _row(table, f"Dice tumour, {name}")
        assert row["values"] == {"CE": i + 0.1, "SD": 100.0 + i + 0.1}
        assert row["metric"] == f"Dice[{rule}]" and row["significance"]["SD"]["mean_diff"] == -float(i)
    assert _row(table, "mean |hard dV| tumour, volume-matched")["values"]["SD"] == 100.0 + 4 + 0.2
    assert _row(table, "volume 95% interval coverage tumour")["values"] == {"CE": 0.3, "SD": 100.3}
    assert _row(table, "volume CRPS tumour")["values"]["SD"] == 100.4
    assert _row(table, "Bland-Altman bias, soft volume tumour")["values"]["CE"] == 0.5
    assert _row(table, "Bland-Altman 95% limits, soft volume tumour (ml), low")["values"]["SD"] == 100.6
    assert _row(table, "Bland-Altman 95% limits, soft volume tumour (ml), high")["values"]["SD"] == 100.7


def test_rows_of_an_evaluation_without_decisions_are_absent_not_zero():
    bare = {"mean": {"1": {"Dice": 0.5}}, "foreground_mean": {"Dice": 0.5}, "volume_unit": "ml"}
    table = main_table({"CE": bare}, {}, "CE", {"1": "tumour"})
    labels = [r["label"] for r in table["rows"]]
    assert not any("RankSEG" in lab or "CRPS" in lab or "Bland-Altman" in lab for lab in labels)
    assert not any(isinstance(v, float) and math.isnan(v) for r in table["rows"] for v in r["values"].values())
