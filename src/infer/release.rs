//! The in-order release: sessions finish batches in any order; frames leave inference, and the
//! per-source monitors see them, in the order the batcher made the batches. A session that
//! finishes hands its batch over here and goes back to work: it never waits for another.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::Carrier;
use crate::frame::{Alerts, Explained};
use crate::monitor::Monitor;
use crate::mqtt::{Note, Outbox};
use crate::stats::event::{FrameExplained, FrameMeasured, FrameNotExplained};
use crate::stats::{Event, RecentRate, Stats};

pub(super) struct Release {
    /// The batch whose turn it is.
    next: u64,
    /// The next stage shut down.
    closed: bool,
    /// Batch `next + i` at index i, once finished.
    waiting: VecDeque<Option<Carrier>>,
    monitors: Vec<Monitor>,
    /// Each source's explained frames per second, for its HUD.
    rates: Vec<RecentRate>,
    /// Where released carriers go back to the batcher; dropped once the next stage has shut
    /// down, so that a batcher waiting for a free carrier stops.
    free: Option<Sender<Carrier>>,
    tx: Sender<Explained>,
    labels: Arc<Vec<String>>,
    stats: Arc<Stats>,
    mqtt: Option<Outbox>,
    /// Outcomes of the probes run after the last batch, reported when the logs close.
    late: Vec<super::faith::Faith>,
}

impl Release {
    pub(super) fn new(
        monitors: Vec<Monitor>,
        free: Sender<Carrier>,
        tx: Sender<Explained>,
        labels: Arc<Vec<String>>,
        stats: Arc<Stats>,
        mqtt: Option<Outbox>,
        carriers: usize,
    ) -> Release {
        Release {
            next: 0,
            closed: false,
            waiting: VecDeque::with_capacity(carriers),
            rates: monitors.iter().map(|_| RecentRate::default()).collect(),
            monitors,
            free: Some(free),
            tx,
            labels,
            stats,
            mqtt,
            late: Vec::new(),
        }
    }

    /// Outcomes of probes that no batch was left to carry (see `Worker::flush_probes`).
    pub(super) fn late_faith(&mut self, faith: Vec<super::faith::Faith>) {
        self.late.extend(faith);
    }

    /// One probe's outcome to its source's monitor, and the counters once both of a frame's
    /// are in.
    fn faith(&mut self, f: &super::faith::Faith) {
        let Some(m) = self.monitors.get_mut(f.source) else {
            return;
        };
        if let Some(r) = m.faithfulness(f, &self.labels) {
            FrameMeasured {
                source: f.source,
                cam_mult: r.cam_mult,
                deletion: r.deletion,
            }
            .emit(&self.stats);
        }
    }

    /// Takes a finished batch and sends on the frames of every batch whose turn has come;
    /// false when the next stage has shut down.
    pub(super) fn accept(&mut self, batch: Carrier) -> bool {
        if self.closed {
            return false;
        }
        let at = batch.seq.saturating_sub(self.next) as usize;
        if self.waiting.len() <= at {
            self.waiting.resize_with(at + 1, || None);
        }
        self.waiting[at] = Some(batch);
        while let Some(Some(_)) = self.waiting.front() {
            let Some(Some(mut done)) = self.waiting.pop_front() else {
                break;
            };
            self.next += 1;
            if !self.send_batch(&mut done) {
                self.closed = true;
                self.free = None;
                return false;
            }
            // After its last batch the batcher is gone: the carrier is then dropped.
            if let Some(f) = &self.free {
                let _ = f.try_send(done);
            }
        }
        true
    }

    /// Writes what the events logs still hold and closes them; each failure not yet reported
    /// is counted, so the run ends with the output exit code.
    pub(super) fn close_logs(&mut self) {
        // Every frame has been released by now: their lines come before these.
        for f in std::mem::take(&mut self.late) {
            self.faith(&f);
        }
        for m in &mut self.monitors {
            if let Some(msg) = m.close_log() {
                self.stats.output_failed(msg);
            }
        }
    }

    /// Updates the monitors with a batch's frames and sends them on, in order.
    fn send_batch(&mut self, batch: &mut Carrier) -> bool {
        // Probes that rode in this batch measured frames released before it.
        for f in batch.faith.drain(..) {
            self.faith(&f);
        }
        let stats = &*self.stats;
        for (i, frame) in batch.frames.drain(..).enumerate() {
            let mut maps = batch.maps.get_mut(i).map(std::mem::take).unwrap_or_default();
            let mut note = Note {
                source: frame.source,
                seq: frame.seq,
                pts_ms: frame.pts_ms,
                class: None,
                prob: 0.0,
                outside_roi: None,
                alerting: false,
                hot_bbox: None,
                signals: [None; 3],
                drift: None,
                drift_alerting: false,
                fps: 0.0,
            };
            if maps.is_empty() {
                FrameNotExplained.emit(stats);
            } else {
                let mut explained = FrameExplained {
                    source: frame.source,
                    outside_roi: None,
                    alert: false,
                    alerting: false,
                    signals: [None; 3],
                    drift: None,
                    drift_alert: false,
                    drift_alerting: false,
                };
                if let Some(m) = self.monitors.get_mut(frame.source) {
                    let o = m.observe(frame.seq, frame.pts_ms, &mut maps, &self.labels);
                    let s = o.signals;
                    explained.outside_roi = o.outside_roi;
                    explained.alert = o.alert;
                    explained.alerting = o.alerting;
                    explained.signals = [s.entropy, s.concentration, s.stability];
                    explained.drift = o.drift.divergence;
                    explained.drift_alert = o.drift.started;
                    explained.drift_alerting = o.drift.alerting;
                    note.alerting = o.alerting;
                    note.hot_bbox = o.hot_bbox;
                    note.signals = explained.signals;
                    note.drift = o.drift.divergence;
                    note.drift_alerting = o.drift.alerting;
                    for e in [o.events_failed, o.baseline_failed].into_iter().flatten() {
                        stats.output_failed(e);
                    }
                }
                if let Some(m) = maps.first() {
                    note.class = Some(m.class);
                    note.prob = m.prob;
                }
                note.outside_roi = explained.outside_roi;
                explained.emit(stats);
            }
            let mut e = Explained {
                frame,
                maps,
                fps: 0.0,
                unavailable: batch.unavailable,
                alerts: Alerts {
                    roi: note.alerting,
                    drift: note.drift_alerting,
                },
            };
            if let Some(r) = self.rates.get_mut(e.frame.source) {
                let now = Instant::now();
                r.tick(now);
                e.fps = r.rate(now) as f32;
            }
            if let Some(out) = &self.mqtt {
                note.fps = e.fps;
                out.note(note);
            }
            if self.tx.send(e).is_err() {
                return false;
            }
        }
        true
    }
}
