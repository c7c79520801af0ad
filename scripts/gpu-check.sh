#!/usr/bin/env bash
# The GPU check of issue 6, in one go (estimated 2-4 minutes on an H100/H200: every batch size
# runs on fresh sessions). On the GPU machine, from the repo root, after
# `source .gpu-0/assemble.sh` (../shared/gpu/README.md), with .gpu-bin/ (scripts/gpu-stage-bin.sh)
# holding:
#   gradcamd     built here with --no-default-features --features cuda (the default model is
#                inside the binary)
#   frames.npy   real frames: gradcamd explain .deps/media/*.png .deps/media/rocket.jpg \
#                  --json /dev/null --save-input .gpu-bin/frames.npy
#   resnet50.onnx.xz + resnet50.toml (optional; random weights do not change speed): exported
#                by gpu-stage-bin.sh with a dev Python; when absent and python3 has torch and
#                onnx, tools/gpu_peer.py exports it there
# and .gpu-peer/ (scripts/gpu-stage-peer.sh): wheels of pytorch-grad-cam and its small
# dependencies, for the peer run on the same device (tools/gpu_peer.py peer).
# Prints the GPU, the provider really used, CAM agreement CUDA vs CPU on the real frames, and
# throughput at batch 1, 8, 32, 64 for forward, forward+gradients and forward+in-graph CAM.
# Full logs and JSON go to $OUT/gpu-check.tgz, the table to $OUT/table.txt (the device tool
# returns $OUT, at most 8 files).
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
# GPU memory: nvidia-smi sampled every 100 ms while a step runs; the peak of a bench is its
# batch-64 sessions (the largest batch, run last, each batch size on fresh sessions).
memwatch() { # name: starts the sampler
  MEMPID=
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/mem_$1.csv" 2>/dev/null &
  MEMPID=$!
}
memstop() { [ -n "${MEMPID:-}" ] && { kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; }; return 0; }
bench() { # name, extra args...
  local name=$1; shift
  echo "== throughput: $name"
  memwatch "$name"
  "$BIN" bench --provider "$PROVIDER" --batch-size "$BATCHES" --iters "$ITERS" --repeats 3 --in-graph-cam \
    --json "$OUT/bench_$name.json" "$@" 2>&1 | tee "$OUT/bench_$name.log" | grep -E "^batch|provider|error" || status=1
  memstop
}
PY_OK=0
python3 -c "import torch" 2>/dev/null && PY_OK=1
if [ ! -f .gpu-bin/resnet50.onnx ] && [ -f .gpu-bin/resnet50.onnx.xz ]; then
  python3 -c 'import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
    .gpu-bin/resnet50.onnx.xz .gpu-bin/resnet50.onnx
fi
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
  memwatch peer
  python3 tools/gpu_peer.py peer --out "$OUT/peer.json" --device "$peer_dev" --batches "$BATCHES" \
    --iters "${PEER_ITERS:-10}" 2>&1 | tee "$OUT/peer.log" | grep -E "^pytorch-grad-cam|Error" || status=1
  memstop
fi
echo "== table"
python3 - "$OUT" <<'PY' | tee "$OUT/table.txt" || status=1
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
for name in ("default", "resnet50", "peer"):
    p = os.path.join(out, f"mem_{name}.csv")
    if os.path.exists(p):
        vals = [int(v) for v in open(p).read().split() if v.strip().isdigit()]
        if vals:
            print(f"GPU memory used, {name}: idle {min(vals)} MiB, peak {max(vals)} MiB (batch 64 is the largest)")
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
# The device tool brings back at most 8 files from $OUT: the rest goes in one archive.
tar -C "$OUT" --exclude=table.txt -czf /tmp/gpu-check.tgz . && find "$OUT" -mindepth 1 ! -name table.txt -delete &&
  mv /tmp/gpu-check.tgz "$OUT/gpu-check.tgz"
exit $status
