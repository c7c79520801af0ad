//! A session worker: one thread per ORT session (each owned by an [`Explainer`]). It runs the
//! batches the batcher filled into its input slots, gives each slot back as soon as its batch
//! has run, computes the CAMs into the carrier's map buffers, and hands the batch to the
//! in-order release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::faith::{Probe, Probes};
use super::release::Release;
use super::Carrier;
use crate::engine::{EngineError, InputSlot};
use crate::explainer::{Explainer, ItemOut};
use crate::frame::{ClassMap, Pool};
use crate::stats::event::BatchRun;
use crate::stats::{Event, Stats};

/// The "model output NaN" warning is said once per process, not once per frame.
static NAN_WARNED: AtomicBool = AtomicBool::new(false);

/// The inference server as the workers see it (`provider = "remote"`; a local session is never
/// away).
pub(super) struct Server {
    /// Per source index: a batch holding its frames waits for the server (see
    /// [`super::InferConfig::lossless`]).
    pub(super) lossless: Vec<bool>,
    pub(super) wait: Duration,
    pub(super) stop: Arc<AtomicBool>,
    /// Since when the server has been away (`None`: up), for the one line per outage.
    pub(super) down_since: Mutex<Option<Instant>>,
}

impl Server {
    /// A batch failed with the server away: counted, and said once per outage.
    fn down(&self, stats: &Stats, why: &str) {
        stats.inference_errors.fetch_add(1, Ordering::Relaxed);
        stats.inference_down.store(1, Ordering::Relaxed);
        if let Ok(mut since) = self.down_since.lock() {
            if since.is_none() {
                *since = Some(Instant::now());
                tracing::warn!(
                    "{why}; live sources go on without overlay (\"inference unavailable\"), file sources wait up to {} s (model.retry_secs); retrying",
                    self.wait.as_secs_f64()
                );
            }
        }
    }

    fn up(&self, stats: &Stats) {
        if stats.inference_down.swap(0, Ordering::Relaxed) == 0 {
            return;
        }
        if let Ok(mut since) = self.down_since.lock() {
            if let Some(since) = since.take() {
                tracing::info!(
                    after_s = format!("{:.1}", since.elapsed().as_secs_f64()),
                    "the inference server is back"
                );
            }
        }
    }
}

pub(super) struct Worker<'a> {
    pub(super) explainer: &'a mut Explainer,
    pub(super) maps_pool: Pool<Vec<ClassMap>>,
    /// Where this session's slots go back to the batcher once run.
    pub(super) slots: Sender<(usize, InputSlot)>,
    pub(super) stats: &'a Stats,
    pub(super) release: &'a Mutex<Release>,
    /// When inference started: the origin of the trace log's batch times.
    pub(super) started: Instant,
    pub(super) server: &'a Server,
    /// Faithfulness probes (see [`super::faith`]), when a source samples them.
    pub(super) probes: Option<&'a Probes>,
}

