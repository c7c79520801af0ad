#!/usr/bin/env bash
# Builds .gpu-peer/ (ignored by git): wheels of pytorch-grad-cam and its small pure-Python
# dependencies, for the peer run on the GPU machine (PyTorch and numpy are already there;
# tools/gpu_peer.py puts these wheels on sys.path). Dev time only, needs PyPI: about 1 MB.
#   scripts/gpu-stage-peer.sh [PYTHON]     then carry .gpu-peer with .gpu-0 and .gpu-bin
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${GRADCAMD_DEV_PYTHON:-.venv/bin/python}}
rm -rf .gpu-peer && mkdir -p .gpu-peer
"$PY" -m pip wheel --quiet --no-deps -w .gpu-peer \
  grad-cam==1.5.7 ttach==0.0.3 tqdm==4.67.1 efficientnet-lite-pytorch==0.1.0
ls -l .gpu-peer
