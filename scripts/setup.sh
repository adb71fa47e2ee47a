#!/usr/bin/env bash
# Creates ./.venv and installs nnunet-losses with its test extras on a fresh machine (CPU is enough).
# torch/torchvision are pinned and installed first: with the CPU-only torch 2.13.0 wheel PyPI's torchvision
# cannot import ("operator torchvision::nms does not exist"), and nnU-Net's trainer lookup, which imports
# every trainer module (timm -> torchvision), then fails for every custom trainer.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, nnunetv2, nnunet_losses; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| nnunet_losses', nnunet_losses.__version__)"
