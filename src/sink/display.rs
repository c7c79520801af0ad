//! Display sink: one OpenCV window per source, all driven by one thread (GUI toolkits want a
//! single GUI thread). `q` or Esc in a window stops the run like Ctrl-C. Frames that arrive
//! while the window is busy are skipped: a window shows the present, it does not queue.
//!
//! OpenCV's Qt backend aborts the whole process when it cannot reach a display, so
//! [`check_display`] looks for one before any window is opened.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use opencv::highgui;

use crate::error::{fail, Kind};
use crate::frame::Shown;

/// Fails unless a window can be opened: an X11 display whose socket exists, a Wayland socket,
/// or Qt's offscreen platform (`QT_QPA_PLATFORM=offscreen`, for tests).
pub(crate) fn check_display() -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if env("QT_QPA_PLATFORM").is_some_and(|p| p == "offscreen") {
        return Ok(());
    }
    if let Some(d) = env("DISPLAY") {
        // ":0" or ":0.0" is a local socket; "host:0" a TCP display we cannot cheaply check.
        if let Some(n) = d.strip_prefix(':') {
            let n = n.split('.').next().unwrap_or("0");
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                return Ok(());
            }
            return Err(fail(Kind::Output, format!("display {d} has no X server (no /tmp/.X11-unix/X{n}); start one, or watch over HTTP with --http")));
        }
        return Ok(());
    }
    if let (Some(w), Some(dir)) = (env("WAYLAND_DISPLAY"), env("XDG_RUNTIME_DIR")) {
        if Path::new(&dir).join(&w).exists() {
            return Ok(());
        }
    }
    Err(fail(Kind::Output, "no display for the window: DISPLAY is not set; run it in a desktop session, or watch over HTTP with --http"))
}

pub(crate) struct Display {
    pub tx: Sender<Shown>,
    rx: Receiver<Shown>,
    names: Vec<String>,
}

impl Display {
    pub(crate) fn new(names: Vec<String>) -> Display {
        let (tx, rx) = crossbeam_channel::bounded(2);
        Display { tx, rx, names }
    }

    /// Shows frames until every sender is gone; a `q`/Esc key sets `stop`.
    pub(crate) fn run(self, stop: Arc<AtomicBool>) {
        let Display { tx, rx, names } = self;
        drop(tx);
        let span = tracing::info_span!("display");
        let _e = span.enter();
        let title = |i: usize| format!("gradcamd: {}", names.get(i).map_or("?", |s| s.as_str()));
        let mut opened: Vec<usize> = Vec::new();
        for Shown { source: i, image: m } in rx {
            if !opened.contains(&i) {
                let _ = highgui::named_window(&title(i), highgui::WINDOW_AUTOSIZE);
                opened.push(i);
            }
            if let Err(e) = highgui::imshow(&title(i), &m) {
                tracing::warn!(error = %e, "cannot show frame");
            }
            let key = highgui::wait_key(1).unwrap_or(-1);
            if key == 'q' as i32 || key == 27 {
                tracing::info!("window closed with q/Esc; stopping");
                stop.store(true, Ordering::SeqCst);
            }
        }
        for i in opened {
            let _ = highgui::destroy_window(&title(i));
        }
    }
}
