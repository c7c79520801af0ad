//! HTTP server (tiny_http): a page with every source's explained stream, MJPEG streams, a JPEG
//! snapshot, Prometheus metrics, health and a JSON status.
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

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
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
pub struct Hub {
    names: Vec<String>,
    slots: Vec<(Mutex<Slot>, Condvar)>,
    closed: AtomicBool,
}

impl Hub {
    pub fn new(names: Vec<String>) -> Hub {
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

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Whether a frame of `source` would be shown now: someone watches it, or the snapshot is
    /// due. Render asks before drawing; [`Hub::publish`] encodes only frames it drew.
    pub fn wants_frame(&self, source: usize) -> bool {
        self.slots
            .get(source)
            .and_then(|(m, _)| m.lock().ok())
            .is_some_and(|s| s.wants_frame())
    }

    /// Publishes a source's frame: its label, score and rate always, the image when it was
    /// drawn and is wanted.
    pub fn publish(&self, a: &crate::frame::Annotated) {
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
    pub fn close(&self) {
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

pub struct HttpServer {
    pub addr: String,
    server: Arc<tiny_http::Server>,
    pub hub: Arc<Hub>,
}

pub struct Running {
    server: Arc<tiny_http::Server>,
    hub: Arc<Hub>,
    thread: JoinHandle<()>,
}

impl HttpServer {
    /// Binds now, so a taken or invalid address fails before any work starts.
    pub fn bind(addr: &str, names: Vec<String>) -> anyhow::Result<HttpServer> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            fail(
                Kind::Output,
                format!("cannot serve HTTP on {addr}: {e}; pick another --http address"),
            )
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .map_or_else(|| addr.to_string(), |a| a.to_string());
        Ok(HttpServer {
            addr,
            server: Arc::new(server),
            hub: Arc::new(Hub::new(names)),
        })
    }

    /// Serves until [`Running::stop`]; each request gets its own thread (streams are long).
    pub fn start(self, stats: Arc<Stats>) -> anyhow::Result<Running> {
        let (server, hub) = (self.server.clone(), self.hub.clone());
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            let span = tracing::info_span!("http");
            let _e = span.enter();
            while let Ok(req) = server.recv() {
                let (hub, stats) = (hub.clone(), stats.clone());
                let _ = std::thread::Builder::new()
                    .name("http-req".into())
                    .spawn(move || handle(req, &hub, &stats));
            }
        })?;
        tracing::info!(addr = %self.addr, "HTTP: page on http://{}/, metrics on /metrics", self.addr);
        Ok(Running {
            server: self.server,
            hub: self.hub,
            thread,
        })
    }
}

impl Running {
    pub fn stop(self) {
        self.hub.close();
        self.server.unblock();
        let _ = self.thread.join();
    }
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    // Only called with constant ASCII names and values.
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap_or_else(|_| {
        tiny_http::Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("constant header")
    })
}

fn text(body: String, content_type: &str, code: u16) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", content_type))
}

fn handle(req: tiny_http::Request, hub: &Hub, stats: &Stats) {
    let url = req.url().split('?').next().unwrap_or("/").to_string();
    let r = match url.as_str() {
        "/" => req.respond(text(page(hub), "text/html; charset=utf-8", 200)),
        "/metrics" => req.respond(text(
            crate::metrics::render(stats, &hub.names),
            "text/plain; version=0.0.4",
            200,
        )),
        "/healthz" => {
            let up = stats.sources.iter().any(|s| s.up.load(Ordering::Relaxed) == 1);
            let (body, code) = if up {
                ("ok\n", 200)
            } else {
                ("no source is up\n", 503)
            };
            req.respond(text(body.into(), "text/plain", code))
        }
        "/status.json" => req.respond(text(status(hub, stats), "application/json", 200)),
        u if u.starts_with("/stream/") => match hub.index(&u["/stream/".len()..]) {
            Some(i) => {
                stream(req, hub, i);
                Ok(())
            }
            None => req.respond(text("no such source\n".into(), "text/plain", 404)),
        },
        u if u.starts_with("/snapshot/") => {
            let name = u["/snapshot/".len()..].trim_end_matches(".jpg");
            let jpeg = hub
                .index(name)
                .and_then(|i| hub.slots[i].0.lock().ok().and_then(|s| s.jpeg.clone()));
            match jpeg {
                Some(j) => req.respond(
                    tiny_http::Response::from_data(j.to_vec())
                        .with_header(header("Content-Type", "image/jpeg")),
                ),
                None => req.respond(text("no frame yet\n".into(), "text/plain", 404)),
            }
        }
        _ => req.respond(text("not found\n".into(), "text/plain", 404)),
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, url, "HTTP response failed");
    }
}

