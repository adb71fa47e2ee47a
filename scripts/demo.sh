#!/usr/bin/env bash
# The README's demo command: set up ./.venv (scripts/setup.sh), then run `nnunet-losses demo` -- Bertels et al. 2020's
# volume bias (soft Dice vs cross-entropy) on phantoms with low (p = 0.2) and high (p = 0.8) inherent
# uncertainty, with real nnU-Net plan/train/validation runs on the CPU. Extra arguments go to the demo
# (see `.venv/bin/nnunet-losses demo -h`, e.g. -device cuda --epochs 100 for the full-length experiment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workdir="demo_$(date +%Y%m%d_%H%M%S)"
exec .venv/bin/nnunet-losses demo --workdir "$workdir" "$@"
