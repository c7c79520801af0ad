//! Inference stage: one thread that owns the ORT session. It batches frames across sources
//! (up to `batch_size`, waiting at most `batch_timeout` for a batch to fill), preprocesses them
//! into a pre-allocated NCHW buffer, runs the augmented model once per batch and computes each
//! frame's CAM from the batch outputs while they are still borrowed from ORT (no copies of A/dA).
//!
//! A frame that cannot be preprocessed, or a batch that ORT fails on, is logged and counted, and
//! its frames go on without an overlay, so file outputs still keep every frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ndarray::{Array2, Axis};

use crate::cam::{self, Method};
use crate::engine::{BatchView, Engine};
use crate::frame::{Explained, Frame};
use crate::onnx::augment::FcHead;
use crate::preprocess::Preprocessor;
use crate::stats::Stats;

pub struct InferConfig {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub method: Method,
    /// Class to explain, or -1 for each frame's top-1.
    pub target: i64,
    /// FC weights for `Method::Cam`.
    pub fc: Option<FcHead>,
}

/// Per-item result computed inside the ORT borrow.
pub struct ItemResult {
    pub class: usize,
    pub prob: f32,
    pub cam: Array2<f32>,
}

pub fn run(
    mut engine: Engine,
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
    let (h, w) = pre.input_hw();
    let targets = vec![cfg.target; b];
    let mut frames: Vec<Frame> = Vec::with_capacity(b);
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
        for (i, f) in frames.iter().enumerate() {
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
        let input = match ndarray::ArrayView4::from_shape((n, 3, h, w), &batch[..n * item_len]) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "batch buffer shape mismatch");
                return;
            }
        };
        let mut cam_time = Duration::ZERO;
        let results = engine.run_with(input, &targets[..n], |out| {
            let tc = Instant::now();
            let r = explain_batch(&out, n, &cfg);
            cam_time = tc.elapsed();
            r
        });
        stats.inference.add(t.elapsed().saturating_sub(cam_time));
        stats.cam.add(cam_time);
        stats.batches.fetch_add(1, Ordering::Relaxed);

        let mut results = match results {
            Ok(r) => r.into_iter().map(Some).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(frames = n, error = %e, "inference failed for a batch; writing its frames without overlay");
                (0..n).map(|_| None).collect()
            }
        };
        for (i, frame) in frames.drain(..).enumerate() {
            out_count += 1;
            let fps = out_count as f32 / started.elapsed().as_secs_f32().max(1e-3);
            let r = results[i].take().filter(|_| usable[i]);
            let explained = match r {
                Some(r) => {
                    stats.explained.fetch_add(1, Ordering::Relaxed);
                    Explained {
                        frame,
                        class: r.class,
                        prob: r.prob,
                        cam: Some(r.cam),
                        fps,
                    }
                }
                None => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    Explained {
                        frame,
                        class: 0,
                        prob: 0.0,
                        cam: None,
                        fps,
                    }
                }
            };
            if tx.send(explained).is_err() {
                return;
            }
        }
    }
}

/// Class, probability and raw CAM for the first `n` items of a batch.
pub fn explain_batch(out: &BatchView, n: usize, cfg: &InferConfig) -> Vec<ItemResult> {
    (0..n)
        .map(|i| {
            let class = out.class[i].max(0) as usize;
            let logits = out.logits.index_axis(Axis(0), i);
            let prob = softmax_at(class, logits.iter().copied());
            let a = out.a.index_axis(Axis(0), i);
            let cam = match (&out.cam, cfg.method) {
                // The in-graph map is Grad-CAM, already after its ReLU.
                (Some(c), Method::GradCam) => c.index_axis(Axis(0), i).to_owned(),
                _ => {
                    let fc_row = cfg.fc.as_ref().and_then(|fc| {
                        fc.weights
                            .get(class * fc.channels..(class + 1) * fc.channels)
                            .map(ndarray::ArrayView1::from)
                    });
                    cam::compute(cfg.method, a, out.da.index_axis(Axis(0), i), fc_row)
                }
            };
            ItemResult { class, prob, cam }
        })
        .collect()
}

/// Softmax probability of `class`, computed stably.
pub fn softmax_at(class: usize, logits: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    let mut at = 0.0f64;
    for (i, v) in logits.enumerate() {
        let e = ((v - max) as f64).exp();
        sum += e;
        if i == class {
            at = e;
        }
    }
    (at / sum) as f32
}
