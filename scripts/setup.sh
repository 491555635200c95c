#!/usr/bin/env bash
# Creates .venv (if missing) and installs shiftlab with everything it needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch/torchvision pinned to the releases this project is tested with (a CUDA build that also runs on CPU).
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
.venv/bin/python -c "import shiftlab, torch; print(f'shiftlab {shiftlab.__version__} ready (torch {torch.__version__})')"
