//! Capture stage: one thread per source, decoding with OpenCV's `VideoCapture`.
//!
//! - A *file* source is lossless: `send` blocks while the pipeline is full, so every decoded
//!   frame reaches the output.
//! - A *live* source (camera, RTSP, any URL) never lets latency grow: its channel holds one
//!   frame, and a newer frame replaces an older one that inference has not taken yet (counted as
//!   dropped). On a read failure or timeout it reconnects with capped exponential backoff and
//!   jitter, logging each attempt; while it is down it sends "stream lost" placeholder frames so
//!   the outputs do not freeze, and its `up` gauge is 0.
//!
//! A video file given `mode = "live"` plays in real time and loops (seeking back to its first
//! frame, seamlessly; reopened like a lost stream only if that fails): a stand-in camera for
//! demos, tests and benchmarks.
//!
//! The stop flag (Ctrl-C, SIGTERM) is read only here; the stages downstream finish when this
//! thread drops its sender.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use opencv::core::{Mat, Scalar, Size, Vector, CV_8UC3};
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};

use crate::config::{LiveConfig, SourceMode};
use crate::error::{fail, Kind};
use crate::frame::{Frame, Pool};
use crate::stats::event::{FrameCaptured, FramesDropped, SourceEnded, SourceLost, SourceUp};
use crate::stats::{Event, Stage, StageMeter, Stats};

/// What a source URI names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SourceKind {
    File(String),
    /// V4L2 camera index: `camera:N` or `/dev/videoN`.
    Camera(i32),
    /// Anything OpenCV's FFmpeg backend opens: `rtsp://`, `http://`, `udp://`, ...
    Url(String),
    /// `synthetic:WxH@FPS`: generated frames in real time (a bright square moving over a
    /// gradient), for benchmarks that need many cameras.
    Synthetic {
        width: i32,
        height: i32,
        fps: f64,
    },
}

impl SourceKind {
    pub(crate) fn parse(uri: &str) -> SourceKind {
        if let Some(spec) = uri.strip_prefix("synthetic:") {
            let (size, fps) = spec.split_once('@').unwrap_or((spec, "30"));
            let (w, h) = size.split_once('x').unwrap_or(("640", "360"));
            if let (Ok(width), Ok(height), Ok(fps)) = (w.parse(), h.parse(), fps.parse()) {
                return SourceKind::Synthetic { width, height, fps };
            }
        }
        if let Some(n) = uri.strip_prefix("camera:").and_then(|n| n.parse().ok()) {
            return SourceKind::Camera(n);
        }
        if let Some(n) = uri.strip_prefix("/dev/video").and_then(|n| n.parse().ok()) {
            return SourceKind::Camera(n);
        }
        // A file URL is a file: lossless, and its end is the end, not a lost stream.
        if let Some(path) = uri.strip_prefix("file://") {
            return SourceKind::File(path.to_string());
        }
        if uri.contains("://") {
            return SourceKind::Url(uri.to_string());
        }
        SourceKind::File(uri.to_string())
    }

    pub(crate) fn default_mode(&self) -> SourceMode {
        match self {
            SourceKind::File(_) => SourceMode::File,
            _ => SourceMode::Live,
        }
    }
}

/// How a live source reconnects.
#[derive(Debug, Clone)]
pub(crate) struct Reconnect {
    pub initial: Duration,
    pub max: Duration,
    /// FFmpeg open and read timeouts: without them a stalled server blocks a read ~30 s.
    pub open_timeout: Duration,
    pub read_timeout: Duration,
}

impl From<&LiveConfig> for Reconnect {
    fn from(c: &LiveConfig) -> Self {
        Reconnect {
            initial: Duration::from_millis(c.reconnect_initial_ms),
            max: Duration::from_millis(c.reconnect_max_ms.max(c.reconnect_initial_ms)),
            open_timeout: Duration::from_millis(c.open_timeout_ms),
            read_timeout: Duration::from_millis(c.read_timeout_ms),
        }
    }
}

