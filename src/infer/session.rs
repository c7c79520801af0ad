//! A session worker: one thread per ORT session (each owned by an [`Explainer`]). It runs the
//! batches the batcher filled into its input slots, gives each slot back as soon as its batch
//! has run, computes the CAMs into the carrier's map buffers, and hands the batch to the
//! in-order release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::release::Release;
use super::Carrier;
use crate::engine::InputSlot;
use crate::explainer::Explainer;
use crate::frame::{ClassMap, Pool};
use crate::stats::event::BatchRun;
use crate::stats::{Event, Stats};

/// The "model output NaN" warning is said once per process, not once per frame.
static NAN_WARNED: AtomicBool = AtomicBool::new(false);

pub(super) struct Worker<'a> {
    pub(super) explainer: &'a mut Explainer,
    pub(super) maps_pool: Pool<Vec<ClassMap>>,
    /// Where this session's slots go back to the batcher once run.
    pub(super) slots: Sender<(usize, InputSlot)>,
    pub(super) stats: &'a Stats,
    pub(super) release: &'a Mutex<Release>,
    /// When inference started: the origin of the trace log's batch times.
    pub(super) started: Instant,
}

impl Worker<'_> {
    /// Explains one batch, then hands it to the in-order release; false when the next stage
    /// has shut down.
    pub(super) fn explain(&mut self, mut batch: Carrier) -> bool {
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
        BatchRun { frames: n }.emit(self.stats);
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

        match self.release.lock() {
            Ok(mut r) => r.accept(batch),
            Err(_) => false,
        }
    }
}
