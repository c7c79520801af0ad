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

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::frame::{Annotated, Pool};
use crate::stats::Stats;
use file::{FileSink, Written};
use http::Hub;
use opencv::core::Mat;

/// The outputs of one source.
pub struct SourceSink {
    pub index: usize,
    pub file: Option<FileSink>,
    pub hub: Option<Arc<Hub>>,
    /// The display thread's input, when this source has a window.
    pub display: Option<crossbeam_channel::Sender<(usize, opencv::core::Mat)>>,
    /// Wait for every `seq` (file sources) instead of dropping late frames (live).
    pub strict_order: bool,
    /// Where written frames' buffers go back to capture.
    pub recycle: Option<Pool<Mat>>,
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
        // Frames `next`, `next + 1`, ... that arrived early (render workers finish out of order);
        // grows to the largest reordering distance once, then is reused.
        let mut pending: VecDeque<Option<Annotated>> = VecDeque::new();
        let mut next = 0u64;
        let mut written = 0u64;
        let mut meter = crate::alloc::Meter::new(crate::stats::WARM_FRAMES);
        for a in rx {
            meter.tick(1);
            if self.strict_order {
                let Some(at) = a.seq.checked_sub(next).map(|d| d as usize) else {
                    continue; // already written: cannot happen, seq is unique per source
                };
                if pending.len() <= at {
                    pending.resize_with(at + 1, || None);
                }
                pending[at] = Some(a);
                while let Some(Some(_)) = pending.front() {
                    if let Some(Some(a)) = pending.pop_front() {
                        self.emit(a, &stats, &mut written);
                        on_frame(written);
                        next += 1;
                    }
                }
            } else if a.seq >= next {
                next = a.seq + 1;
                self.emit(a, &stats, &mut written);
                on_frame(written);
            }
        }
        stats.alloc_sink.record(&meter);
        // Only reachable with gaps, which file capture never makes; write what is left in order.
        for a in pending.into_iter().flatten() {
            self.emit(a, &stats, &mut written);
        }
        self.file.take().map(|f| f.finish(written))
    }

    fn emit(&mut self, a: Annotated, stats: &Stats, written: &mut u64) {
        let t = crate::cpu::Span::start();
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
        if let Some(p) = &self.recycle {
            p.give(a.image);
        }
    }
}
