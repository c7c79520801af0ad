#!/usr/bin/env bash
# Self-test of the live-test harness, without gradcamd: the RTSP server (real clip, looping,
# SIGKILL + restart on the same port, SIGTERM exit 0) and the browser check against the mock
# MJPEG page (changing frames pass, a still stream fails). Needs `scripts/setup.sh test`.
# Loopback only; about 40 s. Prints one line per check, exits 0 when all pass.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-out/harness-selftest}
mkdir -p "$OUT"
fails=0 pids=()
ok() { echo "selftest: ok   $*"; }
bad() { echo "selftest: FAIL $*"; fails=$((fails + 1)); }
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT

start() { # LOG CMD... -> sets SP, URL (waits at most 10 s for the ready line)
  local log=$1; shift
  "$@" >"$log" 2>"$log.err" &
  SP=$!; pids+=("$SP"); URL=
  for _ in $(seq 100); do
    URL=$(awk '/^ready /{print $2; exit}' "$log" 2>/dev/null)
    [ -n "$URL" ] && return 0
    kill -0 "$SP" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

# --- RTSP ---------------------------------------------------------------------------------------
RTSP=(/usr/bin/python3 scripts/rtsp_server.py --mount /cam1 --video .deps/media/carphone_pristine.mp4)
if start "$OUT/rtsp.log" "${RTSP[@]}" --port 0; then
  port=${URL#rtsp://127.0.0.1:}; port=${port%%/*}
  info=$(timeout 10 ffprobe -v error -rtsp_transport tcp -select_streams v -show_entries stream=codec_name,width,height -of csv=p=0 "$URL")
  [ "$info" = "h264,176,144" ] && ok "ffprobe $URL: $info" || bad "ffprobe $URL: '$info'"
  # 10 s of stream = 2.5 laps of the 4 s clip: ~300 frames means it loops at the real rate.
  n=$(timeout 20 ffmpeg -nostdin -v error -rtsp_transport tcp -i "$URL" -t 10 -fps_mode passthrough -f framemd5 - | grep -vc '^#')
  [ "$n" -ge 290 ] && ok "read $n frames in 10 s of stream (clip: 120)" || bad "read $n frames in 10 s of stream"
  kill -KILL "$SP"; wait "$SP" 2>/dev/null
  if start "$OUT/rtsp2.log" "${RTSP[@]}" --port "$port"; then
    n=$(timeout 15 ffmpeg -nostdin -v error -rtsp_transport tcp -i "$URL" -frames:v 30 -f framemd5 - | grep -vc '^#')
    [ "$n" -eq 30 ] && ok "restarted on port $port after SIGKILL, read 30 frames" || bad "after restart read $n/30 frames"
    kill -TERM "$SP"; wait "$SP"; rc=$?
    [ $rc -eq 0 ] && ok "SIGTERM: exit 0" || bad "SIGTERM: exit $rc"
  else
    bad "no restart on port $port after SIGKILL: $(tail -1 "$OUT/rtsp2.log.err")"
  fi
else
  bad "rtsp_server did not start: $(tail -1 "$OUT/rtsp.log.err")"
fi

# --- browser ------------------------------------------------------------------------------------
if start "$OUT/mock.log" /usr/bin/python3 scripts/mock_mjpeg_server.py; then
  line=$(scripts/browser_check.sh "$URL" "$OUT/moving"); rc=$?
  [ $rc -eq 0 ] && ok "$line" || bad "changing stream: rc $rc: $line"
else
  bad "mock_mjpeg_server did not start"
fi
if start "$OUT/still.log" /usr/bin/python3 scripts/mock_mjpeg_server.py --still; then
  line=$(scripts/browser_check.sh "$URL" "$OUT/still"); rc=$?
  [ $rc -eq 1 ] && ok "still stream rejected: $line" || bad "still stream: rc $rc (want 1): $line"
else
  bad "mock_mjpeg_server --still did not start"
fi

[ $fails -eq 0 ] && echo "selftest: all passed" || echo "selftest: $fails failed"
exit $((fails > 0))
