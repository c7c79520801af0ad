//! HTTP server: a page with every source's explained stream, MJPEG streams, a JPEG snapshot,
//! Prometheus metrics, health and a JSON status.
//!
//! Read-only and bounded, on `std::net`: GET and HEAD only (405 otherwise), one request per
//! connection, one thread per connection up to `max_clients` (503 beyond), and every socket
//! read and write under the idle timeout, so a silent, slow or stalled client cannot hold a
//! thread for long.
//!
//! | path | what |
//! |---|---|
//! | `/` | page: one live stream per source with its label, score, fps and state |
//! | `/stream/<source>` | `multipart/x-mixed-replace` MJPEG of the annotated frames |
//! | `/snapshot/<source>.jpg` | the latest annotated frame |
//! | `/metrics` | Prometheus text format |
//! | `/healthz` | 200 when at least one source delivers frames, else 503 |
//! | `/status.json` | per source: up, label, score, fps, counters |
//!
//! The sink threads publish frames into a [`Hub`]; a frame is drawn (render) and JPEG-encoded
//! only while someone watches that source, or once a second for snapshots.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opencv::core::Vector;
use opencv::imgcodecs;
use opencv::prelude::*;

use crate::error::{fail, Kind};
use crate::stats::Stats;

impl Slot {
    fn wants_frame(&self) -> bool {
        self.viewers > 0 || self.encoded_at.is_none_or(|t| t.elapsed() >= SNAPSHOT_EVERY)
    }
}

/// How fresh `/snapshot` is kept while nobody watches.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Slot {
    jpeg: Option<Arc<Vec<u8>>>,
    generation: u64,
    label: String,
    prob: f32,
    viewers: usize,
    encoded_at: Option<Instant>,
    /// The source's frames (not "stream lost" placeholders), for the page's fps.
    rate: crate::stats::RecentRate,
}

/// The latest frame of each source, shared by the sink threads and the HTTP handlers.
pub(crate) struct Hub {
    names: Vec<String>,
    slots: Vec<(Mutex<Slot>, Condvar)>,
    closed: AtomicBool,
}

/// A frame of `source` is wanted while someone watches it or when the snapshot is due;
/// [`Hub::publish`] encodes only frames render drew.
impl crate::frame::Demand for Hub {
    fn wants_frame(&self, source: usize) -> bool {
        self.slots
            .get(source)
            .and_then(|(m, _)| m.lock().ok())
            .is_some_and(|s| s.wants_frame())
    }
}

impl Hub {
    pub(crate) fn new(names: Vec<String>) -> Hub {
        let slots = names
            .iter()
            .map(|_| (Mutex::new(Slot::default()), Condvar::new()))
            .collect();
        Hub {
            names,
            slots,
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Publishes a source's frame: its label, score and rate always, the image when it was
    /// drawn and is wanted.
    pub(crate) fn publish(&self, a: &crate::frame::Annotated) {
        let Some((m, cv)) = self.slots.get(a.source) else {
            return;
        };
        let Ok(mut s) = m.lock() else { return };
        if !a.lost {
            s.rate.tick(Instant::now());
        }
        s.label.clear();
        s.label.push_str(&a.label);
        s.prob = a.prob;
        if !a.drawn || !s.wants_frame() {
            return;
        }
        // Encode outside the lock would need a second lock round; frames are small and the
        // sink thread is the only writer, so keep it simple.
        let mut buf = Vector::<u8>::new();
        let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 80]);
        if imgcodecs::imencode(".jpg", &a.image, &mut buf, &params).unwrap_or(false) {
            s.jpeg = Some(Arc::new(buf.to_vec()));
            s.generation += 1;
            s.encoded_at = Some(Instant::now());
            cv.notify_all();
        }
    }

    /// Ends every stream (the pipeline is shutting down).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for (_, cv) in &self.slots {
            cv.notify_all();
        }
    }

    fn fps(&self, source: usize) -> f64 {
        self.slots
            .get(source)
            .and_then(|(m, _)| m.lock().ok())
            .map_or(0.0, |s| s.rate.rate(Instant::now()))
    }

    /// Waits for a frame newer than `seen`; `None` when closed.
    fn next_frame(&self, source: usize, seen: u64) -> Option<(u64, Arc<Vec<u8>>)> {
        let (m, cv) = self.slots.get(source)?;
        let mut s = m.lock().ok()?;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            if s.generation > seen {
                if let Some(j) = &s.jpeg {
                    return Some((s.generation, j.clone()));
                }
            }
            s = cv.wait_timeout(s, Duration::from_millis(500)).ok()?.0;
        }
    }

    fn viewers(&self, source: usize, delta: isize) {
        if let Some(mut s) = self.slots.get(source).and_then(|(m, _)| m.lock().ok()) {
            s.viewers = (s.viewers as isize + delta).max(0) as usize;
        }
    }
}

