"""The README's demo command end to end, at the smallest setting (real nnU-Net plan/train/validate, CPU)."""
import json

import pytest

from nnunet_losses.research import demo


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "demo"
    results = demo.run_demo(workdir, p_values=[0.8], n_cases=15, shape=(32, 32), radius=(3.0, 5.0), epochs=1,
                            iterations=2, val_iterations=1, n_boot=200, quiet=True)
    (exp,) = results["experiments"]
    assert set(exp["trainers"]) == set(demo.DEFAULT_TRAINERS)
    assert exp["n_cases"] == 3  # fold 0 of nnU-Net's 5-fold split of 15 cases
    assert exp["theory"]["soft_dice_dV_ml"] > 0  # p = 0.8 is above the flip threshold: soft Dice over-estimates
    for r in exp["trainers"].values():
        assert r["dV_soft"]["n"] == 3 and 0 <= r["soft_dice_score"] <= 1
    table = demo.format_table(results)
    assert table.count("\n") == 1 + len(demo.DEFAULT_TRAINERS)
    assert len(demo.verdict(results)) == len(demo.DEFAULT_TRAINERS)
    assert (workdir / "demo_volume_bias.png").stat().st_size > 0
    assert json.loads((workdir / "demo_results.json").read_text())["experiments"][0]["p"] == 0.8
    claim = exp["decision_claim"]["1"]  # Nordstrom's claim, paired over the same validation cases
    assert claim["n_cases"] == 3 and claim["dice_optimal"]["vs_soft_dice_argmax"]["n"] <= 3
    with pytest.raises(FileExistsError):
        demo.run_demo(workdir, p_values=[0.8])


def test_demo_refuses_nonempty_workdir(tmp_path):
    (tmp_path / "something").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        demo.run_demo(tmp_path)
    assert (tmp_path / "something").read_text() == "user data"


def test_table_reports_the_soft_dice_score_as_the_papers_1_minus_sd():
    """The paper's Table 1 column "1 - SD" is the soft Dice *score* (SD is the loss, Eq. 6): the mean soft Dice the
    evaluation reports, not one minus it."""
    bias = {"mean": 0.01, "ci_low": 0.0, "ci_high": 0.02, "p_bootstrap_holm": 0.5, "bias": None, "n": 3}
    cmp = {"model_means": [{"model": "A", "class": "1", "metric": "soft_Dice", "mean": 0.9},
                           {"model": "A", "class": "1", "metric": "NLL", "mean": 0.05}],
           "volume_bias": [{"model": "A", "class": "1", "metric": m, **bias} for m in ("dV_soft", "dV")]}
    rows = demo._trainer_rows(cmp, ["A"])
    assert rows["A"]["soft_dice_score"] == 0.9
    results = {"experiments": [{"p": 0.2, "volume_unit": "ml", "trainers": rows,
                                "theory": {"soft_dice_dV_ml": -0.1, "ce_dV_ml": 0.0}}]}
    header, _, row = demo.format_table(results).splitlines()
    assert "1 - SD (soft Dice score)" in header and "| 0.9000 |" in row
