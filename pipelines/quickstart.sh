#!/usr/bin/env bash
# Quick start: set up, then run the Fashion-MNIST pipeline end to end on the quick preset
# (teacher, dump, offline student, the same student without the teacher as the baseline,
# eval, report): at most 10 minutes with the setup on 2 CPU cores. `small` is the longer run:
#   bash pipelines/quickstart.sh small
set -euo pipefail
cd "$(dirname "$0")/.."
bash pipelines/setup_env.sh
export GLOG_minloglevel=2
.venv/bin/python pipelines/fashion_mnist.py --preset "${1:-quick}"
