//! Inference stage: a batching thread and one thread per ORT session (each owned by an
//! [`Explainer`]).
//!
//! - `batch` reads every source's channel, batches frames across sources (up to `batch_size`,
//!   waiting at most `batch_timeout` after the first) and preprocesses each frame, as it
//!   arrives, straight into a free input slot of one of the sessions;
//! - `infer-N` runs its session's full slots and computes the CAMs; finished batches go through
//!   a shared reorder buffer, so that frames leave (and per-source monitors see them) in batch
//!   order, without a worker ever waiting for another.
//!
//! Each session has two input slots, so the next batch is preprocessed while the session runs
//! this one. A slot goes back to the batcher as soon as its batch has run, not when the batch's
//! turn comes in the reorder buffer: a session that finished early would otherwise wait for the
//! other's batch before it got new work (12 ms every other batch, bench/NOTES.md). On the CPU,
//! two sessions of one thread each beat one session of two threads: they never wait on each
//! other inside an operator, which matters when decode, render and encode take
//! turns on the same cores (bench/NOTES.md).
//!
//! A frame that cannot be preprocessed, or a batch that ORT fails on, is logged and counted, and
//! its frames go on without an overlay, so file outputs still keep every frame. "Stream lost"
//! placeholders of live sources go straight through.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Select, Sender};

use crate::engine::InputSlot;
use crate::explainer::{Explainer, TargetSpec};
use crate::frame::{ClassMap, Explained, Frame, Pool};
use crate::monitor::Monitor;
use crate::preprocess::Preprocessor;
use crate::stats::Stats;

/// The "model output NaN" warning is said once per process, not once per frame.
static NAN_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Input slots in rotation between the batcher and each session.
pub const SLOTS: usize = 2;

/// Batches in flight per session: in its slots, and finished, waiting for their turn.
pub const CARRIERS: usize = 2 * SLOTS;

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
    /// How many frames the sources will send, when every one is a file that says so: the last
    /// frames are then spread over the sessions (see [`batch_target`]).
    pub expected_frames: Option<u64>,
}

/// How many frames the next batch gets, `left` frames before the end of the input when that is
/// known. Near the end the batches shrink so that every session is handed some of the last
/// frames and they finish together: on a 120-frame clip, one session running the last batch of
/// 8 alone left a core idle for 50 ms, 10% of the run. Small batches cost nothing on the CPU
/// (batch 1–4 run as fast per frame as batch 8). One session has nobody to wait for.
pub fn batch_target(b: usize, sessions: usize, left: Option<u64>) -> usize {
    match left {
        Some(left) if sessions > 1 && left > 0 => {
            let share = left.div_ceil((sessions * SLOTS) as u64);
            usize::try_from(share).unwrap_or(b).clamp(1, b)
        }
        _ => b,
    }
}

/// One batch on its way: an input slot of session `worker` and the frames preprocessed into it.
/// The carrier itself (its buffers) is recycled through the reorder buffer; the slot goes back
/// on its own once the batch has run.
struct Batch {
    worker: usize,
    /// Order of the batch: frames leave inference in this order.
    seq: u64,
    slot: Option<InputSlot>,
    frames: Vec<Frame>,
    specs: Vec<TargetSpec>,
    /// Whether frame i was preprocessed (else it goes on without overlay).
    usable: Vec<bool>,
    /// Frame i's maps once explained (empty: not explained).
    maps: Vec<Vec<ClassMap>>,
}

/// Finished batches waiting for their turn, and what is done to them in batch order.
struct Post {
    next: u64,
    /// The next stage shut down.
    closed: bool,
    /// Batch `next + i` at index i, once finished.
    waiting: std::collections::VecDeque<Option<Batch>>,
    monitors: Vec<Monitor>,
    /// Each source's explained frames per second, for its HUD.
    rates: Vec<crate::stats::RecentRate>,
    /// Where finished batches go back to the batcher; dropped once the next stage has shut
    /// down, so that a batcher waiting for a free slot stops.
    free: Option<Sender<Batch>>,
}

