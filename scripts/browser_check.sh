#!/usr/bin/env bash
# Proves, in Debian's headless Chromium, that a page of live MJPEG streams works:
#   (a) the page loads (navigation without error, HTTP status < 400, DOMContentLoaded), and
#   (b) its stream images show CHANGING frames: two screenshots INTERVAL s apart differ inside
#       every selected <img>'s box (and each image has decoded at least one frame).
#
#   scripts/browser_check.sh URL OUTDIR [SELECTOR]
#
# SELECTOR is a CSS selector for the stream images (default: img). Writes OUTDIR/shot1.png,
# OUTDIR/shot2.png, OUTDIR/chromium.log and a fresh profile OUTDIR/chromium-profile. Prints one
# line, `browser_check: ok ...` or `browser_check: FAIL ...`, and exits 0 (ok), 1 (check failed)
# or 2 (usage, or Chromium/DevTools did not come up). Hard limit about 20 s; Chromium's whole
# process group is killed at the end, whatever happened.
#
# How: an MJPEG stream keeps the page "loading" forever, so --screenshot/--virtual-time-budget is
# no use here (virtual time shows frame 0 every time). Chromium is driven over the DevTools
# protocol (--remote-debugging-port, on 127.0.0.1) by a small stdlib-only Python client; the two
# screenshots come from one live page, and ffmpeg's psnr filter compares their image regions.
#
# Environment: INTERVAL (s between shots, default 2), BROWSER_CHECK_TIMEOUT (s, default 16, for
# the DevTools part), CHROMIUM (default /usr/bin/chromium), BROWSER_CHECK_EVAL (a JavaScript
# expression run once the images show frames; the check fails unless it returns true, printing
# what it returned instead), BROWSER_CHECK_AFTER (the same, run after the second screenshot:
# what changed on the page in between), BROWSER_CHECK_STATIC=1 (a static page, such as a file://
# report: after the load event and the EVAL check, one screenshot, and the check fails on any
# request the page made other than itself and data: URLs; nothing is compared).
# Self-test against the mock page (no gradcamd needed):
#   /usr/bin/python3 scripts/mock_mjpeg_server.py --port 8095 &
#   scripts/browser_check.sh http://127.0.0.1:8095/ out/browser-selftest
set -uo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 URL OUTDIR [SELECTOR]" >&2
  exit 2
fi
URL=$1 OUTDIR=$2 SELECTOR=${3:-img}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
INTERVAL=${INTERVAL:-2}
LIMIT=${BROWSER_CHECK_TIMEOUT:-16}
for tool in "$CHROMIUM" /usr/bin/python3 ffmpeg; do
  command -v "$tool" >/dev/null || { echo "browser_check: FAIL missing $tool (scripts/setup.sh test)"; exit 2; }
done

mkdir -p "$OUTDIR"
PROFILE=$OUTDIR/chromium-profile
rm -rf "$PROFILE" "$OUTDIR/shot1.png" "$OUTDIR/shot2.png"
mkdir -p "$PROFILE"

# Its own session and process group (setsid; the Debian wrapper execs the real binary), so that
# everything it spawns is killed with it.
setsid "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --disable-extensions --disable-default-apps --mute-audio --hide-scrollbars \
  --remote-debugging-address=127.0.0.1 --remote-debugging-port=0 \
  --user-data-dir="$PROFILE" --window-size=1280,800 about:blank \
  >"$OUTDIR/chromium.log" 2>&1 </dev/null &
CPID=$!

