"""The console command's conventions, over every subcommand: validated numbers, exit statuses, one-line errors,
nnU-Net-style flags with the old spellings as hidden aliases."""
from __future__ import annotations

import argparse
import numbers
import os

import pytest

from nnunet_losses.cli import SUBCOMMAND_MODULES, build_parser, main
from nnunet_losses.cli.options import Number


def subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def options(sub: argparse.ArgumentParser):
    return [a for a in sub._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._StoreTrueAction))]


def is_numeric(default) -> bool:
    values = default if isinstance(default, (list, tuple)) else [default]
    return any(isinstance(v, numbers.Number) and not isinstance(v, bool) for v in values)


def test_every_subcommand_is_listed():
    assert set(subparsers()) == {c for commands in SUBCOMMAND_MODULES.values() for c in commands}


def test_every_numeric_option_is_validated():
    """An option with a numeric default or type takes the shared validating type (or a fixed set of choices)."""
    unvalidated = [f"{cmd} {a.option_strings[0]}" for cmd, sub in subparsers().items() for a in options(sub)
                   if (is_numeric(a.default) or a.type in (int, float)) and not isinstance(a.type, Number)
                   and not a.choices]
    assert not unvalidated, f"numeric options without a Number type: {unvalidated}"


def out_of_range(t: Number) -> str:
    if t.low is not None:
        return str(t.low if t.open_low else t.low - 1)
    return str(t.high if t.open_high else t.high + 1)


def numeric_options():
    return [(cmd, a) for cmd, sub in subparsers().items() for a in options(sub) if isinstance(a.type, Number)]


@pytest.mark.parametrize("cmd,action", numeric_options(), ids=lambda x: x if isinstance(x, str) else x.dest)
def test_invalid_numbers_are_usage_errors_naming_the_option(cmd, action, capsys):
    n = action.nargs if isinstance(action.nargs, int) else 1
    flag = action.option_strings[0]
    for bad in (out_of_range(action.type), "nan", "x"):
        with pytest.raises(SystemExit) as info:
            main([cmd, flag, *[bad] * n])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"nnunet-losses {cmd}: error: argument {flag}") and bad in err, err


def test_number_type_bounds():
    t = Number(float, 0, 1, open_low=True)
    assert t("1") == 1.0 and t("1e-9") == 1e-9
    for bad in ("0", "1.0000001", "-0.1"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\(0, 1\]"):
            t(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
        t("inf")
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer"):
        Number(int, low=1)("2.5")
    with pytest.raises(argparse.ArgumentTypeError, match=r"is not in \[0, 4294967295\]"):
        Number(int, low=0, high=2 ** 32 - 1)("4294967296")


def test_bad_input_is_exit_1_with_one_line(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "Dataset007_Taken").mkdir(parents=True)
    assert main(["phantom", "-d", "7", "--raw", raw, "--n_cases", "1"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet-losses phantom: error: ") and "Traceback" not in lines[0]
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset007_Taken"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_full_or_unwritable_output_is_exit_1_with_one_line(tmp_path, capsys):
    # /dev/full: every write fails with ENOSPC, as on a full disk
    assert main(["theory", "-N", "1", "--mu", "1", "-o", "/dev/full"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet-losses theory: error: ") and "space" in lines[0], lines
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a file where the output folder should be: no folder can be made below it
    assert main(["theory", "-N", "1", "--mu", "1", "-o", blocker / "fig.png"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a_file" in lines[0], lines


def test_options_that_do_not_go_together_are_exit_2(capsys):
    assert main(["evaluate", "-i", "x", "-d", "1", "-c", "2d", "-o", "out"]) == 2
    assert capsys.readouterr().err.strip() == "nnunet-losses evaluate: error: give either -i or -d/-c, not both"


@pytest.mark.parametrize("cmd,old,new", [
    (["convert", "drive", "src"], ["--id", "5", "--num-processes", "2", "--no-verify", "--exclude-flawed"],
     ["-d", "5", "-np", "2", "--no_verify", "--exclude_flawed"]),
    (["package", "kits19", "p", "o"], ["--reference", "r"], ["-ref", "r"]),
    (["phantom", "-d", "9"], ["--n-cases", "3"], ["--n_cases", "3"]),
    (["demo"], ["--n-cases", "6", "--n-boot", "7", "--trainers", "A", "B", "--fold", "1", "--device", "cuda"],
     ["--n_cases", "6", "--n_boot", "7", "-tr", "A", "B", "-f", "1", "-device", "cuda"]),
    (["theory"], ["--n", "2", "--output", "f.png"], ["-N", "2", "-o", "f.png"]),
])
def test_old_flag_spellings_are_hidden_aliases(cmd, old, new, capsys):
    parser = build_parser(cmd[0])
    assert vars(parser.parse_args(cmd + old)) == vars(parser.parse_args(cmd + new))
    with pytest.raises(SystemExit):
        parser.parse_args([cmd[0], "-h"])
    help_text = capsys.readouterr().out
    assert not [flag for flag in old if flag.startswith("--") and flag in help_text.split()]
    assert "exit status: 0 done; 1 bad input" in " ".join(help_text.split())


def test_long_flags_use_underscores():
    dashed = [f"{cmd} {s}" for cmd, sub in subparsers().items() for a in options(sub) for s in a.option_strings
              if s.startswith("--") and "-" in s[2:]]
    assert not dashed, dashed


@pytest.mark.parametrize("argv", [
    ["compare", "--alpha", "0"], ["compare", "--n_boot", "0"], ["compare", "--seed", "-1"],
    ["evaluate", "--bins", "0"], ["evaluate", "--eps", "0"], ["evaluate", "--thresholds", "1.5"],
    ["evaluate", "-np", "0"], ["threshold", "-t", "-0.1"], ["convert", "-d", "1000"],
    ["phantom", "-p", "1.5"], ["phantom", "-N", "0"], ["phantom", "--mu", "0"], ["phantom", "--noise", "-1"],
    ["phantom", "--blur", "-1"], ["phantom", "--shape", "0", "4"], ["demo", "-f", "5"], ["demo", "--epochs", "0"],
    ["theory", "--mu", "-1"], ["theory", "-N", "0"],
])
def test_values_the_tools_cannot_use_are_refused(argv, capsys):
    """The ranges themselves (the test above derives its bad values from each option's own range)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and f"argument {argv[1]}" in capsys.readouterr().err


def test_a_closed_pipe_is_not_reported_as_an_error():
    """`nnunet-losses losses | head -1`: the reader leaves early; no error message, no traceback."""
    import subprocess
    import sys
    code = "import sys; from nnunet_losses.cli import main; sys.exit(main(['losses', '-v']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # the reader leaves, as `head` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "error" not in err.lower() and "Traceback" not in err, err


def test_readme_describes_the_demo_as_it_runs():
    """The README's demo paragraph states the defaults the demo command really uses."""
    from pathlib import Path
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    d = build_parser("demo").parse_args(["demo"])
    assert f"{d.n_cases} cases of {d.shape[0]}×{d.shape[1]}" in readme
    assert f"{d.epochs} epochs × {d.iterations} iterations" in readme
    assert f"p = {d.p[0]} or p = {d.p[1]}" in readme and f"N = {d.N} uncertain" in readme
