//! Inference stage, one file per thread kind:
//!
//! - [`batcher`] (thread `batcher`) reads every source's channel, batches frames across sources
//!   (up to `batch_size`, waiting at most `batch_timeout` after the first) and preprocesses each
//!   frame, as it arrives, straight into a free input slot of one of the sessions;
//! - [`session`] (threads `infer-N`, one per ORT session, each owned by an [`Explainer`]) runs
//!   its full slots and computes the CAMs;
//! - [`release`] takes the finished batches in any order and lets frames leave (and the
//!   per-source monitors see them) in batch order, without a session ever waiting for another.
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

mod batcher;
pub(crate) mod faith;
mod release;
mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::engine::InputSlot;
use crate::explainer::{Explainer, TargetSpec, Targets};
use crate::frame::{ClassMap, Explained, Frame, Pool};
use crate::monitor::Monitor;
use crate::preprocess::Preprocessor;
use crate::stats::{Stage, StageMeter, Stats};
use release::Release;

/// Input slots in rotation between the batcher and each session.
pub(crate) const SLOTS: usize = 2;

/// Batches in flight per session: in its slots, and finished, waiting for their turn.
pub(crate) const CARRIERS: usize = 2 * SLOTS;

pub(crate) struct InferConfig {
    pub batch_size: std::num::NonZeroUsize,
    pub batch_timeout: Duration,
    /// What to explain, per source index.
    pub targets: Arc<Targets>,
    /// Smoothing, ROI and events, per source index.
    pub monitors: Vec<Monitor>,
    pub labels: Arc<Vec<String>>,
    /// CAM map buffers handed back by render.
    pub maps_pool: Pool<Vec<ClassMap>>,
    /// How many frames the sources will send, when every one is a file that says so: the last
    /// frames are then spread over the sessions (see [`batch_target`]).
    pub expected_frames: Option<u64>,
    /// Each frame's outcome for the MQTT output, when there is one.
    pub mqtt: Option<crate::mqtt::Outbox>,
    /// Per source index: its frames are never given up (a file source), so a batch of them
    /// waits for an inference server that is away, up to `unavailable_wait`.
    pub lossless: Vec<bool>,
    pub unavailable_wait: Duration,
    /// The run's stop flag: set by a worker that gave up waiting, so the run ends (and its
    /// outputs are finalized); read while waiting, so Ctrl-C is not held up.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// Per source index: measure faithfulness every N-th frame (0: never).
    pub faithfulness_every: Vec<u32>,
    /// The model input is NHWC.
    pub interleaved: bool,
}

/// One batch on its way: an input slot of session `worker` and the frames preprocessed into it.
/// The carrier itself (its buffers) goes back to the batcher through the release; the slot
/// goes back on its own once the batch has run.
struct Carrier {
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
    /// The inference server was away for this batch.
    unavailable: bool,
    /// Faithfulness probes in the rows after the frames, until the batch has run.
    riding: Vec<faith::Probe>,
    /// Outcomes of probes run with this batch, for the release.
    faith: Vec<faith::Faith>,
}

/// Runs until every source has closed (or the next stage has), and gives the explainers back:
/// destroying two sessions takes ~12 ms of CPU, which the caller spends after the outputs are
/// finalized rather than beside the last frames' render and encode.
pub(crate) fn run(
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
    let b = cfg.batch_size.get();
    let sessions = explainers.len().max(1);
    let (free_tx, free_rx) = bounded::<Carrier>(CARRIERS * sessions);
    for _ in 0..CARRIERS * sessions {
        let _ = free_tx.send(Carrier {
            worker: 0,
            seq: 0,
            slot: None,
            frames: Vec::with_capacity(b),
            specs: Vec::with_capacity(b),
            usable: Vec::with_capacity(b),
            maps: (0..b).map(|_| Vec::new()).collect(),
            unavailable: false,
            riding: Vec::with_capacity(b),
            faith: Vec::with_capacity(2 * b),
        });
    }
    let (slot_tx, slot_rx) = bounded::<(usize, InputSlot)>(SLOTS * sessions);
    let mut full_txs = Vec::new();
    let mut full_rxs = Vec::new();
    let mut slots: Vec<Vec<InputSlot>> = Vec::new();
    for ex in explainers.iter_mut() {
        let (t, r) = bounded::<Carrier>(SLOTS);
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
        mqtt,
        lossless,
        unavailable_wait,
        stop,
        faithfulness_every,
        interleaved,
        ..
    } = cfg;
    let probes = faith::Probes::new(faithfulness_every, pre.item_dims(), interleaved);
    let server = session::Server {
        lossless,
        wait: unavailable_wait,
        stop,
        down_since: Mutex::new(None),
    };
    let batcher_tx = tx.clone();
    let release = Mutex::new(Release::new(
        monitors,
        free_tx,
        tx,
        labels,
        stats.clone(),
        mqtt,
        CARRIERS * sessions,
    ));
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let batcher = std::thread::Builder::new()
            .name("batcher".into())
            .spawn_scoped(scope, {
                let (stats, tx) = (stats.clone(), batcher_tx);
                let (rxs, targets) = (&rxs, &targets);
                let (lossless, stop) = (server.lossless.as_slice(), &*server.stop);
                let probes = probes.as_ref();
                let free = batcher::Free {
                    carriers: free_rx,
                    slots: slot_rx,
                    carrier: None,
                    slot: None,
                };
                move || {
                    batcher::run(
                        rxs,
                        pre,
                        targets,
                        (b, batch_timeout, expected_frames),
                        free,
                        full_txs,
                        tx,
                        &stats,
                        (lossless, stop),
                        probes,
                    )
                }
            });
        if let Err(e) = batcher {
            tracing::error!(error = %e, "cannot start the batching thread");
            return;
        }
        for (w, (explainer, full_rx)) in explainers.iter_mut().zip(full_rxs).enumerate() {
            let mut st = session::Worker {
                explainer,
                maps_pool: maps_pool.clone(),
                slots: slot_tx.clone(),
                stats: &stats,
                release: &release,
                started,
                server: &server,
                probes: probes.as_ref(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("infer-{w}"))
                .spawn_scoped(scope, move || {
                    let span = tracing::info_span!("infer", worker = w);
                    let _e = span.enter();
                    // Its CPU is split between inference and CAM by the worker itself.
                    let mut meter = StageMeter::new(st.stats, Stage::Inference);
                    for batch in full_rx.iter() {
                        meter.tick(batch.frames.len() as u64);
                        if !st.explain(batch) {
                            break;
                        }
                    }
                    st.flush_probes();
                    meter.finish();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an inference thread");
            }
        }
        drop(slot_tx);
    });
    // The events logs' last lines are written before the run's outcome is counted (and before
    // render's input closes, with the release's sender).
    if let Ok(mut r) = release.into_inner() {
        r.close_logs();
    }
    stats
        .inference
        .add(crate::cpu::threads_cpu(pool).saturating_sub(before));
    explainers
}
