#!/usr/bin/env bash
# `make bench`: gradcamd (engine floor + file-to-file pipeline) and pytorch-grad-cam (the same
# model, frames and batch size, end to end) on the sample clips, side by side, on this machine.
# The peer needs the dev venv (tools/README.md); without it only gradcamd is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/gradcamd
PY=${GRADCAMD_DEV_PYTHON:-.venv/bin/python}
OUT=out/bench
# pytorch-grad-cam's batch size (its best on this machine); gradcamd's pipeline runs at its
# own default and its engine table covers 1-16 (set BATCH=a,b,... to choose).
PEER_BATCH=${PEER_BATCH:-8}
batch=()
[ -n "${BATCH:-}" ] && batch=(--batch-size "$BATCH")
mkdir -p "$OUT"
peer=1
if ! [ -x "$PY" ] || ! "$PY" -c "import pytorch_grad_cam, torch" 2>/dev/null; then
  echo "bench: no dev Python with torch + grad-cam at $PY; measuring gradcamd only (see tools/README.md)" >&2
  peer=0
fi
for clip in carphone_pristine bikes; do
  video=.deps/media/$clip.mp4
  echo "== $clip: gradcamd" >&2
  profile=()
  [ "$clip" = carphone_pristine ] && profile=(--profile "$OUT/ort_profile")
  "$BIN" bench --video "$video" "${batch[@]}" --repeats "${REPEATS:-5}" "${profile[@]}" --json "$OUT/gradcamd_$clip.json"
  if [ $peer = 1 ]; then
    echo "== $clip: pytorch-grad-cam" >&2
    "$PY" bench/pytorch_gradcam_bench.py --video "$video" --batch-size "$PEER_BATCH" --out "$OUT/pgc_$clip.mp4" >"$OUT/pgc_$clip.json"
  fi
done
python3 bench/table.py "$OUT"