/// An opened source, with what the sinks need to know about it.
pub(crate) struct Source {
    pub index: usize,
    pub name: String,
    /// The URI as shown ([`crate::uri::redact`]); `kind` holds the one that is opened.
    pub uri: String,
    pub kind: SourceKind,
    pub mode: SourceMode,
    /// Frames per second: what the source reports, or [`DEFAULT_FPS`] until it is known.
    pub fps: f64,
    /// Whether `fps` came from the source (a live camera's comes when it connects).
    pub fps_known: bool,
    /// Frame size, once known (a live source that is down at start-up has none yet).
    pub size: Option<(i32, i32)>,
    /// Frames in the file, if the container says (progress bar only; never trusted for logic).
    pub frame_count: Option<u64>,
    reconnect: Reconnect,
    cap: Option<VideoCapture>,
    /// The first frame, read at open time to prove the stream decodes.
    first: Option<Mat>,
    /// The last frame's presentation time, continuous over reconnects and loops.
    last_pts: Option<f64>,
    /// Where the current stream's time 0 is on that continuous clock (it moves on at each
    /// reconnect or loop, so `pts_ms` in events never runs backwards).
    pts_base: f64,
    /// The last time the decoder gave in the current stream.
    stream_pts: Option<f64>,
}

fn open_capture(kind: &SourceKind, rc: &Reconnect) -> opencv::Result<VideoCapture> {
    match kind {
        SourceKind::Synthetic { .. } => Ok(VideoCapture::default()?),
        SourceKind::File(p) => VideoCapture::from_file(p, videoio::CAP_ANY),
        SourceKind::Camera(i) => VideoCapture::new(*i, videoio::CAP_V4L2),
        SourceKind::Url(u) => {
            let params = Vector::from_slice(&[
                videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
                rc.open_timeout.as_millis() as i32,
                videoio::CAP_PROP_READ_TIMEOUT_MSEC,
                rc.read_timeout.as_millis() as i32,
            ]);
            VideoCapture::from_file_with_params(u, videoio::CAP_FFMPEG, &params)
        }
    }
}

/// The rate assumed for a source that reports none, or none yet.
pub(crate) const DEFAULT_FPS: f64 = 25.0;

/// The frame rate an opened source reports, if usable; else [`DEFAULT_FPS`], with a warning.
fn reported_fps(kind: &SourceKind, cap: &VideoCapture, name: &str) -> f64 {
    let fps = match kind {
        SourceKind::Synthetic { fps, .. } => *fps,
        _ => cap.get(videoio::CAP_PROP_FPS).unwrap_or(0.0),
    };
    if fps.is_finite() && fps > 0.0 && fps <= 1000.0 {
        fps
    } else {
        tracing::warn!(source = %name, fps, "source reports no usable frame rate; assuming {DEFAULT_FPS} fps");
        DEFAULT_FPS
    }
}

/// A connection attempt on a thread of its own, so that the capture loop keeps serving
/// placeholders and sees the stop flag while FFmpeg waits out its timeout.
fn connect_in_background(
    index: usize,
    kind: &SourceKind,
    rc: &Reconnect,
) -> Option<Receiver<Result<(VideoCapture, Mat), String>>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (k, r) = (kind.clone(), rc.clone());
    std::thread::Builder::new()
        .name(format!("connect-{index}"))
        .spawn(move || {
            let _ = tx.send(connect(index, &k, &r));
        })
        .ok()?;
    Some(rx)
}

/// Frame `n` of a synthetic source: a bright square crossing a gradient.
fn synthetic_frame(width: i32, height: i32, n: u64) -> Mat {
    let mut m = Mat::default();
    synthetic_into(&mut m, width, height, n);
    m
}

/// Makes `m` a `width`×`height` BGR image of one `color`, reusing its buffer when it has that size.
fn fill(m: &mut Mat, width: i32, height: i32, color: Scalar) {
    let size = Size::new(width, height);
    if m.size().ok() == Some(size) && m.typ() == CV_8UC3 {
        let _ = m.set_to_def(&color);
    } else {
        *m = Mat::new_size_with_default(size, CV_8UC3, color).unwrap_or_default();
    }
}

/// [`synthetic_frame`] drawn into `m`, reusing its buffer.
fn synthetic_into(m: &mut Mat, width: i32, height: i32, n: u64) {
    fill(m, width, height, Scalar::new(60.0, 90.0, 120.0, 0.0));
    let side = (height / 3).max(8);
    let span = (width - side).max(1) as u64;
    let x = ((n * 4) % (2 * span)) as i64;
    let x = if x as u64 >= span { 2 * span as i64 - x } else { x } as i32;
    let r = opencv::core::Rect::new(x, height / 3, side, side);
    let _ = opencv::imgproc::rectangle(
        m,
        r,
        Scalar::new(240.0, 240.0, 250.0, 0.0),
        -1,
        opencv::imgproc::LINE_8,
        0,
    );
}

