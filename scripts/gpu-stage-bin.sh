#!/usr/bin/env bash
# Stages the engine for the GPU machine (../shared/gpu/README.md, step 2) in a fresh .gpu-bin/:
# gradcamd built with CUDA and without OpenCV, and real preprocessed frames for the CUDA-vs-CPU
# comparison. Starts from an empty folder: a CPU rehearsal of scripts/gpu-check.sh leaves its
# 100 MB ResNet-50 export there, more than one 64 MiB transfer holds.
#
#   make build && scripts/gpu-stage-bin.sh && scripts/gpu-stage-peer.sh
#   then carry .gpu-1 … .gpu-5 one per call, and .gpu-0 + .gpu-bin + .gpu-peer with
#   `source .gpu-0/assemble.sh && scripts/gpu-check.sh`
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/gradcamd ] || { echo "gpu-stage-bin: run make build first (it saves the frames)" >&2; exit 1; }
rm -rf .gpu-bin
mkdir -p .gpu-bin
cargo build --release --no-default-features --features cuda --target-dir target/cuda
cp target/cuda/release/gradcamd .gpu-bin/gradcamd
strip .gpu-bin/gradcamd 2>/dev/null || true
target/release/gradcamd explain .deps/media/*.png .deps/media/rocket.jpg --json /dev/null \
  --save-input .gpu-bin/frames.npy
# ResNet-50 with random weights, exported here when a dev Python with torch and onnx is at hand
# (GRADCAMD_DEV_PYTHON): one random block repeated per tensor, so that xz shrinks it to ~1 MB.
# Without it, gpu-check.sh exports it on the GPU machine, which needs onnx there.
PY=${GRADCAMD_DEV_PYTHON:-.venv/bin/python}
if [ -x "$PY" ] && "$PY" -c "import torch, onnx" 2>/dev/null; then
  "$PY" tools/gpu_peer.py export --compressible --out .gpu-bin/resnet50.onnx
  xz -9 -T0 .gpu-bin/resnet50.onnx
fi
# The last transfer carries the working tree, .gpu-0 (about 8 MB once staged), .gpu-bin and
# .gpu-peer: it must stay under 64 MiB.
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
staged=$( (du -sb .gpu-bin .gpu-peer .gpu-0 2>/dev/null || true) | awk '{s += $1} END {print s + 0}')
[ -d .gpu-0 ] || staged=$((staged + 8 * 1024 * 1024))
total=$(( (tree + staged) / 1024 / 1024 ))
echo "gpu-stage-bin: .gpu-bin: $(ls .gpu-bin | tr '\n' ' '); the last transfer: ${total} MiB of 64"
if [ "$total" -ge 62 ]; then
  echo "gpu-stage-bin: the last transfer would not fit in 64 MiB" >&2
  exit 1
fi
