//! Sinks: where annotated frames go. One thread per source re-orders that source's frames by
//! `seq` (render workers finish out of order) and hands each to the source's outputs: a video
//! file ([`file`]) and the HTTP hub ([`http`]).
//!
//! Frames of a file source are written strictly by `seq`. A live source can skip numbers (the
//! frames capture replaced), so its frames go out as they come, dropping any that arrive after
//! a newer one went out.

pub mod display;
pub mod file;
pub mod http;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::frame::Annotated;
use crate::stats::Stats;
use file::{FileSink, Written};
use http::Hub;

/// The outputs of one source.
pub struct SourceSink {
    pub index: usize,
    pub file: Option<FileSink>,
    pub hub: Option<Arc<Hub>>,
    /// The display thread's input, when this source has a window.
    pub display: Option<crossbeam_channel::Sender<(usize, opencv::core::Mat)>>,
    /// Wait for every `seq` (file sources) instead of dropping late frames (live).
    pub strict_order: bool,
}

impl SourceSink {
    /// Runs until the input closes; returns what the file output wrote, if there is one.
    /// `on_frame` is called after each frame (progress bar).
    pub fn run(
        mut self,
        rx: Receiver<Annotated>,
        stats: Arc<Stats>,
        on_frame: impl Fn(u64),
    ) -> Option<Written> {
        let span = tracing::info_span!("sink", source = self.index);
        let _e = span.enter();
        let mut pending: BTreeMap<u64, Annotated> = BTreeMap::new();
        let mut next = 0u64;
        let mut written = 0u64;
        for a in rx {
            if self.strict_order {
                pending.insert(a.seq, a);
                while let Some(a) = pending.remove(&next) {
                    self.emit(a, &stats, &mut written);
                    on_frame(written);
                    next += 1;
                }
            } else if a.seq >= next {
                next = a.seq + 1;
                self.emit(a, &stats, &mut written);
                on_frame(written);
            }
        }
        // Only reachable with gaps, which file capture never makes; write what is left in order.
        for (_, a) in std::mem::take(&mut pending) {
            self.emit(a, &stats, &mut written);
        }
        self.file.take().map(|f| f.finish(written))
    }

    fn emit(&mut self, a: Annotated, stats: &Stats, written: &mut u64) {
        let t = Instant::now();
        if let Some(f) = self.file.as_mut() {
            match f.write_frame(&a.image) {
                Ok(()) => *written += 1,
                Err(e) => tracing::warn!(error = %e, "cannot write frame"),
            }
        }
        if let Some(h) = &self.hub {
            h.publish(a.source, &a.image, &a.label, a.prob);
        }
        if let Some(d) = &self.display {
            // A busy window skips frames rather than queueing them.
            let _ = d.try_send((a.source, a.image.clone()));
        }
        stats.encode.add(t.elapsed());
        stats.written.fetch_add(1, Ordering::Relaxed);
        stats.latency.observe(a.captured.elapsed());
    }
}
