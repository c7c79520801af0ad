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

use crate::explainer::{ClassMap, Explainer, TargetSpec};
use crate::frame::{Explained, Frame, Pool};
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
    /// CAM map buffers handed back by render.
    pub maps_pool: Pool<Vec<ClassMap>>,
}

/// The sources' channels, read together through one `Select` built once (a closed channel is
/// removed from it), so waiting for a frame allocates nothing.
struct Inputs<'a> {
    rxs: &'a [Receiver<Frame>],
    sel: Select<'a>,
    open: usize,
}

enum Next {
    Frame(Frame),
    Timeout,
    Closed,
}

impl<'a> Inputs<'a> {
    fn new(rxs: &'a [Receiver<Frame>]) -> Self {
        let mut sel = Select::new();
        for r in rxs {
            sel.recv(r);
        }
        Inputs {
            rxs,
            sel,
            open: rxs.len(),
        }
    }

    /// The next frame from any open source, waiting until `deadline` (forever if `None`).
    fn next(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            if self.open == 0 {
                return Next::Closed;
            }
            let op = match deadline {
                Some(d) => match self.sel.select_deadline(d) {
                    Ok(op) => op,
                    Err(_) => return Next::Timeout,
                },
                None => self.sel.select(),
            };
            let i = op.index();
            match op.recv(&self.rxs[i]) {
                Ok(f) => return Next::Frame(f),
                Err(_) => {
                    self.sel.remove(i);
                    self.open -= 1;
                }
            }
        }
    }
}

struct Stage<'a> {
    explainer: &'a mut Explainer,
    meter: &'a mut crate::alloc::Meter,
    pre: Preprocessor,
    cfg: InferConfig,
    tx: Sender<Explained>,
    stats: Arc<Stats>,
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
    // ORT's intra-op threads work for this stage: their CPU is inference time too. Read while
    // the session (and its pool) is alive.
    let pool = crate::engine::POOL_THREADS;
    let before = crate::cpu::threads_cpu(pool);
    let mut explainer = explainer;
    let mut meter = crate::alloc::Meter::new(crate::stats::WARM_FRAMES);
    run_loop(&mut explainer, pre, cfg, rxs, tx, &stats, &mut meter);
    stats.alloc_infer.record(&meter);
    stats
        .inference
        .add(crate::cpu::threads_cpu(pool).saturating_sub(before));
}

fn run_loop(
    explainer: &mut Explainer,
    pre: Preprocessor,
    cfg: InferConfig,
    rxs: Vec<Receiver<Frame>>,
    tx: Sender<Explained>,
    stats: &Arc<Stats>,
    meter: &mut crate::alloc::Meter,
) {
    let b = cfg.batch_size;
    let mut st = Stage {
        explainer,
        pre,
        tx,
        stats: stats.clone(),
        meter,
        frames: Vec::with_capacity(b),
        specs: Vec::with_capacity(b),
        usable: vec![true; b],
        started: Instant::now(),
        out_count: 0,
        cfg,
    };
    let mut inputs = Inputs::new(&rxs);
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

impl Stage<'_> {
    fn send(&mut self, e: Explained) -> bool {
        send(&self.tx, &mut self.out_count, self.started, e)
    }

    /// Explains the frames gathered so far and sends them on; false when the next stage has
    /// shut down. Frames are preprocessed straight into the session's batch buffer.
    fn flush(&mut self) -> bool {
        let n = self.frames.len();
        if n == 0 {
            return true;
        }
        self.meter.tick(n as u64);
        let item_len = self.pre.item_len();
        let t = crate::cpu::Span::start();
        self.specs.clear();
        let buf = match self.explainer.input_mut() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no batch buffer; writing the frames without overlay");
                &mut []
            }
        };
        for (i, f) in self.frames.iter().enumerate() {
            self.specs.push(
                self.cfg
                    .targets
                    .get(f.source)
                    .copied()
                    .unwrap_or(TargetSpec::Top1),
            );
            let Some(slot) = buf.get_mut(i * item_len..(i + 1) * item_len) else {
                self.usable[i] = false;
                continue;
            };
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

        let t = crate::cpu::Span::start();
        let results = self.explainer.explain_prepared(&self.specs, false);
        let spent = t.elapsed();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.last_batch.store(n as u64, Ordering::Relaxed);

        let outs = match results {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(frames = n, error = %e, "inference failed for a batch; writing its frames without overlay");
                None
            }
        };
        let mut frames = std::mem::take(&mut self.frames);
        for (i, frame) in frames.drain(..).enumerate() {
            // The map buffers come back from render: once warm, nothing is allocated here.
            let mut maps = self.cfg.maps_pool.take().unwrap_or_default();
            match outs.as_ref().and_then(|o| o.get(i)).filter(|_| self.usable[i]) {
                Some(r) => {
                    maps.truncate(r.maps.len());
                    for (k, m) in r.maps.iter().enumerate() {
                        match maps.get_mut(k) {
                            Some(d) => d.copy_from(m),
                            None => maps.push(m.clone()),
                        }
                    }
                    self.stats.explained.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = self.cfg.monitors.get_mut(frame.source) {
                        let o = m.observe(frame.seq, frame.pts_ms, &mut maps, &self.cfg.labels);
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
                }
                None => {
                    maps.clear();
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let e = Explained {
                frame,
                maps,
                fps: 0.0,
            };
            if !send(&self.tx, &mut self.out_count, self.started, e) {
                return false;
            }
        }
        self.frames = frames;
        let cam_time = self.explainer.cam_time;
        self.stats.inference.add(spent.saturating_sub(cam_time));
        self.stats.cam.add(cam_time);
        true
    }
}

fn send(tx: &Sender<Explained>, count: &mut u64, started: Instant, mut e: Explained) -> bool {
    *count += 1;
    e.fps = *count as f32 / started.elapsed().as_secs_f32().max(1e-3);
    tx.send(e).is_ok()
}
