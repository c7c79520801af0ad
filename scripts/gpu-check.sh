#!/usr/bin/env bash
# The GPU check of issue 6, in one go (estimated 2-4 minutes on an H100/H200: every batch size
# runs on fresh sessions). On the GPU machine, from the repo root, after
# `source .gpu-0/assemble.sh` (../shared/gpu/README.md), with .gpu-bin/ (scripts/gpu-stage-bin.sh)
# holding:
#   gradcamd     built here with --no-default-features --features cuda (the default model is
#                inside the binary)
#   frames.npy   real frames: gradcamd explain .deps/media/*.png .deps/media/rocket.jpg \
#                  --json /dev/null --save-input .gpu-bin/frames.npy
#   resnet50.onnx + resnet50.toml (optional; random weights do not change speed); when absent
#                and python3 has torch, tools/gpu_peer.py exports it there (too big to carry)
# and .gpu-peer/ (scripts/gpu-stage-peer.sh): wheels of pytorch-grad-cam and its small
# dependencies, for the peer run on the same device (tools/gpu_peer.py peer).
# Prints the GPU, the provider really used, CAM agreement CUDA vs CPU on the real frames, and
# throughput at batch 1, 8, 32, 64 for forward, forward+gradients and forward+in-graph CAM.
# Full logs and JSON go to $OUT (the device tool returns it).
#
# Rehearse here on the CPU:  PROVIDER=cpu BIN=target/release/gradcamd FRAMES=out/frames.npy ITERS=2 scripts/gpu-check.sh
set -uo pipefail
BIN=${BIN:-.gpu-bin/gradcamd}
PROVIDER=${PROVIDER:-cuda}
FRAMES=${FRAMES:-.gpu-bin/frames.npy}
OUT=${OUT:-out/gpu-check}
ITERS=${ITERS:-20}
BATCHES=${BATCHES:-1,8,32,64}
mkdir -p "$OUT"
status=0
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" || echo "no nvidia-smi (CPU rehearsal)"
date -u +"%Y-%m-%dT%H:%M:%SZ" | tee -a "$OUT/gpu.txt"
echo "== CAM agreement, $PROVIDER vs cpu, on real frames"
"$BIN" compare --input "$FRAMES" --provider "$PROVIDER" --reference cpu --json "$OUT/compare.json" 2>&1 | tee "$OUT/compare.log" | grep -E "compare:|error" || status=1
bench() { # name, extra args...
  local name=$1; shift
  echo "== throughput: $name"
  "$BIN" bench --provider "$PROVIDER" --batch-size "$BATCHES" --iters "$ITERS" --repeats 3 --in-graph-cam \
    --json "$OUT/bench_$name.json" "$@" 2>&1 | tee "$OUT/bench_$name.log" | grep -E "^batch|error" || status=1
}
PY_OK=0
python3 -c "import torch" 2>/dev/null && PY_OK=1
if [ ! -f .gpu-bin/resnet50.onnx ] && [ $PY_OK = 1 ]; then
  echo "== exporting ResNet-50 (random weights) with this machine's PyTorch"
  python3 tools/gpu_peer.py export --out .gpu-bin/resnet50.onnx >"$OUT/export.log" 2>&1 || { tail -3 "$OUT/export.log"; status=1; }
fi
bench default
if [ -f .gpu-bin/resnet50.onnx ]; then
  bench resnet50 --model .gpu-bin/resnet50.onnx
fi
if [ $PY_OK = 1 ]; then
  echo "== pytorch-grad-cam on ${PEER_DEVICE:-$PROVIDER}"
  peer_dev=${PEER_DEVICE:-$PROVIDER}
  python3 tools/gpu_peer.py peer --out "$OUT/peer.json" --device "$peer_dev" --batches "$BATCHES" \
    --iters "${PEER_ITERS:-10}" 2>&1 | tee "$OUT/peer.log" | grep -E "^pytorch-grad-cam|Error" || status=1
fi
echo "== table"
python3 - "$OUT" <<'PY' || status=1
import json, os, sys
out = sys.argv[1]
c = json.load(open(os.path.join(out, "compare.json")))
print(f"provider {c['provider']} vs {c['reference']}: {c['frames']} frames, CAM corr min {c['cam_min_correlation']:.6f}, max abs diff {c['cam_max_abs_diff_rel']:.2e} rel, top-1 {c['top1_agree']}/{c['frames']}")
print(f"{'model':<10} {'batch':>5} {'forward':>10} {'fwd+grad':>10} {'in-graph CAM':>13}")
for name in ("default", "resnet50"):
    p = os.path.join(out, f"bench_{name}.json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    for e in r["engine"]:
        cam = e.get("in_graph_cam_fps") or 0
        print(f"{name:<10} {e['batch_size']:>5} {e['forward_fps']:>10.1f} {e['gradients_fps']:>10.1f} {cam:>13.1f}   ({r['provider']})")
pp = os.path.join(out, "peer.json")
if os.path.exists(pp):
    peer = json.load(open(pp))
    print(f"pytorch-grad-cam on {peer['device']} (torch {peer['torch']}{', cv2 stand-in' if peer['cv2_standin'] else ''}):")
    print(f"{'model':<10} {'batch':>5} {'peer fps':>10} {'gradcamd fwd+grad':>18} {'ratio':>7} {'in-graph CAM':>13} {'ratio':>7}")
    for row in peer["rows"]:
        p = os.path.join(out, f"bench_{row['model']}.json")
        if not os.path.exists(p):
            continue
        e = next((e for e in json.load(open(p))["engine"] if e["batch_size"] == row["batch_size"]), None)
        if e is None:
            continue
        cam = e.get("in_graph_cam_fps") or 0
        print(f"{row['model']:<10} {row['batch_size']:>5} {row['fps']:>10.1f} {e['gradients_fps']:>18.1f} {e['gradients_fps'] / row['fps']:>6.1f}x {cam:>13.1f} {cam / row['fps']:>6.1f}x")
PY
exit $status