/// Runs until every source has closed (or the next stage has), and gives the explainers back:
/// destroying two sessions takes ~12 ms of CPU, which the caller spends after the outputs are
/// finalized rather than beside the last frames' render and encode.
pub fn run(
    explainers: Vec<Explainer>,
    pre: Preprocessor,
    cfg: InferConfig,
    rxs: Vec<Receiver<Frame>>,
    tx: Sender<Explained>,
    stats: Arc<Stats>,
) -> Vec<Explainer> {
    let span = tracing::info_span!("infer");
    let _e = span.enter();
    // ORT's intra-op threads work for this stage: their CPU is inference time too. Read while
    // the sessions (and their pools) are alive.
    let pool = crate::engine::POOL_THREADS;
    let before = crate::cpu::threads_cpu(pool);
    let mut explainers = explainers;
    let b = cfg.batch_size.max(1);
    let sessions = explainers.len().max(1);
    let (free_tx, free_rx) = bounded::<Batch>(CARRIERS * sessions);
    for _ in 0..CARRIERS * sessions {
        let _ = free_tx.send(Batch {
            worker: 0,
            seq: 0,
            slot: None,
            frames: Vec::with_capacity(b),
            specs: Vec::with_capacity(b),
            usable: Vec::with_capacity(b),
            maps: (0..b).map(|_| Vec::new()).collect(),
        });
    }
    let (slot_tx, slot_rx) = bounded::<(usize, InputSlot)>(SLOTS * sessions);
    let mut full_txs = Vec::new();
    let mut full_rxs = Vec::new();
    let mut slots: Vec<Vec<InputSlot>> = Vec::new();
    for ex in explainers.iter_mut() {
        let (t, r) = bounded::<Batch>(SLOTS);
        full_txs.push(t);
        full_rxs.push(r);
        let mut mine = Vec::new();
        for _ in 0..SLOTS {
            match ex.take_slot() {
                Ok(slot) => mine.push(slot),
                Err(e) => tracing::warn!(error = %e, "fewer input slots than planned"),
            }
        }
        slots.push(mine);
    }
    // Round-robin from the start, so that the second session's first batch is the second
    // batch, not the third.
    for _ in 0..SLOTS {
        for (w, mine) in slots.iter_mut().enumerate() {
            if let Some(slot) = mine.pop() {
                let _ = slot_tx.send((w, slot));
            }
        }
    }
    let InferConfig {
        targets,
        monitors,
        labels,
        maps_pool,
        batch_timeout,
        expected_frames,
        ..
    } = cfg;
    let post = std::sync::Mutex::new(Post {
        next: 0,
        closed: false,
        waiting: std::collections::VecDeque::with_capacity(CARRIERS * sessions),
        rates: monitors.iter().map(|_| Default::default()).collect(),
        monitors,
        free: Some(free_tx),
    });
    let started = Instant::now();
    std::thread::scope(|scope| {
        let batcher = std::thread::Builder::new()
            .name("batch".into())
            .spawn_scoped(scope, {
                let (stats, tx) = (stats.clone(), tx.clone());
                let (rxs, targets) = (&rxs, &targets);
                let rx = Rx {
                    carriers: free_rx,
                    slots: slot_rx,
                };
                move || {
                    batch(
                        rxs,
                        pre,
                        targets,
                        (b, batch_timeout, expected_frames),
                        rx,
                        full_txs,
                        tx,
                        &stats,
                    )
                }
            });
        if let Err(e) = batcher {
            tracing::error!(error = %e, "cannot start the batching thread");
            return;
        }
        for (w, (explainer, full_rx)) in explainers.iter_mut().zip(full_rxs).enumerate() {
            let mut st = Stage {
                explainer,
                labels: &labels,
                maps_pool: maps_pool.clone(),
                slots: slot_tx.clone(),
                tx: tx.clone(),
                stats: &stats,
                post: &post,
                started,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("infer-{w}"))
                .spawn_scoped(scope, move || {
                    let span = tracing::info_span!("infer", worker = w);
                    let _e = span.enter();
                    let mut meter = crate::alloc::Meter::new(crate::stats::WARM_FRAMES);
                    for batch in full_rx.iter() {
                        meter.tick(batch.frames.len() as u64);
                        if !st.explain(batch) {
                            break;
                        }
                    }
                    st.stats.alloc_infer.record(&meter);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an inference thread");
            }
        }
        drop(tx);
        drop(slot_tx);
    });
    // The events logs' last lines are written before the run's outcome is counted.
    if let Ok(mut post) = post.into_inner() {
        for m in &mut post.monitors {
            if let Some(msg) = m.close_log() {
                stats.output_failed(msg);
            }
        }
    }
    stats
        .inference
        .add(crate::cpu::threads_cpu(pool).saturating_sub(before));
    explainers
}

/// What the batcher waits for before it starts a batch: a carrier, then a free input slot.
struct Rx {
    carriers: Receiver<Batch>,
    slots: Receiver<(usize, InputSlot)>,
}

impl Rx {
    /// Waits while every slot is with the sessions: that is the backpressure. `None` once
    /// inference has shut down.
    fn next(&self) -> Option<Batch> {
        let mut batch = self.carriers.recv().ok()?;
        let (worker, slot) = self.slots.recv().ok()?;
        batch.worker = worker;
        batch.slot = Some(slot);
        batch.frames.clear();
        batch.specs.clear();
        batch.usable.clear();
        Some(batch)
    }
}

/// The batching thread: fills free slots with frames and hands them to the session.
#[allow(clippy::too_many_arguments)]
fn batch(
    rxs: &[Receiver<Frame>],
    mut pre: Preprocessor,
    targets: &[TargetSpec],
    (b, timeout, expected): (usize, Duration, Option<u64>),
    free: Rx,
    full: Vec<Sender<Batch>>,
    tx: Sender<Explained>,
    stats: &Stats,
) {
    let sessions = full.len();
    let mut received = 0u64;
    let mut target = b;
    let mut seq = 0u64;
    // Hands a batch to the session that owns its slot; false when inference has shut down.
    let mut hand = |mut batch: Batch| {
        batch.seq = seq;
        seq += 1;
        full.get(batch.worker).is_some_and(|f| f.send(batch).is_ok())
    };
    let span = tracing::info_span!("batch");
    let _e = span.enter();
    let mut inputs = Inputs::new(rxs);
    let mut meter = crate::alloc::Meter::new(crate::stats::WARM_FRAMES);
    let item_len = pre.item_len();
    let mut current: Option<Batch> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let next = inputs.next(deadline);
        let closed = matches!(next, Next::Closed);
        match next {
            Next::Frame(f) if f.lost => {
                let lost = Explained {
                    frame: f,
                    maps: Vec::new(),
                    fps: 0.0,
                };
                if tx.send(lost).is_err() {
                    break;
                }
            }
            Next::Frame(f) => {
                if current.is_none() {
                    match free.next() {
                        Some(batch) => current = Some(batch),
                        None => break,
                    }
                    let left = expected.and_then(|e| e.checked_sub(received));
                    target = batch_target(b, sessions, left);
                    deadline = Some(Instant::now() + timeout);
                }
                received += 1;
                let Some(batch) = current.as_mut() else { break };
                let t = crate::cpu::Span::start();
                let i = batch.frames.len();
                batch
                    .specs
                    .push(targets.get(f.source).copied().unwrap_or(TargetSpec::Top1));
                let input = batch.slot.as_mut().map(|s| s.data_mut());
                let ok = match input.and_then(|d| d.get_mut(i * item_len..(i + 1) * item_len)) {
                    Some(slot) => match pre.fill(&f.image, slot) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(source = f.source, frame = f.seq, error = %e, "cannot preprocess frame; writing it without overlay");
                            slot.fill(0.0);
                            false
                        }
                    },
                    None => false,
                };
                batch.usable.push(ok);
                batch.frames.push(f);
                stats.preprocess.add(t.elapsed());
                meter.tick(1);
                if batch.frames.len() >= target {
                    deadline = None;
                    if let Some(batch) = current.take() {
                        if !hand(batch) {
                            break;
                        }
                    }
                }
            }
            Next::Timeout | Next::Closed => {
                deadline = None;
                if let Some(batch) = current.take() {
                    if !hand(batch) {
                        break;
                    }
                }
                if closed {
                    break;
                }
            }
        }
    }
    stats.alloc_infer.record(&meter);
}

