//! Counters and per-stage CPU time, shared by all stage threads. Lock-free: stages add with
//! relaxed atomics, readers (the progress bar, `bench`, the final summary) take snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Timer(AtomicU64);

impl Timer {
    pub fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn secs(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

#[derive(Default)]
pub struct Stats {
    pub captured: AtomicU64,
    /// Live frames dropped because the pipeline was full.
    pub dropped: AtomicU64,
    pub explained: AtomicU64,
    /// Frames that could not be explained (written without overlay).
    pub failed: AtomicU64,
    pub written: AtomicU64,
    pub batches: AtomicU64,
    pub decode: Timer,
    pub preprocess: Timer,
    pub inference: Timer,
    pub cam: Timer,
    pub render: Timer,
    pub encode: Timer,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Seconds spent in each stage, summed over its threads.
    pub fn stage_seconds(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("decode", self.decode.secs()),
            ("preprocess", self.preprocess.secs()),
            ("inference", self.inference.secs()),
            ("cam", self.cam.secs()),
            ("render", self.render.secs()),
            ("encode", self.encode.secs()),
        ]
    }
}
