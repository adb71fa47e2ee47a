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
        assert r["dV_soft"]["n"] == 3 and r["one_minus_soft_dice"] >= 0
    table = demo.format_table(results)
    assert table.count("\n") == 1 + len(demo.DEFAULT_TRAINERS)
    assert len(demo.verdict(results)) == len(demo.DEFAULT_TRAINERS)
    assert (workdir / "demo_volume_bias.png").stat().st_size > 0
    assert json.loads((workdir / "demo_results.json").read_text())["experiments"][0]["p"] == 0.8
    with pytest.raises(FileExistsError):
        demo.run_demo(workdir, p_values=[0.8])


def test_demo_refuses_nonempty_workdir(tmp_path):
    (tmp_path / "something").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        demo.run_demo(tmp_path)
    assert (tmp_path / "something").read_text() == "user data"