/// MJPEG: a multipart response written straight to the socket, one part per new frame.
fn stream(req: tiny_http::Request, hub: &Hub, source: usize) {
    let mut w = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\nCache-Control: no-cache, no-store\r\nConnection: close\r\n\r\n";
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
            break; // the viewer went away
        }
    }
    hub.viewers(source, -1);
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn status(hub: &Hub, stats: &Stats) -> String {
    let items: Vec<String> = hub
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (label, prob) = hub.slots[i].0.lock().map(|s| (s.label.clone(), s.prob)).unwrap_or_default();
            let st = stats.source(i);
            let get = |f: fn(&crate::stats::SourceStats) -> &std::sync::atomic::AtomicU64| st.map_or(0, |s| f(s).load(Ordering::Relaxed));
            format!(
                "{{\"source\":{},\"up\":{},\"label\":{},\"score\":{:.4},\"fps\":{:.2},\"processed\":{},\"dropped\":{},\"reconnects\":{},\"outside_roi\":{:.4}}}",
                json_str(name),
                get(|s| &s.up) == 1,
                json_str(&label),
                prob,
                hub.fps(i),
                get(|s| &s.processed),
                get(|s| &s.dropped),
                get(|s| &s.reconnects),
                st.map_or(0.0, |s| s.outside_roi())
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

/// The caption is as wide as its image and two lines high whatever it says, so a label or fps
/// change never moves the other streams (it did: a longer label widened a small stream's card).
fn page(hub: &Hub) -> String {
    let cards: String = hub
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let esc = n.replace('&', "&amp;").replace('<', "&lt;").replace('"', "&quot;");
            format!(
                "<figure><img id=\"s{i}\" data-src=\"/stream/{esc}\" alt=\"{esc}\"><figcaption><b>{esc}</b> <span id=\"t{i}\">…</span></figcaption></figure>"
            )
        })
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>gradcamd</title>
<style>body{{font:14px sans-serif;background:#111;color:#eee;margin:1em}}figure{{display:inline-block;vertical-align:top;margin:.5em;min-width:10em}}figcaption{{width:0;min-width:100%;overflow-wrap:anywhere;line-height:1.3em;height:2.6em;overflow:hidden}}img{{max-width:640px;background:#222;display:block}}.down{{color:#f66}}</style>
</head><body><h1>gradcamd</h1>{cards}
<p><a href="/metrics">metrics</a> · <a href="/status.json">status</a></p>
<script>
// Streams start after the page is loaded, so the load event does not wait for endless streams.
document.addEventListener('DOMContentLoaded', () => {{
  for (const img of document.querySelectorAll('img[data-src]')) img.src = img.dataset.src;
  const tick = async () => {{
    try {{
      const s = await (await fetch('/status.json')).json();
      s.forEach((x, i) => {{
        const t = document.getElementById('t' + i);
        if (!t) return;
        t.textContent = x.up ? `${{x.label}} ${{x.score.toFixed(2)}} · ${{x.fps.toFixed(1)}} fps` : 'stream lost';
        t.className = x.up ? '' : 'down';
        t.title = t.textContent;
      }});
    }} catch (e) {{}}
  }};
  tick(); setInterval(tick, 1000);
}});
</script></body></html>
"#
    )
}