pub(crate) struct HttpServer {
    pub addr: String,
    listener: TcpListener,
    pub hub: Arc<Hub>,
    limits: Limits,
}

pub(crate) struct Running {
    hub: Arc<Hub>,
    closed: Arc<AtomicBool>,
    local: Option<SocketAddr>,
    thread: JoinHandle<()>,
}

/// Limits that keep a hostile or broken client from holding the daemon's threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A connection that sends no complete request, or a viewer that reads nothing, for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once (each open stream is one); more are answered 503.
    pub max_clients: usize,
}

/// Longest request head read (request line and headers); a longer one is 431.
const MAX_HEAD: usize = 8 << 10;

impl HttpServer {
    /// Binds now, so a taken or invalid address fails before any work starts.
    pub(crate) fn bind(addr: &str, names: Vec<String>, limits: Limits) -> anyhow::Result<HttpServer> {
        use std::net::ToSocketAddrs;
        let resolved: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| {
                fail(
                    Kind::Config,
                    format!("--http {addr:?} is not an address to listen on ({e}); give HOST:PORT, e.g. 127.0.0.1:8090"),
                )
            })?
            .collect();
        let listener = TcpListener::bind(&resolved[..]).map_err(|e| {
            fail(
                Kind::Output,
                format!("cannot serve HTTP on {addr}: {e}; pick another --http address"),
            )
        })?;
        let local = listener.local_addr().ok();
        let addr = local.map_or_else(|| addr.to_string(), |a| a.to_string());
        if local.is_some_and(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                addr = %addr,
                "HTTP is reachable from other machines and the page has no authentication; listen on 127.0.0.1 and put a proxy with authentication in front"
            );
        }
        Ok(HttpServer {
            addr,
            listener,
            hub: Arc::new(Hub::new(names)),
            limits,
        })
    }

    /// Serves until [`Running::stop`]: one thread per connection (streams are long), at most
    /// [`Limits::max_clients`] at once, each with the idle timeout on its reads and writes.
    /// One request per connection (`Connection: close`).
    pub(crate) fn start(self, stats: Arc<Stats>) -> anyhow::Result<Running> {
        let hub = self.hub.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let (limits, listener) = (self.limits, self.listener);
        let local = listener.local_addr().ok();
        let stop = closed.clone();
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            let span = tracing::info_span!("http");
            let _e = span.enter();
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else {
                    // Out of file descriptors, say: wait, rather than spin on the error.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let timeout = Some(limits.idle_timeout);
                if conn
                    .set_read_timeout(timeout)
                    .and_then(|()| conn.set_write_timeout(timeout))
                    .is_err()
                {
                    continue;
                }
                if busy.load(Ordering::SeqCst) >= limits.max_clients {
                    let _ = respond(&mut conn, 503, "text/plain", b"too many clients\n", false, &[]);
                    continue;
                }
                busy.fetch_add(1, Ordering::SeqCst);
                let (hub, stats, b) = (hub.clone(), stats.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("http-conn".into())
                    .spawn(move || {
                        serve(conn, &hub, &stats, limits.idle_timeout);
                        b.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
        tracing::info!(addr = %self.addr, "HTTP: page on http://{}/, metrics on /metrics", self.addr);
        Ok(Running {
            hub: self.hub,
            closed,
            local,
            thread,
        })
    }
}

impl Running {
    pub(crate) fn stop(self) {
        self.hub.close();
        self.closed.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        if let Some(a) = self.local {
            let wake = match a.ip() {
                ip if ip.is_unspecified() && a.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], a.port())),
                ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
                _ => a,
            };
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
        let _ = self.thread.join();
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes a whole response; `head_only` (HEAD) sends the headers alone.
fn respond(
    w: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if !head_only {
        w.write_all(body)?;
    }
    w.flush()
}

/// Reads the request head: (method, path); `Err(0)` when the client sent nothing usable within
/// the idle timeout (closed without a word), else the status to answer.
fn read_head(conn: &mut TcpStream, timeout: Duration) -> Result<(String, String), u16> {
    // The socket's timeout bounds each read; this bounds them all, so that a client trickling
    // a byte at a time cannot hold the connection past the idle timeout either.
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(0),
            Ok(_) if Instant::now() > deadline => return Err(0),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(m), Some(p)) => Ok((m.to_string(), p.to_string())),
        _ => Err(400),
    }
}

fn serve(mut conn: TcpStream, hub: &Hub, stats: &Stats, idle: Duration) {
    let (method, target) = match read_head(&mut conn, idle) {
        Ok(r) => r,
        Err(0) => return, // silent, slow or gone: closed
        Err(code) => {
            let _ = respond(&mut conn, code, "text/plain", b"bad request\n", false, &[]);
            return;
        }
    };
    // Read-only: anything but GET and HEAD is 405 (HEAD gets the headers, no body).
    let head = method == "HEAD";
    if method != "GET" && !head {
        let _ = respond(
            &mut conn,
            405,
            "text/plain",
            b"only GET and HEAD\n",
            false,
            &[("Allow", "GET, HEAD")],
        );
        return;
    }
    let url = percent_decode(target.split('?').next().unwrap_or("/"));
    let r = match url.as_str() {
        "/" => respond(
            &mut conn,
            200,
            "text/html; charset=utf-8",
            page(hub).as_bytes(),
            head,
            &[],
        ),
        "/metrics" => respond(
            &mut conn,
            200,
            "text/plain; version=0.0.4",
            crate::metrics::render(stats, &hub.names).as_bytes(),
            head,
            &[],
        ),
        "/healthz" => {
            let up = stats.sources.iter().any(|s| s.up.load(Ordering::Relaxed) == 1);
            let (body, code) = if up {
                ("ok\n", 200)
            } else {
                ("no source is up\n", 503)
            };
            respond(&mut conn, code, "text/plain", body.as_bytes(), head, &[])
        }
        "/status.json" => respond(
            &mut conn,
            200,
            "application/json",
            status(hub, stats).as_bytes(),
            head,
            &[],
        ),
        u if u.starts_with("/stream/") => match hub.index(&u["/stream/".len()..]) {
            Some(_) if head => respond(&mut conn, 200, MJPEG, b"", true, &[]),
            Some(i) => {
                stream(conn, hub, i);
                Ok(())
            }
            None => respond(&mut conn, 404, "text/plain", b"no such source\n", head, &[]),
        },
        u if u.starts_with("/snapshot/") => {
            let name = u["/snapshot/".len()..].trim_end_matches(".jpg");
            let jpeg = hub
                .index(name)
                .and_then(|i| hub.slots[i].0.lock().ok().and_then(|s| s.jpeg.clone()));
            match jpeg {
                Some(j) => respond(&mut conn, 200, "image/jpeg", &j, head, &[]),
                None => respond(&mut conn, 404, "text/plain", b"no frame yet\n", head, &[]),
            }
        }
        _ => respond(&mut conn, 404, "text/plain", b"not found\n", head, &[]),
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, url, "HTTP response failed");
    }
}

