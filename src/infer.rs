//! Inference stage: one thread that owns the ORT session (inside the [`Explainer`]). It reads
//! every source's channel, batches frames across sources (up to `batch_size`, waiting at most
//! `batch_timeout` after the first), preprocesses them into a pre-allocated NCHW buffer and
//! explains the batch with one ORT run (more for `topk` targets).
//!
//! A frame that cannot be preprocessed, or a batch that ORT fails on, is logged and counted, and
//! its frames go on without an overlay, so file outputs still keep every frame. "Stream lost"
//! placeholders of live sources go straight through.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use crate::explainer::{Explainer, TargetSpec};
use crate::frame::{Explained, Frame};
use crate::monitor::Monitor;
use crate::preprocess::Preprocessor;
use crate::stats::Stats;

pub struct InferConfig {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    /// What to explain, per source index.
    pub targets: Vec<TargetSpec>,
    /// Smoothing, ROI and events, per source index.
    pub monitors: Vec<Monitor>,
    pub labels: Arc<Vec<String>>,
}

/// The sources' channels, read together.
struct Inputs {
    rxs: Vec<Receiver<Frame>>,
    open: Vec<bool>,
}

enum Next {
    Frame(Frame),
    Timeout,
    Closed,
}

impl Inputs {
    /// The next frame from any open source, waiting until `deadline` (forever if `None`).
    fn next(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            let idx: Vec<usize> = (0..self.rxs.len()).filter(|&i| self.open[i]).collect();
            if idx.is_empty() {
                return Next::Closed;
            }
            let mut sel = Select::new();
            for &i in &idx {
                sel.recv(&self.rxs[i]);
            }
            let op = match deadline {
                Some(d) => match sel.select_deadline(d) {
                    Ok(op) => op,
                    Err(_) => return Next::Timeout,
                },
                None => sel.select(),
            };
            let i = idx[op.index()];
            match op.recv(&self.rxs[i]) {
                Ok(f) => return Next::Frame(f),
                Err(_) => self.open[i] = false,
            }
        }
    }
}

struct Stage {
    explainer: Explainer,
    pre: Preprocessor,
    cfg: InferConfig,
    tx: Sender<Explained>,
    stats: Arc<Stats>,
    /// Pre-allocated input batch, `batch_size` items.
    batch: Vec<f32>,
    frames: Vec<Frame>,
    specs: Vec<TargetSpec>,
    usable: Vec<bool>,
    started: Instant,
    out_count: u64,
}

pub fn run(
    explainer: Explainer,
    pre: Preprocessor,
    cfg: InferConfig,
    rxs: Vec<Receiver<Frame>>,
    tx: Sender<Explained>,
    stats: Arc<Stats>,
) {
    let span = tracing::info_span!("infer");
    let _e = span.enter();
    let b = cfg.batch_size;
    let item_len = pre.item_len();
    let mut st = Stage {
        explainer,
        pre,
        tx,
        stats,
        batch: vec![0f32; b * item_len],
        frames: Vec::with_capacity(b),
        specs: Vec::with_capacity(b),
        usable: vec![true; b],
        started: Instant::now(),
        out_count: 0,
        cfg,
    };
    let mut inputs = Inputs {
        open: vec![true; rxs.len()],
        rxs,
    };
    let mut deadline: Option<Instant> = None;
    loop {
        match inputs.next(deadline) {
            Next::Frame(f) if f.lost => {
                if !st.send(Explained {
                    frame: f,
                    maps: Vec::new(),
                    fps: 0.0,
                }) {
                    return;
                }
            }
            Next::Frame(f) => {
                if st.frames.is_empty() {
                    deadline = Some(Instant::now() + st.cfg.batch_timeout);
                }
                st.frames.push(f);
                if st.frames.len() == b {
                    deadline = None;
                    if !st.flush() {
                        return;
                    }
                }
            }
            Next::Timeout => {
                deadline = None;
                if !st.flush() {
                    return;
                }
            }
            Next::Closed => {
                st.flush();
                return;
            }
        }
    }
}

impl Stage {
    fn send(&mut self, mut e: Explained) -> bool {
        self.out_count += 1;
        e.fps = self.out_count as f32 / self.started.elapsed().as_secs_f32().max(1e-3);
        self.tx.send(e).is_ok()
    }

    /// Explains the frames gathered so far and sends them on; false when the next stage has
    /// shut down.
    fn flush(&mut self) -> bool {
        let n = self.frames.len();
        if n == 0 {
            return true;
        }
        let item_len = self.pre.item_len();
        let t = Instant::now();
        self.specs.clear();
        for (i, f) in self.frames.iter().enumerate() {
            self.specs.push(
                self.cfg
                    .targets
                    .get(f.source)
                    .copied()
                    .unwrap_or(TargetSpec::Top1),
            );
            let slot = &mut self.batch[i * item_len..(i + 1) * item_len];
            self.usable[i] = match self.pre.fill(&f.image, slot) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(source = f.source, frame = f.seq, error = %e, "cannot preprocess frame; writing it without overlay");
                    slot.fill(0.0);
                    false
                }
            };
        }
        self.stats.preprocess.add(t.elapsed());

        let t = Instant::now();
        let results = self
            .explainer
            .explain(&self.batch[..n * item_len], &self.specs, false);
        let cam_time = self.explainer.cam_time;
        self.stats.inference.add(t.elapsed().saturating_sub(cam_time));
        self.stats.cam.add(cam_time);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.last_batch.store(n as u64, Ordering::Relaxed);

        let mut results: Vec<Option<_>> = match results {
            Ok(r) => r.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::warn!(frames = n, error = %e, "inference failed for a batch; writing its frames without overlay");
                (0..n).map(|_| None).collect()
            }
        };
        let frames: Vec<Frame> = self.frames.drain(..).collect();
        for (i, frame) in frames.into_iter().enumerate() {
            let maps = match results[i].take().filter(|_| self.usable[i]) {
                Some(mut r) => {
                    self.stats.explained.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = self.cfg.monitors.get_mut(frame.source) {
                        let o = m.observe(frame.seq, frame.pts_ms, &mut r.maps, &self.cfg.labels);
                        if let Some(s) = self.stats.source(frame.source) {
                            if let Some(v) = o.outside_roi {
                                s.set_outside_roi(v);
                            }
                            if o.alert {
                                s.alerts.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if let Some(s) = self.stats.source(frame.source) {
                        s.processed.fetch_add(1, Ordering::Relaxed);
                    }
                    r.maps
                }
                None => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
            };
            if !self.send(Explained {
                frame,
                maps,
                fps: 0.0,
            }) {
                return false;
            }
        }
        true
    }
}
