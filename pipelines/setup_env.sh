#!/usr/bin/env bash
# One place that sets up a machine for offline-ssld: Debian's Fashion-MNIST and a fresh .venv
# with paddle and the pinned dependencies (constraints.txt). Used by the quick start and by CI.
#   bash pipelines/setup_env.sh [EXTRAS]      e.g. EXTRAS=test,bench
# Paddle is a prerequisite that setup.cfg does not name (docs/guide/install.md); PADDLE holds
# the pip arguments that install it, the CPU wheel of constraints.txt unless set, e.g. for CUDA
# 12.6 (not tested here: this machine has no GPU):
#   PADDLE="paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/" \
#     bash pipelines/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,bench}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

rm -rf .venv
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
# shellcheck disable=SC2086  # PADDLE is a list of pip arguments
.venv/bin/python -m pip install -q ${PADDLE:-paddlepaddle} -c constraints.txt 2>&1 \
  | grep -v -i warning || true
.venv/bin/python -m pip install -q -e ".[${extras}]" -c constraints.txt 2>&1 \
  | grep -v -i warning || true
.venv/bin/python -c "import numpy, pyarrow, h5py, paddle, paddleclas.ppcls.arch.backbone" \
  >/dev/null 2>&1 || { echo "setup: dependencies do not import together" >&2; exit 1; }
.venv/bin/python -c "import sys
from offline_ssld.prerequisites import PrerequisiteError, check_paddle
try: check_paddle()
except PrerequisiteError as exc: sys.exit(f'setup: {exc}')"
echo "setup: .venv ready ($(.venv/bin/python -c 'import paddle, numpy, pyarrow; print("paddle", paddle.__version__, "numpy", numpy.__version__, "pyarrow", pyarrow.__version__)'))"