const MJPEG: &str = "multipart/x-mixed-replace; boundary=frame";

/// MJPEG: a multipart response written straight to the socket, one part per new frame. A
/// viewer that stops reading is dropped after the idle timeout (the socket's write timeout).
fn stream(mut w: TcpStream, hub: &Hub, source: usize) {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {MJPEG}\r\nCache-Control: no-cache, no-store\r\nConnection: close\r\n\r\n");
    if w.write_all(head.as_bytes()).and_then(|()| w.flush()).is_err() {
        return;
    }
    hub.viewers(source, 1);
    let mut seen = 0;
    while let Some((g, jpeg)) = hub.next_frame(source, seen) {
        seen = g;
        let part = format!(
            "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        let ok = w
            .write_all(part.as_bytes())
            .and_then(|()| w.write_all(&jpeg))
            .and_then(|()| w.write_all(b"\r\n"))
            .and_then(|()| w.flush());
        if ok.is_err() {
            break; // the viewer went away, or stopped reading
        }
    }
    hub.viewers(source, -1);
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A source name as one URL path segment: everything but unreserved ASCII is %XX (UTF-8).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` sequences decoded (as UTF-8, lossily); anything malformed is kept as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One source's line of `/status.json`.
#[derive(serde::Serialize)]
struct SourceStatus<'a> {
    source: &'a str,
    up: bool,
    label: String,
    score: f64,
    fps: f64,
    processed: u64,
    dropped: u64,
    reconnects: u64,
    outside_roi: f64,
    /// An ROI alert is on.
    alert: bool,
    /// The last explained frame's attention signals; null where not measured.
    entropy: f64,
    concentration: f64,
    stability: f64,
    /// Divergence from the attention baseline; null before it is learned (or without one).
    drift: f64,
    drift_alert: bool,
    /// The last sampled frame's faithfulness (confidence changes); null before one.
    faith_cam_mult: f64,
    faith_deletion: f64,
}

/// `v` to `decimals` places: the page shows no more, and an f32 widened to f64 would print
/// its noise digits. A NaN stays NaN, which serde_json writes as `null` (NaN is not JSON, and
/// the page's `JSON.parse` fails on it: a broken model outputs it).
fn rounded(v: f64, decimals: i32) -> f64 {
    let k = 10f64.powi(decimals);
    (v * k).round() / k
}

fn status(hub: &Hub, stats: &Stats) -> String {
    let items: Vec<SourceStatus> = hub
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (label, prob) = hub.slots[i]
                .0
                .lock()
                .map(|s| (s.label.clone(), s.prob))
                .unwrap_or_default();
            let st = stats.source(i);
            let get = |f: fn(&crate::stats::SourceStats) -> &std::sync::atomic::AtomicU64| {
                st.map_or(0, |s| f(s).load(Ordering::Relaxed))
            };
            let gauge = |f: fn(&crate::stats::SourceStats) -> &crate::stats::GaugeF32| {
                rounded(st.map_or(f64::NAN, |s| f(s).get() as f64), 4)
            };
            SourceStatus {
                source: name,
                up: get(|s| &s.up) == 1,
                label,
                score: rounded(prob as f64, 4),
                fps: rounded(hub.fps(i), 2),
                processed: get(|s| &s.processed),
                dropped: get(|s| &s.dropped),
                reconnects: get(|s| &s.reconnects),
                outside_roi: rounded(st.map_or(0.0, |s| s.outside_roi()) as f64, 4),
                alert: get(|s| &s.alerting) == 1,
                entropy: gauge(|s| &s.entropy),
                concentration: gauge(|s| &s.concentration),
                stability: gauge(|s| &s.stability),
                drift: gauge(|s| &s.drift),
                drift_alert: get(|s| &s.drift_alerting) == 1,
                faith_cam_mult: gauge(|s| &s.faith_cam_mult),
                faith_deletion: gauge(|s| &s.faith_deletion),
            }
        })
        .collect();
    // Serializing plain numbers and strings cannot fail; an empty list would say so anyway.
    let mut body = serde_json::to_string(&items).unwrap_or_else(|_| "[]".into());
    body.push('\n');
    body
}

/// The caption is as wide as its image and two lines high whatever it says, so a label or fps
/// change never moves the other streams (it did: a longer label widened a small stream's card).
fn page(hub: &Hub) -> String {
    let cards: String = hub
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let esc = html_escape(n);
            let url = percent_encode(n);
            format!(
                "<figure><img id=\"s{i}\" data-src=\"/stream/{url}\" alt=\"{esc}\"><figcaption><b>{esc}</b> <span id=\"t{i}\">…</span><br><span id=\"a{i}\" class=\"alert\"></span></figcaption><svg id=\"g{i}\" class=\"spark\" viewBox=\"0 0 300 40\" preserveAspectRatio=\"none\"><title>score (white) and attention outside the ROI (orange), last 5 minutes</title><polyline class=\"score\" points=\"\"/><polyline class=\"roi\" points=\"\"/></svg></figure>"
            )
        })
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>gradcamd</title>
<style>body{{font:14px sans-serif;background:#111;color:#eee;margin:1em}}figure{{display:inline-block;vertical-align:top;margin:.5em;min-width:10em}}figcaption{{width:0;min-width:100%;overflow-wrap:anywhere;line-height:1.3em;height:3.9em;overflow:hidden}}img{{max-width:640px;background:#222;display:block}}.down,.alert{{color:#f66}}.alert{{font-weight:bold}}svg.spark{{display:block;width:0;min-width:100%;height:40px;background:#1a1a1a;margin-top:.2em}}svg.spark polyline{{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}}.score{{stroke:#eee}}.roi{{stroke:#f93}}</style>
</head><body><h1>gradcamd</h1>{cards}
<p><a href="/metrics">metrics</a> · <a href="/status.json">status</a></p>
<script>
// Streams start after the page is loaded, so the load event does not wait for endless streams.
// Each source's score and outside-ROI share, one point a second for the last 5 minutes, as
// sparklines; and its alerts.
const KEEP = 300, hist = [];
const line = (vals) => vals.map((v, k) => `${{k}},${{(40 - 40 * Math.min(1, Math.max(0, v ?? 0))).toFixed(1)}}`).join(' ');
document.addEventListener('DOMContentLoaded', () => {{
  for (const img of document.querySelectorAll('img[data-src]')) img.src = img.dataset.src;
  const tick = async () => {{
    try {{
      const s = await (await fetch('/status.json')).json();
      s.forEach((x, i) => {{
        const t = document.getElementById('t' + i);
        if (!t) return;
        t.textContent = x.up ? `${{x.label}} ${{x.score === null ? '–' : x.score.toFixed(2)}} · ${{(x.fps ?? 0).toFixed(1)}} fps` : 'stream lost';
        t.className = x.up ? '' : 'down';
        t.title = t.textContent;
        const a = document.getElementById('a' + i);
        if (a) a.textContent = [x.alert ? 'ROI alert' : '', x.drift_alert ? 'attention drift' : ''].filter(Boolean).join(' · ');
        const h = hist[i] ??= {{score: [], roi: []}};
        h.score.push(x.up ? x.score : null);
        h.roi.push(x.outside_roi);
        if (h.score.length > KEEP) {{ h.score.shift(); h.roi.shift(); }}
        const g = document.getElementById('g' + i);
        if (g) {{
          g.querySelector('.score').setAttribute('points', line(h.score));
          g.querySelector('.roi').setAttribute('points', line(h.roi));
        }}
      }});
    }} catch (e) {{}}
  }};
  tick(); setInterval(tick, 1000);
}});
</script></body></html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_has_each_source_with_its_counters_and_null_for_nan() {
        let hub = Hub::new(vec!["cam \"a\"".into(), "b".into()]);
        let stats = Stats::new(2);
        for (i, (label, prob)) in [("tabby, cat", 0.123_456_f32), ("x", f32::NAN)]
            .into_iter()
            .enumerate()
        {
            if let Ok(mut s) = hub.slots[i].0.lock() {
                s.label = label.into();
                s.prob = prob;
            }
        }
        stats.sources[0].up.store(1, Ordering::Relaxed);
        stats.sources[0].processed.store(7, Ordering::Relaxed);
        stats.sources[1].dropped.store(3, Ordering::Relaxed);
        stats.sources[1].reconnects.store(2, Ordering::Relaxed);
        stats.sources[1].set_outside_roi(0.333_333);
        stats.sources[1].alerting.store(1, Ordering::Relaxed);
        stats.sources[1].entropy.set(0.812_345);
        stats.sources[1].concentration.set(0.25);
        stats.sources[1].stability.set(-0.5);
        stats.sources[1].drift.set(0.123_46);
        stats.sources[1].drift_alerting.store(1, Ordering::Relaxed);
        stats.sources[1].faith_cam_mult.set(0.012_34);
        stats.sources[1].faith_deletion.set(-0.6);
        let body = status(&hub, &stats);
        assert!(body.ends_with('\n'), "{body:?}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let want = serde_json::json!([
            {"source": "cam \"a\"", "up": true, "label": "tabby, cat", "score": 0.1235, "fps": 0.0,
             "processed": 7, "dropped": 0, "reconnects": 0, "outside_roi": 0.0, "alert": false,
             "entropy": null, "concentration": null, "stability": null, "drift": null, "drift_alert": false,
             "faith_cam_mult": null, "faith_deletion": null},
            {"source": "b", "up": false, "label": "x", "score": null, "fps": 0.0,
             "processed": 0, "dropped": 3, "reconnects": 2, "outside_roi": 0.3333, "alert": true,
             "entropy": 0.8123, "concentration": 0.25, "stability": -0.5, "drift": 0.1235, "drift_alert": true,
             "faith_cam_mult": 0.0123, "faith_deletion": -0.6},
        ]);
        assert_eq!(v, want, "{body}");
    }
}
