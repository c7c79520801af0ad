#!/usr/bin/python3
"""RTSP test server for gradcamd's live tests: serves a real .mp4 clip, looping forever.

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 --mount /cam1 \
        --video .deps/media/carphone_pristine.mp4 [--mount2 /cam2 --video2 .deps/media/bikes.mp4]

Run it with Debian's /usr/bin/python3 (python3-gi lives there; a pyenv python cannot see it).
Needs: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
(scripts/setup.sh test installs them).

How it works: the clip's H.264 access units are demuxed ONCE at start (qtdemux -> appsink) and
kept in memory. Each RTSP client gets its own pipeline `appsrc ! clocksync ! rtph264pay`, fed
from that list in a loop with PTS/DTS shifted by one clip period per lap, so the stream is the
real clip, never re-encoded, for as long as the client reads. SPS/PPS are resent before every
IDR (config-interval=-1), so every lap starts decodable.

Everything binds to 127.0.0.1 only: the RTSP socket, and (through a unicast address pool) the
server-side UDP ports if a client asks for RTP over UDP. RTP over TCP (interleaved) works too.
The listening socket is created with SO_REUSEADDR, so the server can be SIGKILLed and restarted
on the same port at once.

Once listening it prints `ready rtsp://127.0.0.1:PORT/MOUNT` on stdout (flushed; one line per
mount, --mount first), then runs until SIGTERM/SIGINT and exits 0. --port 0 picks a free port
(read it from the ready line). A start-up failure (port in use, missing file, no H.264 track)
exits 1 with one line on stderr and no ready line. --protocols tcp|udp|both (default both)
limits the RTP transports offered; FFmpeg/OpenCV try UDP first, then TCP.
"""
import argparse
import os
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

HOST = "127.0.0.1"