/// The name FFmpeg's decoder threads of source `index` carry (see [`crate::cpu::named`]).
fn helper_name(index: usize) -> String {
    format!("decode-{index}")
}

/// Opens and reads one frame: (capture, first frame). The decoder's own threads are named after
/// the source, so their CPU counts as its decode time.
fn connect(index: usize, kind: &SourceKind, rc: &Reconnect) -> Result<(VideoCapture, Mat), String> {
    crate::cpu::named(&helper_name(index), || connect_inner(kind, rc))
}

fn connect_inner(kind: &SourceKind, rc: &Reconnect) -> Result<(VideoCapture, Mat), String> {
    if let SourceKind::Synthetic { width, height, .. } = kind {
        let cap = VideoCapture::default().map_err(|e| e.to_string())?;
        return Ok((cap, synthetic_frame(*width, *height, 0)));
    }
    let mut cap = open_capture(kind, rc).map_err(|e| e.to_string())?;
    if !cap.is_opened().unwrap_or(false) {
        return Err("cannot open it".into());
    }
    let mut first = Mat::default();
    if !cap.read(&mut first).unwrap_or(false) || first.empty() {
        return Err("opened, but no frame could be read".into());
    }
    Ok((cap, first))
}

/// [`connect`] for a FIFO, whose open blocks until a writer comes: in a thread, given up
/// after the open timeout. The thread is then released by opening the FIFO's write end for an
/// instant (its reader sees the writer come and go, and FFmpeg fails), so nothing stays blocked.
fn connect_fifo(index: usize, kind: &SourceKind, rc: &Reconnect) -> Result<(VideoCapture, Mat), String> {
    let SourceKind::File(path) = kind else {
        return connect(index, kind, rc);
    };
    let rx = connect_in_background(index, kind, rc).ok_or("cannot start a thread to open it")?;
    match rx.recv_timeout(rc.open_timeout) {
        Ok(r) => r,
        Err(_) => {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            let _ = rx.recv_timeout(Duration::from_secs(1));
            Err(format!(
                "it is a FIFO and no writer came within {} ms",
                rc.open_timeout.as_millis()
            ))
        }
    }
}