impl Worker<'_> {
    /// Explains one batch, then hands it to the in-order release; false when the next stage
    /// has shut down.
    pub(super) fn explain(&mut self, mut batch: Carrier) -> bool {
        let n = batch.frames.len();
        let cap = self.explainer.batch_size;
        if let (Some(p), Some(slot)) = (self.probes, batch.slot.as_mut()) {
            if n > 0 {
                p.take_into(
                    slot.data_mut(),
                    n,
                    cap.saturating_sub(n),
                    &mut batch.specs,
                    &mut batch.riding,
                );
            }
        }
        let items = batch.specs.len();
        let t = crate::cpu::Span::start();
        let wall = Instant::now();
        let mut results = match &batch.slot {
            Some(slot) if n > 0 => self.explainer.explain_slot(slot, &batch.specs, false),
            _ => Err(EngineError::Run("empty batch".into())),
        };
        if let Err(EngineError::Unavailable(why)) = &results {
            let why = why.clone();
            self.server.down(self.stats, &why);
            let lossless = batch
                .frames
                .iter()
                .any(|f| self.server.lossless.get(f.source).copied().unwrap_or(false));
            if lossless {
                results = wait_for_server(self.explainer, self.server, self.stats, &batch, &why);
            }
        }
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
        if let Some(p) = self.probes {
            match &results {
                Ok(outs) => {
                    let probs = outs
                        .iter()
                        .skip(n)
                        .map(|o| o.maps.first().map_or(f32::NAN, |m| m.prob));
                    p.finish(&mut batch.riding, probs, &mut batch.faith);
                    if let Some(slot) = &batch.slot {
                        add_probes(p, &batch, slot, outs);
                    }
                }
                Err(_) => p.recycle(&mut batch.riding),
            }
        }
        BatchRun { frames: n }.emit(self.stats);
        if results.is_ok() {
            self.server.up(self.stats);
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
            Err(EngineError::Unavailable(_)) => {
                batch.unavailable = true;
                batch.maps.iter_mut().for_each(Vec::clear);
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
        if let Some(p) = self.probes {
            // A batch with rows to spare (a light load, the end of a file), or a batch's worth
            // waiting: the probes run now, in this slot, rather than wait for room.
            if p.pending() > 0 && (items < cap || p.pending() >= cap) {
                if let Some(slot) = batch.slot.as_mut() {
                    let t = crate::cpu::Span::start();
                    self.run_probes(p, slot, &mut batch.faith);
                    self.stats.inference.add(t.elapsed());
                }
            }
        }
        if let Some(slot) = batch.slot.take() {
            // Never full: it holds every slot. Fails only once the batcher is gone.
            let _ = self.slots.try_send((batch.worker, slot));
        }

        match self.release.lock() {
            Ok(mut r) => r.accept(batch),
            Err(_) => false,
        }
    }
}

impl Worker<'_> {
    /// After the last batch: the probes still queued (those of the last frames, when the last
    /// batch was full) run through an ordinary run, and their outcomes go to the release.
    pub(super) fn flush_probes(&mut self) {
        let Some(p) = self.probes else { return };
        let cap = self.explainer.batch_size.max(1);
        let len = p.item_len();
        let dims = self.explainer.item_dims;
        let mut buf = vec![0f32; cap * len];
        let (mut specs, mut riding, mut faith) = (Vec::new(), Vec::new(), Vec::new());
        while p.pending() > 0 {
            specs.clear();
            p.take_into(&mut buf, 0, cap, &mut specs, &mut riding);
            let n = riding.len();
            if n == 0 {
                break;
            }
            let targets: Vec<i64> = riding.iter().map(|r| r.of.class as i64).collect();
            let Ok(view) = ndarray::ArrayView4::from_shape((n, dims[0], dims[1], dims[2]), &buf[..n * len])
            else {
                p.recycle(&mut riding);
                break;
            };
            let probs = self.explainer.engine.run_with(view, &targets, |b| {
                targets
                    .iter()
                    .enumerate()
                    .map(|(j, &c)| {
                        let row = b.logits.index_axis(ndarray::Axis(0), j);
                        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                        row.get(c as usize)
                            .map_or(f32::NAN, |&v| (((v - max) as f64).exp() / sum) as f32)
                    })
                    .collect::<Vec<f32>>()
            });
            match probs {
                Ok(probs) => p.finish(&mut riding, probs.into_iter(), &mut faith),
                Err(e) => {
                    tracing::debug!(error = %e, "faithfulness probes failed");
                    p.recycle(&mut riding);
                    break;
                }
            }
        }
        if !faith.is_empty() {
            tracing::debug!(
                probes = faith.len(),
                "faithfulness probes run after the last batch"
            );
            if let Ok(mut r) = self.release.lock() {
                r.late_faith(faith);
            }
        }
    }

    /// Runs the probes queued, a batch at a time, in `slot`: their outcomes go to `faith`.
    fn run_probes(
        &mut self,
        p: &Probes,
        slot: &mut crate::engine::InputSlot,
        faith: &mut Vec<super::faith::Faith>,
    ) {
        let cap = self.explainer.batch_size;
        let mut specs = Vec::with_capacity(cap);
        let mut riding: Vec<Probe> = Vec::with_capacity(cap);
        // Twice at most: what a sampled batch adds, and what waited for it.
        for _ in 0..2 {
            specs.clear();
            p.take_into(slot.data_mut(), 0, cap, &mut specs, &mut riding);
            if specs.is_empty() {
                break;
            }
            match self.explainer.explain_slot(slot, &specs, false) {
                Ok(outs) => {
                    let probs = outs.iter().map(|o| o.maps.first().map_or(f32::NAN, |m| m.prob));
                    p.finish(&mut riding, probs, faith);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "faithfulness probes failed");
                    p.recycle(&mut riding);
                    break;
                }
            }
        }
    }
}

/// Queues the probes of the batch's frames that are due, from their inputs (still in the slot)
/// and their first maps.
fn add_probes(p: &Probes, batch: &Carrier, slot: &crate::engine::InputSlot, outs: &[ItemOut]) {
    let data = slot.data();
    let len = p.item_len();
    for (i, f) in batch.frames.iter().enumerate() {
        if !p.due(f) || !batch.usable.get(i).copied().unwrap_or(false) {
            continue;
        }
        let Some(m) = outs.get(i).and_then(|o| o.maps.first()) else {
            continue;
        };
        if !(m.prob.is_finite() && m.cam.iter().all(|v| v.is_finite())) {
            continue;
        }
        if let Some(item) = data.get(i * len..(i + 1) * len) {
            p.add(f, item, m);
        }
    }
}

/// A batch with frames of a file source and the server away: tried again with backoff
/// until it runs, the run stops, or `model.retry_secs` have passed. Then the run is ended
/// with one line; what was written is finalized as at any stop.
fn wait_for_server<'e>(
    explainer: &'e mut Explainer,
    server: &Server,
    stats: &Stats,
    batch: &Carrier,
    why: &str,
) -> Result<&'e mut [ItemOut], EngineError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(250);
    let mut why = why.to_string();
    while !server.stop.load(Ordering::SeqCst) {
        let left = server.wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            stats.fail_run(format!(
                "{why}; a file source waited {:.0} s for it (model.retry_secs) and the run was stopped: the output holds every frame read until then",
                server.wait.as_secs_f64()
            ));
            server.stop.store(true, Ordering::SeqCst);
            break;
        }
        // In steps, so that a stop is not held up by a long pause.
        let until = Instant::now() + pause.min(left);
        while Instant::now() < until && !server.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        pause = (pause * 2).min(Duration::from_secs(2));
        let Some(slot) = &batch.slot else { break };
        // The count only: a borrow returned from inside the loop would hold the explainer.
        match explainer.explain_slot(slot, &batch.specs, false).map(|o| o.len()) {
            Err(EngineError::Unavailable(w)) => {
                server.down(stats, &w);
                why = w;
            }
            Ok(n) => return Ok(explainer.last_outs(n)),
            Err(e) => return Err(e),
        }
    }
    Err(EngineError::Unavailable(why))
}