def die(msg):
    print(f"rtsp_server: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


class Clip:
    """All H.264 access units of one file, demuxed once, plus their caps and lap length."""

    def __init__(self, path):
        if not os.path.isfile(path):
            die(f"no such file: {path}")
        pipe = Gst.parse_launch(
            'filesrc name=file ! qtdemux ! video/x-h264 ! appsink name=sink sync=false')
        pipe.get_by_name("file").set_property("location", path)
        sink = pipe.get_by_name("sink")
        bus = pipe.get_bus()
        pipe.set_state(Gst.State.PLAYING)
        self.buffers = []
        self.caps = None
        deadline = time.monotonic() + 60
        while True:
            # pull-sample would block forever on an error (not-an-mp4, no H.264 track), so
            # poll, and look at the bus between polls.
            sample = sink.emit("try-pull-sample", 200 * Gst.MSECOND)
            if sample is not None:
                if self.caps is None:
                    self.caps = sample.get_caps()
                self.buffers.append(sample.get_buffer())
                continue
            msg = bus.pop_filtered(Gst.MessageType.ERROR)
            if msg is not None:
                pipe.set_state(Gst.State.NULL)
                err, dbg = msg.parse_error()
                die(f"cannot read H.264 from {path}: {err.message}")
            if sink.get_property("eos"):
                break
            if time.monotonic() > deadline:
                pipe.set_state(Gst.State.NULL)
                die(f"timed out demuxing {path}")
        pipe.set_state(Gst.State.NULL)
        if not self.buffers or self.caps is None:
            die(f"no H.264 video track in {path}")
        # Lap length: end of the last frame in presentation order, minus the first start.
        starts = [b.pts for b in self.buffers if b.pts != Gst.CLOCK_TIME_NONE]
        ends = [b.pts + (b.duration if b.duration != Gst.CLOCK_TIME_NONE else 0)
                for b in self.buffers if b.pts != Gst.CLOCK_TIME_NONE]
        self.period = max(ends) - min(starts)
        if self.period <= 0:
            die(f"cannot tell the duration of {path}")
        # The first buffer must be a keyframe or a lap would start undecodable.
        if self.buffers[0].has_flags(Gst.BufferFlags.DELTA_UNIT):
            die(f"{path} does not start with a keyframe")
        # DTS can be below PTS (B-frames); shift so that every DTS of lap 0 is >= 0.
        dts = [b.dts for b in self.buffers if b.dts != Gst.CLOCK_TIME_NONE]
        self.shift = max(0, -(min(dts) if dts else 0))
        s = self.caps.get_structure(0)
        self.desc = (f"{len(self.buffers)} frames {s.get_value('width')}x{s.get_value('height')}, "
                     f"lap {self.period / Gst.SECOND:.3f} s")


COPY = Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.MEMORY | Gst.BufferCopyFlags.META


class LoopFactory(GstRtspServer.RTSPMediaFactory):
    """One pipeline per client, fed the clip's access units in an endless loop."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.set_shared(False)
        self.set_launch(
            "( appsrc name=src is-live=true format=time stream-type=stream max-bytes=200000 "
            "! clocksync ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        self.connect("media-configure", self.on_configure)

    def on_configure(self, _factory, media):
        src = media.get_element().get_child_by_name("src")
        src.set_property("caps", self.clip.caps)
        state = {}

        def reset(*_):
            # A media can be unprepared and prepared again (its running time restarts at 0),
            # so every preparation starts from frame 0 with fresh timestamps.
            state.update(i=0, lap=0)

        reset()
        media.connect("unprepared", reset)
        src.connect("need-data", self.on_need_data, state)

    def on_need_data(self, src, _length, state):
        clip = self.clip
        orig = clip.buffers[state["i"]]
        # A new buffer sharing the clip's memory. (Not orig.copy(): in PyGObject that returns a
        # wrapper whose timestamps write through to the original.)
        buf = orig.copy_region(COPY, 0, orig.get_size())
        # Running time of the pipeline starts at 0 when it goes to PLAYING; clocksync paces
        # the buffers at the clip's real rate from there.
        off = clip.shift + state["lap"] * clip.period
        if orig.pts != Gst.CLOCK_TIME_NONE:
            buf.pts = orig.pts + off
        if orig.dts != Gst.CLOCK_TIME_NONE:
            buf.dts = orig.dts + off
        if state["lap"] > 0 and state["i"] == 0:
            buf.set_flags(Gst.BufferFlags.DISCONT)
        state["i"] += 1
        if state["i"] == len(clip.buffers):
            state["i"] = 0
            state["lap"] += 1
        src.emit("push-buffer", buf)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--mount", default="/cam1")
    ap.add_argument("--video", required=True)
    ap.add_argument("--mount2")
    ap.add_argument("--video2")
    ap.add_argument("--protocols", choices=["tcp", "udp", "both"], default="both",
                    help="RTP lower transports offered (default both; FFmpeg tries UDP first)")
    args = ap.parse_args()
    if bool(args.mount2) != bool(args.video2):
        ap.error("--mount2 and --video2 go together")

    Gst.init(None)
    mounts = [(args.mount, args.video)]
    if args.mount2:
        mounts.append((args.mount2, args.video2))

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))
    pool = GstRtspServer.RTSPAddressPool()
    # Unicast range: the server's RTP/RTCP UDP ports bind to 127.0.0.1 too.
    pool.add_range(HOST, HOST, 40000, 40999, 0)
    proto = {"tcp": GstRtsp.RTSPLowerTrans.TCP,
             "udp": GstRtsp.RTSPLowerTrans.UDP,
             "both": GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP}[args.protocols]
    table = server.get_mount_points()
    for mount, video in mounts:
        if not mount.startswith("/"):
            die(f"mount must start with '/': {mount}")
        clip = Clip(video)
        factory = LoopFactory(clip)
        factory.set_address_pool(pool)
        factory.set_protocols(proto)
        table.add_factory(mount, factory)
        print(f"rtsp_server: {mount} <- {video}: {clip.desc}", file=sys.stderr, flush=True)

    # attach() binds and listens (SO_REUSEADDR); it returns 0 instead of raising on failure.
    if server.attach(None) == 0 or server.get_bound_port() <= 0:
        die(f"cannot listen on {HOST}:{args.port} (in use?)")

    loop = GLib.MainLoop()

    def stop(*_):
        loop.quit()
        return GLib.SOURCE_CONTINUE  # keep catching: a second signal must not kill us mid-exit

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, stop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, stop)
    for mount, _ in mounts:
        print(f"ready rtsp://{HOST}:{server.get_bound_port()}{mount}", flush=True)
    loop.run()
    # Exit at once with 0: the kernel closes every socket (clients see EOF). A normal interpreter
    # shutdown with GStreamer's streaming threads still running can hang or crash.
    print("rtsp_server: stopped", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