impl Source {
    /// Opens a source. A file that does not exist or decode is an error; a live source that is
    /// down is an error only when `strict`, else it is logged and retried by [`Source::run`].
    pub(crate) fn open(
        index: usize,
        name: String,
        uri: &str,
        mode: Option<SourceMode>,
        reconnect: Reconnect,
        strict: bool,
    ) -> anyhow::Result<Source> {
        let kind = SourceKind::parse(uri);
        let mode = mode.unwrap_or_else(|| kind.default_mode());
        // Shown in every message: the password and tokens taken out.
        let uri = &*crate::uri::redact(uri);
        if let SourceKind::File(p) = &kind {
            let p = Path::new(p);
            if p.is_dir() {
                return Err(fail(
                    Kind::Input,
                    format!("source '{name}': {uri} is a directory, not a video file"),
                ));
            }
            if !p.exists() {
                return Err(fail(
                    Kind::Input,
                    format!("source '{name}': video file {uri} does not exist"),
                ));
            }
        }
        let fifo = match &kind {
            SourceKind::File(p) => std::fs::metadata(p).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_fifo()
            }),
            _ => false,
        };
        // A live stream or camera that start-up does not depend on connects in its own capture
        // thread: OpenCV opens one FFmpeg input at a time (a process-wide lock), so a dead camera
        // waiting out its timeout here would hold up every other source, the page and a stop.
        let deferred = !strict && matches!(kind, SourceKind::Url(_) | SourceKind::Camera(_));
        let opened = if deferred {
            Err(String::new())
        } else if fifo {
            connect_fifo(index, &kind, &reconnect)
        } else {
            connect(index, &kind, &reconnect)
        };
        let (cap, first) = match opened {
            Ok((c, f)) => (Some(c), Some(f)),
            Err(_) if deferred => (None, None),
            Err(why) => {
                let msg = match &kind {
                    SourceKind::File(_) if fifo => format!("source '{name}': {uri}: {why}"),
                    SourceKind::File(_) => format!(
                        "source '{name}': {uri} is not a video OpenCV can decode ({why}: corrupt, or a codec FFmpeg lacks)"
                    ),
                    _ => Self::unreachable(&kind, &name, uri, &why),
                };
                return Err(fail(Kind::Input, msg));
            }
        };
        let fps = cap.as_ref().map(|c| reported_fps(&kind, c, &name));
        let n = cap
            .as_ref()
            .and_then(|c| c.get(videoio::CAP_PROP_FRAME_COUNT).ok())
            .unwrap_or(0.0);
        Ok(Source {
            index,
            name,
            uri: uri.to_string(),
            mode,
            fps: fps.unwrap_or(DEFAULT_FPS),
            fps_known: fps.is_some(),
            size: first.as_ref().map(|f| (f.cols(), f.rows())),
            frame_count: (matches!(kind, SourceKind::File(_)) && n.is_finite() && n >= 1.0)
                .then_some(n as u64),
            kind,
            reconnect,
            cap,
            first,
            last_pts: None,
            pts_base: 0.0,
            stream_pts: None,
        })
    }

    /// What to say when a live source cannot be reached.
    fn unreachable(kind: &SourceKind, name: &str, uri: &str, why: &str) -> String {
        match kind {
            SourceKind::Camera(i) => {
                format!("source '{name}': camera {i} ({uri}): {why}; is it connected and free?")
            }
            SourceKind::Url(_) => format!("source '{name}': {uri}: {why}; is the stream reachable?"),
            _ => format!("source '{name}': {uri}: {why}"),
        }
    }

    /// Decodes until the end of the stream or the stop flag, sending each frame downstream.
    /// `drain` is a receiver of the same channel, used by live sources to drop the older frame.
    pub(crate) fn run(
        mut self,
        tx: Sender<Frame>,
        drain: Receiver<Frame>,
        stop: Arc<AtomicBool>,
        stats: Arc<Stats>,
        pool: Pool<Mat>,
    ) {
        let span = tracing::info_span!("capture", source = %self.name);
        let _e = span.enter();
        let source = self.index;
        let mut seq = 0u64;
        let mut next = self.first.take();
        // A source opened at start-up knows its rate; a deferred one is down until it connects.
        if self.cap.is_some() {
            SourceUp {
                source,
                fps: self.fps,
            }
            .emit(&stats);
        }
        let mut backoff = self.reconnect.initial;
        let mut retry_at = Instant::now();
        let mut attempt = 0u32;
        let mut ever_up = self.cap.is_some();
        // A connection attempt running on its own thread (see `connect_in_background`); one
        // still running at a stop is left to finish on its own.
        let mut pending = None;
        let mut last_lost = Instant::now() - Duration::from_secs(1);
        let helpers = helper_name(self.index);
        let helpers_before = crate::cpu::threads_cpu(&helpers);
        let mut meter = StageMeter::new(&stats, Stage::Decode);
        // A file played as a live source runs in real time, like the camera it stands in for.
        let pace = (self.mode == SourceMode::Live
            && matches!(self.kind, SourceKind::File(_) | SourceKind::Synthetic { .. }))
        .then(|| Duration::from_secs_f64(1.0 / self.fps));
        let mut due = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                tracing::info!(frames = seq, "stop requested; capture finished");
                break;
            }
            if self.cap.is_none() {
                // Down: placeholders at ~5 fps once it has been up or an attempt failed (a
                // camera connecting at start-up shows nothing rather than "stream lost").
                if (ever_up || attempt > 0) && last_lost.elapsed() >= Duration::from_millis(200) {
                    last_lost = Instant::now();
                    let (w, h) = self.size.unwrap_or((640, 360));
                    // From the pool too: an outage must not grow the frame population.
                    let mut image = pool.take().unwrap_or_default();
                    fill(&mut image, w, h, Scalar::all(40.0));
                    let f = Frame {
                        source: self.index,
                        seq,
                        pts_ms: 0.0,
                        image,
                        captured: Instant::now(),
                        lost: true,
                    };
                    if !self.deliver(f, &tx, &drain, &stats, &pool) {
                        break;
                    }
                    seq += 1;
                }
                if pending.is_none() && Instant::now() >= retry_at {
                    pending = connect_in_background(self.index, &self.kind, &self.reconnect);
                    if pending.is_none() {
                        retry_at = Instant::now() + backoff;
                    }
                }
                let result = match pending.as_ref().map(|p| p.try_recv()) {
                    Some(Ok(r)) => Some(r),
                    Some(Err(crossbeam_channel::TryRecvError::Disconnected)) => {
                        Some(Err("the connection attempt ended without an answer".to_string()))
                    }
                    _ => None,
                };
                match result {
                    Some(Ok((cap, first))) => {
                        pending = None;
                        if attempt > 0 || ever_up {
                            tracing::info!(attempt, "reconnected");
                        } else {
                            tracing::info!("connected");
                        }
                        if !self.fps_known {
                            self.fps = reported_fps(&self.kind, &cap, &self.name);
                            self.fps_known = true;
                        }
                        SourceUp {
                            source,
                            fps: self.fps,
                        }
                        .emit(&stats);
                        self.size = Some((first.cols(), first.rows()));
                        self.cap = Some(cap);
                        self.restart_clock();
                        next = Some(first);
                        backoff = self.reconnect.initial;
                        attempt = 0;
                        ever_up = true;
                    }
                    Some(Err(why)) => {
                        pending = None;
                        attempt += 1;
                        let wait = jitter(backoff, retry_salt(self.index, seq, attempt));
                        if attempt == 1 && !ever_up {
                            let msg = Self::unreachable(&self.kind, &self.name, &self.uri, &why);
                            tracing::error!("{msg}; serving the other sources and retrying (use --strict to fail instead)");
                        } else {
                            tracing::warn!(attempt, error = %why, retry_in_ms = wait.as_millis() as u64, "reconnect failed");
                        }
                        retry_at = Instant::now() + wait;
                        backoff = (backoff * 2).min(self.reconnect.max);
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
                continue;
            }
            let image = match next.take() {
                Some(m) => m,
                None => {
                    let (mut m, ok) = meter.time(|| {
                        // A buffer the sink is done with: decoding into it allocates nothing.
                        let mut m = pool.take().unwrap_or_default();
                        let ok = match self.kind {
                            SourceKind::Synthetic { width, height, .. } => {
                                synthetic_into(&mut m, width, height, seq);
                                Some(Ok(true))
                            }
                            _ => self.cap.as_mut().map(|c| c.read(&mut m)),
                        };
                        (m, ok)
                    });
                    let file = matches!(self.kind, SourceKind::File(_));
                    match ok {
                        Some(Ok(true)) if !m.empty() => m,
                        _ if file && self.mode == SourceMode::File => {
                            self.warn_if_short(seq);
                            break;
                        }
                        _ if file && self.rewind(&mut m) => m,
                        other => {
                            let why = match other {
                                Some(Err(e)) => e.to_string(),
                                _ => "end of stream or read timeout".to_string(),
                            };
                            tracing::warn!(error = %why, frames = seq, "stream lost; reconnecting");
                            self.cap = None;
                            SourceLost { source }.emit(&stats);
                            retry_at = Instant::now() + backoff;
                            continue;
                        }
                    }
                }
            };
            if let Some(p) = pace {
                due += p;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    due = now;
                }
            }
            let pts_ms = self.pts();
            let frame = Frame {
                source: self.index,
                seq,
                pts_ms,
                image,
                captured: Instant::now(),
                lost: false,
            };
            if !self.deliver(frame, &tx, &drain, &stats, &pool) {
                break;
            }
            FrameCaptured { source }.emit(&stats);
            seq += 1;
            meter.tick(1);
        }
        meter.finish();
        // Read before release: the decoder's threads end with it. (After a reconnect the old
        // decoder's threads are gone and uncounted; a file source never reconnects.)
        let helpers_cpu = crate::cpu::threads_cpu(&helpers).saturating_sub(helpers_before);
        stats.decode.add(helpers_cpu);
        if let Some(mut c) = self.cap.take() {
            let _ = c.release();
        }
        SourceEnded { source }.emit(&stats);
    }

    /// A file that ends well before the frame count its container announces was cut short
    /// (a copy interrupted, a recording killed): say so, as its output is short too.
    fn warn_if_short(&self, read: u64) {
        if let Some(n) = self.frame_count.filter(|&n| read + (n / 50).max(2) < n) {
            tracing::warn!(
                frames = read,
                announced = n,
                "the input ended early: its container announces {n} frames but only {read} could be decoded (truncated or damaged?)"
            );
        }
    }

    /// A live file at its end: back to the first frame, read into `m`. False if the file
    /// cannot seek or read there (then it is reopened, like a lost stream).
    fn rewind(&mut self, m: &mut Mat) -> bool {
        let Some(c) = self.cap.as_mut() else {
            return false;
        };
        let ok = c.set(videoio::CAP_PROP_POS_FRAMES, 0.0).unwrap_or(false)
            && c.read(m).unwrap_or(false)
            && !m.empty();
        if ok {
            self.restart_clock();
            tracing::debug!("end of file; playing it again from the start");
        }
        ok
    }

    /// The frame just read's presentation time in ms. Where the decoder reports none that
    /// advances, one frame interval after the last: FFmpeg's last frames of a file (those it
    /// drains at the end) report 0, and so does a synthetic source.
    fn pts(&mut self) -> f64 {
        let reported = self
            .cap
            .as_ref()
            .and_then(|c| c.get(videoio::CAP_PROP_POS_MSEC).ok())
            .unwrap_or(0.0);
        let rel = match self.stream_pts {
            Some(last) if reported.is_nan() || reported <= last => last + 1e3 / self.fps,
            _ => reported,
        };
        self.stream_pts = Some(rel);
        let pts = self.pts_base + rel;
        self.last_pts = Some(pts);
        pts
    }

    /// A new stream (reconnect) or the file again from its start (loop): its times count on
    /// from one frame after the last one sent.
    fn restart_clock(&mut self) {
        self.pts_base = self.last_pts.map_or(0.0, |l| l + 1e3 / self.fps);
        self.stream_pts = None;
    }

    /// Sends a frame: blocking for file mode; for live mode replacing an older frame that is
    /// still waiting. Returns false when the pipeline has shut down.
    fn deliver(
        &self,
        frame: Frame,
        tx: &Sender<Frame>,
        drain: &Receiver<Frame>,
        stats: &Stats,
        pool: &Pool<Mat>,
    ) -> bool {
        match self.mode {
            SourceMode::File => tx.send(frame).is_ok(),
            SourceMode::Live => {
                let mut frame = frame;
                loop {
                    match tx.try_send(frame) {
                        Ok(()) => return true,
                        Err(TrySendError::Full(f)) => {
                            if let Ok(old) = drain.try_recv() {
                                pool.give(old.image);
                                FramesDropped { source: self.index }.emit(stats);
                            }
                            frame = f;
                        }
                        Err(TrySendError::Disconnected(_)) => return false,
                    }
                }
            }
        }
    }
}

