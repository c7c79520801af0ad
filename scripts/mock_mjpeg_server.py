#!/usr/bin/python3
"""Mock of gradcamd's live page, for the self-test of scripts/browser_check.sh.

    /usr/bin/python3 scripts/mock_mjpeg_server.py [--port PORT] [--fps 10] [--still]

Standard library only (plus the ffmpeg binary, once, to make the JPEGs). Binds 127.0.0.1 only.

    /               a small HTML page with one <img id="s0">; its src is set from JavaScript
                    after DOMContentLoaded (an MJPEG stream that is loading keeps the page's
                    load event from ever firing), like the daemon's page
    /stream/cam1    multipart/x-mixed-replace JPEG frames at --fps, content changing every frame
                    (ffmpeg's testsrc2 pattern, 64 frames looped: 6.4 s at 10 fps); with --still,
                    the same frame over and over (the negative self-test: browser_check must FAIL)

Prints `ready http://127.0.0.1:PORT/` on stdout once listening (the default --port 0 picks a free port), and
exits 0 on SIGTERM/SIGINT. The Rust tests do not use it; it exists so that the browser harness
can be checked on its own:

    /usr/bin/python3 scripts/mock_mjpeg_server.py --port 8095 &
    scripts/browser_check.sh http://127.0.0.1:8095/ out/browser-selftest      # exits 0
    # and with --still on another port, browser_check.sh exits 1 (IDENTICAL)
"""
import argparse
import glob
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
BOUNDARY = "gradcamdframe"

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>gradcamd mock</title>
<style>body{margin:0;background:#222;color:#eee;font:14px sans-serif}
img{display:block;margin:8px;width:320px;height:240px;background:#000}</style></head>
<body><h1>gradcamd mock</h1>
<img id="s0" alt="cam1">
<script>
document.addEventListener("DOMContentLoaded", function () {
  document.getElementById("s0").src = "/stream/cam1";
});
</script>
</body></html>
"""


def make_frames(tmp):
    # testsrc2 changes every frame (moving pattern and a frame counter).
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
           "testsrc2=size=320x240:rate=10", "-frames:v", "64", "-q:v", "5",
           os.path.join(tmp, "f%03d.jpg")]
    subprocess.run(cmd, check=True, timeout=30)
    frames = []
    for path in sorted(glob.glob(os.path.join(tmp, "f*.jpg"))):
        with open(path, "rb") as f:
            frames.append(f.read())
    if not frames:
        raise RuntimeError("ffmpeg made no frames")
    return frames


class Handler(BaseHTTPRequestHandler):
    frames = []
    fps = 10.0
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):  # quiet: one line per request on stderr
        sys.stderr.write("mock_mjpeg: %s %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        if self.path in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(PAGE)
        elif self.path == "/stream/cam1":
            self.stream()
        else:
            self.send_error(404)

    def stream(self):
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        period = 1.0 / self.fps
        t = time.monotonic()
        i = 0
        try:
            while True:
                jpg = self.frames[i % len(self.frames)]
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg + b"\r\n")
                self.wfile.flush()
                i += 1
                t += period
                time.sleep(max(0.0, t - time.monotonic()))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away


def main():
    ap = argparse.ArgumentParser(description="mock MJPEG page for scripts/browser_check.sh")
    ap.add_argument("--port", type=int, default=0, help="0 (default): a free port, see the ready line")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--still", action="store_true", help="send one frame forever (frames never change)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mock-mjpeg-") as tmp:
        Handler.frames = make_frames(tmp)
    if args.still:
        Handler.frames = Handler.frames[:1]
    Handler.fps = args.fps

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    try:
        httpd = ThreadingHTTPServer((HOST, args.port), Handler)
    except OSError as e:
        print(f"mock_mjpeg: cannot listen on {HOST}:{args.port}: {e}", file=sys.stderr)
        sys.exit(1)

    def stop(*_):
        # shutdown() waits for serve_forever, so call it from another thread.
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ready http://{HOST}:{httpd.server_address[1]}/", flush=True)
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