/// The sources' channels, read together through one `Select` built once (a closed channel is
/// removed from it), so waiting for a frame allocates nothing.
struct Inputs<'a> {
    rxs: &'a [Receiver<Frame>],
    sel: Select<'a>,
    open: usize,
    /// Frames taken from each source so far: the next one's `seq`.
    taken: Vec<u64>,
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
            taken: vec![0; rxs.len()],
        }
    }

    /// The next frame from any open source, waiting until `deadline` (forever if `None`).
    /// Frames are numbered here, where the pipeline takes them: a live source's capture numbers
    /// the frames it reads, and those a newer frame replaced in its mailbox would leave gaps
    /// the sinks could not tell from frames still in flight.
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
                Ok(mut f) => {
                    if let Some(n) = self.taken.get_mut(i) {
                        f.seq = *n;
                        *n += 1;
                    }
                    return Next::Frame(f);
                }
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
    labels: &'a [String],
    maps_pool: Pool<Vec<ClassMap>>,
    /// Where this session's slots go back to the batcher once run.
    slots: Sender<(usize, InputSlot)>,
    tx: Sender<Explained>,
    stats: &'a Stats,
    /// The reorder buffer.
    post: &'a std::sync::Mutex<Post>,
    started: Instant,
}

impl Stage<'_> {
    /// Explains one batch, then hands it to the reorder buffer, which sends on the frames of
    /// every batch whose turn has come; false when the next stage has shut down.
    fn explain(&mut self, mut batch: Batch) -> bool {
        let n = batch.frames.len();
        let t = crate::cpu::Span::start();
        let wall = Instant::now();
        let results = match &batch.slot {
            Some(slot) if n > 0 => self.explainer.explain_slot(slot, &batch.specs, false),
            _ => Err(crate::engine::EngineError::Run("empty batch".into())),
        };
        let spent = t.elapsed();
        // RUST_LOG=gradcamd::infer=trace: when each batch ran, to see the sessions' idle time.
        tracing::trace!(
            worker = batch.worker,
            seq = batch.seq,
            frames = n,
            start_ms = (wall - self.started).as_secs_f64() * 1e3,
            run_ms = wall.elapsed().as_secs_f64() * 1e3,
            "batch ran"
        );
        if let Some(slot) = batch.slot.take() {
            // Never full: it holds every slot. Fails only once the batcher is gone.
            let _ = self.slots.try_send((batch.worker, slot));
        }
        if n > 0 {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.last_batch.store(n as u64, Ordering::Relaxed);
        }
        match results {
            Ok(outs) => {
                for (i, r) in outs.iter().enumerate().take(n) {
                    let Some(maps) = batch.maps.get_mut(i) else { break };
                    if !batch.usable.get(i).copied().unwrap_or(false) {
                        maps.clear();
                        continue;
                    }
                    // A model that outputs NaN (broken weights, an overflow) explains nothing:
                    // the frame is counted and drawn as not explained, never shown as a score.
                    let finite = r.maps.iter().all(|m| {
                        m.prob.is_finite() && m.score.is_finite() && m.cam.iter().all(|v| v.is_finite())
                    });
                    if !finite {
                        if !NAN_WARNED.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "the model output NaN or infinity; such frames are written as not explained (check the model's weights and input normalization)"
                            );
                        }
                        maps.clear();
                        continue;
                    }
                    if maps.capacity() == 0 {
                        // The map buffers come back from render: once warm, nothing is allocated.
                        *maps = self.maps_pool.take().unwrap_or_default();
                    }
                    maps.truncate(r.maps.len());
                    for (k, m) in r.maps.iter().enumerate() {
                        match maps.get_mut(k) {
                            Some(d) => d.copy_from(m),
                            None => maps.push(m.clone()),
                        }
                    }
                }
            }
            Err(e) => {
                if n > 0 {
                    tracing::warn!(frames = n, error = %e, "inference failed for a batch; writing its frames without overlay");
                }
                batch.maps.iter_mut().for_each(Vec::clear);
            }
        }
        let cam_time = self.explainer.cam_time;
        self.stats.inference.add(spent.saturating_sub(cam_time));
        self.stats.cam.add(cam_time);

        let Ok(mut post) = self.post.lock() else {
            return false;
        };
        if post.closed {
            return false;
        }
        let at = batch.seq.saturating_sub(post.next) as usize;
        if post.waiting.len() <= at {
            post.waiting.resize_with(at + 1, || None);
        }
        post.waiting[at] = Some(batch);
        while let Some(Some(_)) = post.waiting.front() {
            let Some(Some(mut done)) = post.waiting.pop_front() else {
                break;
            };
            post.next += 1;
            if !self.send_batch(&mut post, &mut done) {
                post.closed = true;
                post.free = None;
                return false;
            }
            // After its last batch the batcher is gone: the carrier is then dropped.
            if let Some(f) = &post.free {
                let _ = f.try_send(done);
            }
        }
        true
    }

    /// Updates the monitors with a batch's frames and sends them on, in order.
    fn send_batch(&self, post: &mut Post, batch: &mut Batch) -> bool {
        for (i, frame) in batch.frames.drain(..).enumerate() {
            let mut maps = batch.maps.get_mut(i).map(std::mem::take).unwrap_or_default();
            if maps.is_empty() {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.explained.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = post.monitors.get_mut(frame.source) {
                    let o = m.observe(frame.seq, frame.pts_ms, &mut maps, self.labels);
                    if let Some(s) = self.stats.source(frame.source) {
                        if let Some(v) = o.outside_roi {
                            s.set_outside_roi(v);
                        }
                        if o.alert {
                            s.alerts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(e) = o.events_failed {
                        self.stats.output_failed(e);
                    }
                }
                if let Some(s) = self.stats.source(frame.source) {
                    s.processed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let e = Explained {
                frame,
                maps,
                fps: 0.0,
            };
            if !send(&self.tx, &mut post.rates, e) {
                return false;
            }
        }
        true
    }
}

fn send(tx: &Sender<Explained>, rates: &mut [crate::stats::RecentRate], mut e: Explained) -> bool {
    if let Some(r) = rates.get_mut(e.frame.source) {
        let now = Instant::now();
        r.tick(now);
        e.fps = r.rate(now) as f32;
    }
    tx.send(e).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch sizes the batcher cuts `total` frames into, one session after the other.
    fn cuts(b: usize, sessions: usize, total: u64) -> Vec<usize> {
        let mut v = Vec::new();
        let mut sent = 0u64;
        while sent < total {
            let n = batch_target(b, sessions, total.checked_sub(sent)).min((total - sent) as usize);
            v.push(n);
            sent += n as u64;
        }
        v
    }

    #[test]
    fn full_batches_until_the_last_round_then_shrinking_ones() {
        let v = cuts(8, 2, 120);
        assert_eq!(v.iter().sum::<usize>(), 120);
        // Full batches while more than a round of slots' worth is left.
        assert!(v[..11].iter().all(|&n| n == 8), "{v:?}");
        // The last frames come in batches that never grow, down to single frames, so the
        // sessions finish at most one frame's run apart.
        assert!(v.windows(2).all(|w| w[1] <= w[0]), "{v:?}");
        assert_eq!(v.last(), Some(&1), "{v:?}");
    }

    #[test]
    fn one_session_or_an_unknown_length_keeps_full_batches() {
        assert_eq!(batch_target(8, 1, Some(3)), 8);
        assert_eq!(batch_target(8, 2, None), 8);
        // More frames than the count said: the hint is spent, full batches again.
        assert_eq!(batch_target(8, 2, Some(0)), 8);
        assert_eq!(batch_target(1, 2, Some(1)), 1);
        assert_eq!(cuts(4, 1, 10), vec![4, 4, 2]);
    }
}
