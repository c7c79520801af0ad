//! Inference stage: one thread that owns the ORT session (inside the [`Explainer`]). It batches
//! frames across sources (up to `batch_size`, waiting at most `batch_timeout` for a batch to
//! fill), preprocesses them into a pre-allocated NCHW buffer and explains the batch with one ORT
//! run (more for `topk` targets).
//!
//! A frame that cannot be preprocessed, or a batch that ORT fails on, is logged and counted, and
//! its frames go on without an overlay, so file outputs still keep every frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::explainer::{Explainer, TargetSpec};
use crate::frame::{Explained, Frame};
use crate::preprocess::Preprocessor;
use crate::stats::Stats;

pub struct InferConfig {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    /// What to explain, per source index.
    pub targets: Vec<TargetSpec>,
}

pub fn run(
    mut explainer: Explainer,
    mut pre: Preprocessor,
    cfg: InferConfig,
    rx: Receiver<Frame>,
    tx: Sender<Explained>,
    stats: Arc<Stats>,
) {
    let span = tracing::info_span!("infer");
    let _e = span.enter();
    let b = cfg.batch_size;
    let item_len = pre.item_len();
    let mut batch = vec![0f32; b * item_len];
    let mut frames: Vec<Frame> = Vec::with_capacity(b);
    let mut specs: Vec<TargetSpec> = Vec::with_capacity(b);
    let mut usable = vec![true; b];
    let started = Instant::now();
    let mut out_count = 0u64;

    while let Ok(first) = rx.recv() {
        frames.push(first);
        let deadline = Instant::now() + cfg.batch_timeout;
        while frames.len() < b {
            match rx.recv_deadline(deadline) {
                Ok(f) => frames.push(f),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let n = frames.len();

        let t = Instant::now();
        specs.clear();
        for (i, f) in frames.iter().enumerate() {
            specs.push(cfg.targets.get(f.source).copied().unwrap_or(TargetSpec::Top1));
            let slot = &mut batch[i * item_len..(i + 1) * item_len];
            usable[i] = match pre.fill(&f.image, slot) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(source = f.source, frame = f.seq, error = %e, "cannot preprocess frame; writing it without overlay");
                    slot.fill(0.0);
                    false
                }
            };
        }
        stats.preprocess.add(t.elapsed());

        let t = Instant::now();
        let results = explainer.explain(&batch[..n * item_len], &specs, false);
        stats
            .inference
            .add(t.elapsed().saturating_sub(explainer.cam_time));
        stats.cam.add(explainer.cam_time);
        stats.batches.fetch_add(1, Ordering::Relaxed);

        let mut results: Vec<Option<_>> = match results {
            Ok(r) => r.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::warn!(frames = n, error = %e, "inference failed for a batch; writing its frames without overlay");
                (0..n).map(|_| None).collect()
            }
        };
        for (i, frame) in frames.drain(..).enumerate() {
            out_count += 1;
            let fps = out_count as f32 / started.elapsed().as_secs_f32().max(1e-3);
            let maps = match results[i].take().filter(|_| usable[i]) {
                Some(r) => {
                    stats.explained.fetch_add(1, Ordering::Relaxed);
                    r.maps
                }
                None => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
            };
            if tx.send(Explained { frame, maps, fps }).is_err() {
                return;
            }
        }
    }
}