alive() { # the main process runs (a zombie does not count)
  local st
  st=$(awk '{print $3}' "/proc/$CPID/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]
}
stop_chromium() {
  # The checker asked Chromium to close (Browser.close): let it reap its own helpers first.
  for _ in $(seq 15); do alive || break; sleep 0.1; done
  kill -TERM -- "-$CPID" 2>/dev/null || { wait "$CPID" 2>/dev/null; return 0; }
  # Then 2 s more, then KILL the whole group (helpers included).
  ( sleep 2; kill -KILL -- "-$CPID" 2>/dev/null ) >/dev/null 2>&1 </dev/null &
  local killer=$!
  wait "$CPID" 2>/dev/null
  kill -KILL -- "-$CPID" 2>/dev/null
  kill "$killer" 2>/dev/null
}
trap stop_chromium EXIT
trap 'exit 2' INT TERM

timeout -k 1 "$LIMIT" /usr/bin/python3 - "$URL" "$OUTDIR" "$SELECTOR" "$PROFILE" "$INTERVAL" <<'PY'
import base64, json, os, re, socket, struct, subprocess, sys, time, urllib.request

url, outdir, selector, profile, interval = sys.argv[1:6]
extra_check = os.environ.get("BROWSER_CHECK_EVAL", "")
static = os.environ.get("BROWSER_CHECK_STATIC", "") == "1"
after_check = os.environ.get("BROWSER_CHECK_AFTER", "")
interval = float(interval)
T0 = time.monotonic()


ws = None


def result(ok, msg, code=None):
    print(f"browser_check: {'ok' if ok else 'FAIL'} {msg}", flush=True)
    if ws is not None:
        try:  # a graceful close lets Chromium reap its helpers; the shell kills it anyway
            ws.send(json.dumps({"id": 999999, "method": "Browser.close"}))
        except OSError:
            pass
    sys.exit(0 if ok else (code or 1))


# --- DevTools endpoint: Chromium writes its port to DevToolsActivePort ---------------------------
port = None
while time.monotonic() - T0 < 10:
    try:
        with open(os.path.join(profile, "DevToolsActivePort")) as f:
            port = int(f.readline().strip())
            break
    except (OSError, ValueError):
        time.sleep(0.1)
if port is None:
    result(False, f"Chromium's DevTools did not come up in 10 s (see {outdir}/chromium.log)", 2)
t_up = time.monotonic() - T0
targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
page = next((t for t in targets if t.get("type") == "page"), None)
if page is None:
    result(False, "no page target in Chromium", 2)
ws_url = page["webSocketDebuggerUrl"]


# --- a minimal WebSocket client (RFC 6455: masked text frames out, any frames in) ----------------
class WS:
    def __init__(self, u):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", u)
        self.s = socket.create_connection((m.group(1), int(m.group(2))), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET {m.group(3)} HTTP/1.1\r\nHost: {m.group(1)}:{m.group(2)}\r\n"
                        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(4096)
            if not chunk:
                raise OSError("DevTools closed the connection during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise OSError(f"WebSocket handshake refused: {head[:80]!r}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise OSError("DevTools connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        hdr = bytes([0x80 | opcode])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.s.sendall(hdr + mask + body)

    def send(self, text):
        self._frame(0x1, text.encode())

    def recv(self, timeout):
        self.s.settimeout(max(0.05, timeout))
        data = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
            op = b0 & 0x0F
            if op == 0x9:
                self._frame(0xA, payload)  # pong
                continue
            if op == 0x8:
                raise OSError("DevTools closed the WebSocket")
            if op in (0x0, 0x1, 0x2):
                data += payload
                if b0 & 0x80:
                    return json.loads(data)


ws = WS(ws_url)
events, next_id = [], [0]


def call(method, timeout=5.0, **params):
    next_id[0] += 1
    mid = next_id[0]
    ws.send(json.dumps({"id": mid, "method": method, "params": params}))
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        try:
            if left <= 0:
                raise socket.timeout
            msg = ws.recv(left)
        except socket.timeout:
            raise TimeoutError(f"{method}: no answer in {timeout:g} s ({url})") from None
        if msg.get("id") == mid:
            if "error" in msg:
                raise RuntimeError(f"{method}: {msg['error'].get('message')}")
            return msg.get("result", {})
        if "method" in msg:
            events.append(msg)


def wait_event(name, timeout):
    end = time.monotonic() + timeout
    while True:
        for e in events:
            if e["method"] == name:
                return e
        left = end - time.monotonic()
        if left <= 0:
            return None
        try:
            msg = ws.recv(left)
        except socket.timeout:
            return None
        if "method" in msg:
            events.append(msg)


def evaluate(expr):
    r = call("Runtime.evaluate", expression=expr, returnByValue=True)
    if "exceptionDetails" in r:
        raise RuntimeError(f"page script failed: {r['exceptionDetails'].get('text')}")
    return r["result"].get("value")


def shot(path):
    data = call("Page.captureScreenshot", timeout=6, format="png")["data"]
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))


try:
    call("Page.enable")
    call("Runtime.enable")
    if static:
        call("Network.enable")
    t_nav = time.monotonic()
    nav = call("Page.navigate", timeout=8, url=url)
    if nav.get("errorText"):
        result(False, f"page did not load: {nav['errorText']} ({url})")
    # Not the load event: it may never fire while an MJPEG stream is loading.
    if wait_event("Page.domContentEventFired", 6) is None:
        result(False, f"page did not reach DOMContentLoaded in 6 s ({url})")
    t_dcl = time.monotonic() - t_nav
    info = evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return {title: document.title, status: n ? n.responseStatus : 0}; })()")
    if info["status"] and info["status"] >= 400:
        result(False, f"page answered HTTP {info['status']} ({url})")

    # Wait until every selected image has decoded a frame (naturalWidth > 0) and has a box.
    probe = ("Array.from(document.querySelectorAll(%s)).map((e, i) => { const r = e.getBoundingClientRect();"
             " return {name: e.id || e.getAttribute('alt') || ('#' + i), src: e.currentSrc || e.src || '',"
             " w: e.naturalWidth || 0, x: r.left, y: r.top, bw: r.width, bh: r.height}; })"
             % json.dumps(selector))
    dpr = evaluate("window.devicePixelRatio") or 1
    t_img, imgs = time.monotonic(), []
    while time.monotonic() - t_img < 6:
        imgs = evaluate(probe)
        if imgs and all(i["w"] > 0 and i["bw"] >= 2 and i["bh"] >= 2 for i in imgs):
            break
        time.sleep(0.2)
    if not imgs:
        result(False, f"page loaded (DOMContentLoaded {t_dcl:.2f} s) but has no {selector!r} element")
    bad = [i["name"] for i in imgs if not (i["w"] > 0 and i["bw"] >= 2 and i["bh"] >= 2)]
    if bad:
        result(False, f"page loaded but image(s) {', '.join(bad)} showed no frame within 6 s")
    t_first = time.monotonic() - t_img
    if extra_check:
        verdict = evaluate(extra_check)
        if verdict is not True:
            result(False, f"BROWSER_CHECK_EVAL did not return true: {json.dumps(verdict)[:300]}")

    shot1, shot2 = os.path.join(outdir, "shot1.png"), os.path.join(outdir, "shot2.png")
    if static:
        if wait_event("Page.loadEventFired", 6) is None:
            result(False, f"page did not reach its load event in 6 s ({url})")
        evaluate("1")  # drains the events that came before
        shot(shot1)
        asked = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
        outside = [u for u in asked if not u.startswith("data:") and u.split("#")[0] != url.split("#")[0]]
        if outside:
            result(False, f"the page made {len(outside)} request(s) beyond itself: {', '.join(outside[:5])}")
        result(True, f"static page loaded (title {info['title']!r}, DOMContentLoaded {t_dcl:.2f} s);"
               f" {len(imgs)} image(s) decoded; {len(asked)} request(s), all to itself or data: URLs;"
               f" screenshot {shot1}; total {time.monotonic() - T0:.1f} s")
    shot(shot1)
    time.sleep(interval)
    imgs2 = evaluate(probe)
    shot(shot2)
    if after_check:
        verdict = evaluate(after_check)
        if verdict is not True:
            result(False, f"BROWSER_CHECK_AFTER did not return true: {json.dumps(verdict)[:300]}")
