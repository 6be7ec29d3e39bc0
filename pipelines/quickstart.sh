#!/usr/bin/env bash
# Quick start: set up, then run the Fashion-MNIST pipeline end to end on the small preset
# (teacher, dump, offline student, the same student without the teacher as the baseline,
# eval, report).
set -euo pipefail
cd "$(dirname "$0")/.."
bash pipelines/setup_env.sh
export GLOG_minloglevel=2
.venv/bin/python pipelines/fashion_mnist.py --preset "${1:-small}"
