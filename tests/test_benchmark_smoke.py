"""benchmarks/bench_losses.py runs (--quick, CPU) and reports every loss in both training modes, with its peers.

Only that the script works is checked -- never a time or a memory figure.
"""
import re
import subprocess
import sys
from pathlib import Path

import nnunet_losses

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_losses.py"


def test_bench_losses_quick_prints_a_row_for_every_loss():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--no-output"],
                          capture_output=True, text=True, timeout=600, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = {(m.group(1), m.group(2)) for m in re.finditer(r"^\| (\S+) (?:\(\S+\) )?\| (label|region) \|",
                                                            proc.stdout, re.MULTILINE)}
    for mode in ("label", "region"):
        assert ("nnU-Net", mode) in rows, proc.stdout
        missing = [name for name in nnunet_losses.available_losses() if (name, mode) not in rows]
        assert not missing, f"no {mode} row for {missing}:\n{proc.stdout}"
    # the peers are timed in the same run: torch's CE is always there, so ce's row names a peer and a ratio to it
    for mode in ("label", "region"):
        ce_row = re.search(rf"^\| ce \| {mode} \|(.*)$", proc.stdout, re.MULTILINE).group(1).split("|")
        peer, peer_ms, ratio = (cell.strip() for cell in ce_row[4:7])
        assert peer.startswith(("torch", "nnU-Net")) and float(peer_ms) > 0 and float(ratio) > 0, ce_row
    assert "every loss <= its fastest peer" in proc.stdout and "every loss <= 1.0x nnU-Net's default" in proc.stdout
    assert "MONAI" in proc.stdout.split("\n", 1)[0]  # the header says whether MONAI's peers ran or were skipped
