#!/usr/bin/env bash
# Creates ./.venv and installs nnunet-losses with its test extras on a fresh machine (CPU is enough).
# torch/torchvision are pinned and installed first: with the CPU-only torch 2.13.0 wheel PyPI's torchvision
# cannot import ("operator torchvision::nms does not exist"), and nnU-Net's trainer lookup, which imports
# every trainer module (timm -> torchvision), then fails for every custom trainer. constraints.txt keeps
# those versions when nnU-Net and the project are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
log=$(mktemp)
pip_install() {  # quiet pip; on failure show its output (minus this machine's index-location noise) and stop
    if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" >&2 || true
        echo "setup.sh: pip install $* failed" >&2
        exit 1
    fi
}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install --upgrade pip
pip_install -c constraints.txt torch==2.14.1 torchvision==0.29.1
pip_install -c constraints.txt -e ".[test]"
rm -f "$log"
.venv/bin/python -c "import torch, torchvision, nnunetv2, nnunet_losses; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| nnunet_losses', nnunet_losses.__version__)"