/// What a retry's jitter is drawn from: the source too, since two cameras behind one switch
/// drop at the same frame.
fn retry_salt(source: usize, seq: u64, attempt: u32) -> u64 {
    (source as u64) << 40 ^ seq << 8 ^ u64::from(attempt)
}

/// ±20% of `d`, from a cheap hash, so that sources that dropped together do not retry in step.
fn jitter(d: Duration, salt: u64) -> Duration {
    let x = (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % 401; // 0..=400
    d.mul_f64(0.8 + x as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(SourceKind::parse("camera:2"), SourceKind::Camera(2));
        assert_eq!(SourceKind::parse("/dev/video0"), SourceKind::Camera(0));
        assert_eq!(
            SourceKind::parse("rtsp://10.0.0.1/x"),
            SourceKind::Url("rtsp://10.0.0.1/x".into())
        );
        assert_eq!(
            SourceKind::parse("clips/a.mp4"),
            SourceKind::File("clips/a.mp4".into())
        );
        assert_eq!(SourceKind::parse("camera:2").default_mode(), SourceMode::Live);
        assert_eq!(
            SourceKind::parse("synthetic:320x240@15"),
            SourceKind::Synthetic {
                width: 320,
                height: 240,
                fps: 15.0
            }
        );
        assert_eq!(
            SourceKind::parse("synthetic:320x240@15").default_mode(),
            SourceMode::Live
        );
    }

    #[test]
    fn jitter_spreads_retries_over_plus_minus_20_percent() {
        let ms: Vec<u128> = (0..1000u64)
            .map(|s| jitter(Duration::from_millis(1000), s).as_millis())
            .collect();
        assert!(ms.iter().all(|j| (800..=1200).contains(j)), "{ms:?}");
        // Spread over the whole band, evenly: no jitter (or a constant one) fails here.
        let (lo, hi) = (ms.iter().min().unwrap(), ms.iter().max().unwrap());
        assert!(*lo <= 810 && *hi >= 1190, "{lo}..{hi}");
        let mut distinct = ms.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() >= 300, "{} distinct waits", distinct.len());
        let mean = ms.iter().sum::<u128>() as f64 / ms.len() as f64;
        assert!((985.0..=1015.0).contains(&mean), "{mean}");
        // Two sources that dropped at the same frame wait differently.
        let d = Duration::from_millis(1000);
        let same = (1..50u32)
            .filter(|&a| jitter(d, retry_salt(0, 300, a)) == jitter(d, retry_salt(1, 300, a)))
            .count();
        assert!(same < 5, "{same} of 49 attempts in step");
    }
}
