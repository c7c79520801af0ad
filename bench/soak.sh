#!/usr/bin/env bash
# Long-run check (a benchmark, not a test): gradcamd on two live RTSP streams for DURATION
# seconds, RSS sampled every 10 s, and DROPS network drops evenly spaced (the RTSP server is
# killed for DROP seconds and restarted) to time the reconnects and see what each one costs.
#
#   bench/soak.sh [DURATION_S=600] [DROP_S=5] [DROPS=1]   writes out/soak/{rss.tsv,metrics.txt,daemon.log}
#
# Needs scripts/setup.sh test (the RTSP server packages) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-600}
DROP=${2:-5}
DROPS=${3:-1}
OUT=out/soak
mkdir -p "$OUT"
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HTTP=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server() {
  /usr/bin/python3 scripts/rtsp_server.py --port "$PORT" --mount /line1 --video .deps/media/carphone_pristine.mp4 \
    --mount2 /line2 --video2 .deps/media/bikes.mp4 >"$OUT/rtsp.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do grep -q "ready.*line2" "$OUT/rtsp.log" 2>/dev/null && return; sleep 0.1; done
  echo "soak: RTSP server did not start" >&2; exit 1
}
cat >"$OUT/soak.toml" <<CFG
[live]
reconnect_initial_ms = 250
reconnect_max_ms = 2000
open_timeout_ms = 2000
read_timeout_ms = 2000
[pipeline]
batch_size = 4
batch_timeout_ms = 15
[http]
listen = "127.0.0.1:$HTTP"
[[source]]
name = "line1"
uri = "rtsp://127.0.0.1:$PORT/line1"
smoothing = 0.6
roi = [[0.25, 0.35], [0.75, 0.35], [0.75, 1.0], [0.25, 1.0]]
events = "$OUT/line1.jsonl"
events_every = 30
[[source]]
name = "line2"
uri = "rtsp://127.0.0.1:$PORT/line2"
events = "$OUT/line2.jsonl"
events_every = 30
CFG
rm -f "$OUT"/*.jsonl "$OUT/reconnect.txt"
server
target/release/gradcamd run --quiet --config "$OUT/soak.toml" 2>"$OUT/daemon.log" &
DAEMON=$!
trap 'kill $SERVER $DAEMON 2>/dev/null || true' EXIT
status() { curl -s "http://127.0.0.1:$HTTP/status.json"; }
printf "t_s\trss_mb\tprocessed_line1\tprocessed_line2\tdropped_line1\tdropped_line2\n" >"$OUT/rss.tsv"
start=$(date +%s)
dropped=0
while :; do
  t=$(( $(date +%s) - start ))
  (( t > DURATION )) && break
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$DAEMON/status)
  s=$(status || echo '[]')
  row=$(echo "$s" | /usr/bin/python3 -c 'import json,sys; v=json.load(sys.stdin) or [{},{}]; print("\t".join(str(x.get(k,0)) for k in ("processed","dropped") for x in v[:2]))' 2>/dev/null || echo "0	0	0	0")
  # reorder to processed1 processed2 dropped1 dropped2
  printf "%s\t%s\t%s\n" "$t" "$rss" "$row" >>"$OUT/rss.tsv"
  if (( dropped < DROPS && t >= DURATION * (dropped + 1) / (DROPS + 1) )); then
    dropped=$((dropped + 1))
    kill -9 $SERVER; wait $SERVER 2>/dev/null || true
    sleep "$DROP"
    server
    t0=$(date +%s.%N)
    until status | grep -q '"source":"line1","up":true' && status | grep -q '"source":"line2","up":true'; do sleep 0.1; done
    echo "reconnect_s $(echo "$(date +%s.%N) - $t0" | bc) (drop $dropped at t=$t s)" >>"$OUT/reconnect.txt"
  fi
  sleep 10
done
curl -s "http://127.0.0.1:$HTTP/metrics" >"$OUT/metrics.txt"
kill -TERM $DAEMON; wait $DAEMON || true
kill $SERVER 2>/dev/null || true
echo "== RSS (MB) every 10 s"; cut -f1,2 "$OUT/rss.tsv" | tr '\n' ' '; echo
cat "$OUT/reconnect.txt" 2>/dev/null || true
grep " done;" "$OUT/daemon.log" | sed 's/.*INFO //'
grep -E "^gradcamd_(frames_processed|frames_dropped|source_reconnects)_total" "$OUT/metrics.txt"
