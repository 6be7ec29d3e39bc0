#!/usr/bin/env bash
# One place that sets up a machine for offline-ssld: Debian's Fashion-MNIST and a fresh .venv
# with the pinned dependencies (see setup.cfg). Used by the quick start and by CI.
#   bash pipelines/setup_env.sh [EXTRAS]      e.g. EXTRAS=test,bench
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
.venv/bin/python -m pip install -q -e ".[${extras}]" 2>&1 | grep -v -i warning || true
.venv/bin/python -c "import numpy, pyarrow, h5py, paddle, paddleclas.ppcls.arch.backbone" \
  >/dev/null 2>&1 || { echo "setup: dependencies do not import together" >&2; exit 1; }
echo "setup: .venv ready ($(.venv/bin/python -c 'import paddle, numpy, pyarrow; print("paddle", paddle.__version__, "numpy", numpy.__version__, "pyarrow", pyarrow.__version__)'))"