except (OSError, TimeoutError, RuntimeError) as e:
    result(False, f"DevTools: {e}")

def box(i):
    return (i["x"], i["y"], i["bw"], i["bh"])


moved = [f"{a['name']} {box(a)} -> {box(b)}" for a, b in zip(imgs, imgs2) if box(a) != box(b)]
if moved or len(imgs) != len(imgs2):
    result(False, "the images moved between the two screenshots; cannot compare"
           f" (x, y, w, h in CSS px: {'; '.join(moved) or f'{len(imgs)} then {len(imgs2)} images'})")


# --- compare the image regions of the two screenshots with ffmpeg's psnr filter --------------------
def region_mse(img):
    x, y = int(img["x"] * dpr), int(img["y"] * dpr)
    w, h = int(img["bw"] * dpr), int(img["bh"] * dpr)
    x, y = max(0, x), max(0, y)
    crop = f"crop={w}:{h}:{x}:{y}"
    r = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-i", shot1, "-i", shot2, "-lavfi",
                        f"[0:v]{crop},format=rgb24[a];[1:v]{crop},format=rgb24[b];[a][b]psnr",
                        "-f", "null", "-"], capture_output=True, text=True, timeout=10)
    m = re.search(r"PSNR r:\S+ g:\S+ b:\S+ average:(\S+) min:\S+ max:\S+", r.stderr) or \
        re.search(r"average:(\S+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"ffmpeg could not compare region {crop}: {r.stderr.strip()[-200:]}")
    psnr = float("inf") if m.group(1) == "inf" else float(m.group(1))
    return w, h, x, y, psnr


parts, still = [], []
try:
    for img in imgs:
        w, h, x, y, psnr = region_mse(img)
        changed = psnr != float("inf")
        if not changed:
            still.append(img["name"])
        parts.append(f"{img['name']} {w}x{h}@{x},{y} {'changed' if changed else 'IDENTICAL'}"
                     f" (PSNR {psnr:.1f} dB)" if changed else f"{img['name']} {w}x{h}@{x},{y} IDENTICAL")
except (RuntimeError, subprocess.TimeoutExpired) as e:
    result(False, str(e))

summary = (f"page loaded (HTTP {info['status'] or '?'}, title {info['title']!r}, Chromium up {t_up:.1f} s,"
           f" DOMContentLoaded {t_dcl:.2f} s, first frames {t_first:.2f} s); {len(imgs)} image(s),"
           f" shots {interval:g} s apart: {'; '.join(parts)}; total {time.monotonic() - T0:.1f} s")
result(not still, summary)
PY
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "browser_check: FAIL timed out after ${LIMIT} s ($URL)"
  rc=1
fi
exit $rc
