//! What the stages count, as named events (Vector's `internal_events`): a stage says what
//! happened (`FramesDropped { source }.emit(&stats)`), and which counters that moves is said
//! once, here. A new exporter (MQTT, a status topic) reads the same counters; a new stage
//! emits the same events.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::Stats;

/// Something that happened in a stage, and the counters it moves.
pub(crate) trait Event {
    fn emit(self, stats: &Stats);
}

/// A frame left capture for inference.
pub(crate) struct FrameCaptured {
    pub source: usize,
}

impl Event for FrameCaptured {
    fn emit(self, stats: &Stats) {
        stats.captured.fetch_add(1, Relaxed);
        if let Some(s) = stats.source(self.source) {
            s.captured.fetch_add(1, Relaxed);
        }
    }
}

/// A live frame given up: replaced by a newer one before inference took it, or never reaching
/// its sink in time.
pub(crate) struct FramesDropped {
    pub source: usize,
}

impl Event for FramesDropped {
    fn emit(self, stats: &Stats) {
        stats.dropped.fetch_add(1, Relaxed);
        if let Some(s) = stats.source(self.source) {
            s.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// A source delivers frames (at start-up or after a reconnect), at the rate it reports.
pub(crate) struct SourceUp {
    pub source: usize,
    pub fps: f64,
}

impl Event for SourceUp {
    fn emit(self, stats: &Stats) {
        if let Some(s) = stats.source(self.source) {
            s.set_fps(self.fps);
            s.up.store(1, Relaxed);
        }
    }
}

/// A source stopped delivering; reconnecting begins.
pub(crate) struct SourceLost {
    pub source: usize,
}

impl Event for SourceLost {
    fn emit(self, stats: &Stats) {
        if let Some(s) = stats.source(self.source) {
            s.up.store(0, Relaxed);
            s.reconnects.fetch_add(1, Relaxed);
        }
    }
}

/// A source is done (a file's end, or the run stopping): down, without counting a reconnect.
pub(crate) struct SourceEnded {
    pub source: usize,
}

impl Event for SourceEnded {
    fn emit(self, stats: &Stats) {
        if let Some(s) = stats.source(self.source) {
            s.up.store(0, Relaxed);
        }
    }
}

/// One inference run over `frames` frames.
pub(crate) struct BatchRun {
    pub frames: usize,
}

impl Event for BatchRun {
    fn emit(self, stats: &Stats) {
        if self.frames > 0 {
            stats.batches.fetch_add(1, Relaxed);
            stats.last_batch.store(self.frames as u64, Relaxed);
        }
    }
}

/// A frame the model explained, with what its source's monitor made of it.
pub(crate) struct FrameExplained {
    pub source: usize,
    /// Share of the CAM outside the region of interest, where one is set.
    pub outside_roi: Option<f32>,
    /// The monitor fired a region-of-interest alert on this frame...
    pub alert: bool,
    /// ...and one is on after it.
    pub alerting: bool,
    /// The map's entropy, concentration and stability; none where not measured.
    pub signals: [Option<f32>; 3],
    /// Divergence from the attention baseline, once it is learned.
    pub drift: Option<f32>,
    /// A drift alarm started on this frame...
    pub drift_alert: bool,
    /// ...and one is on after it.
    pub drift_alerting: bool,
}

impl Event for FrameExplained {
    fn emit(self, stats: &Stats) {
        stats.explained.fetch_add(1, Relaxed);
        if let Some(s) = stats.source(self.source) {
            s.processed.fetch_add(1, Relaxed);
            if let Some(v) = self.outside_roi {
                s.set_outside_roi(v);
            }
            if self.alert {
                s.alerts.fetch_add(1, Relaxed);
            }
            s.alerting.store(self.alerting.into(), Relaxed);
            // A frame without a measure leaves NaN: the last measure would claim to be current.
            let [e, c, st] = self.signals;
            for (g, v) in [(&s.entropy, e), (&s.concentration, c), (&s.stability, st)] {
                g.set(v.unwrap_or(f32::NAN));
            }
            if let Some(d) = self.drift {
                s.drift.set(d);
            }
            if self.drift_alert {
                s.drift_alerts.fetch_add(1, Relaxed);
            }
            s.drift_alerting.store(self.drift_alerting.into(), Relaxed);
        }
    }
}

/// A sampled frame's faithfulness came back (see `infer::faith`).
pub(crate) struct FrameMeasured {
    pub source: usize,
    pub cam_mult: f32,
    pub deletion: f32,
}

impl Event for FrameMeasured {
    fn emit(self, stats: &Stats) {
        if let Some(s) = stats.source(self.source) {
            s.faith_cam_mult.set(self.cam_mult);
            s.faith_deletion.set(self.deletion);
            s.faith_samples.fetch_add(1, Relaxed);
        }
    }
}

/// A frame that could not be explained; it is written without an overlay.
pub(crate) struct FrameNotExplained;

impl Event for FrameNotExplained {
    fn emit(self, stats: &Stats) {
        stats.failed.fetch_add(1, Relaxed);
    }
}

/// Render drew the explanation on a frame (an output was going to show it).
pub(crate) struct FrameDrawn;

impl Event for FrameDrawn {
    fn emit(self, stats: &Stats) {
        stats.drawn.fetch_add(1, Relaxed);
    }
}

/// A sink handed a frame to its outputs, `latency` after capture.
pub(crate) struct FrameWritten {
    pub latency: Duration,
}

impl Event for FrameWritten {
    fn emit(self, stats: &Stats) {
        stats.written.fetch_add(1, Relaxed);
        stats.latency.observe(self.latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    #[test]
    fn each_event_moves_its_counters_and_only_those_of_its_source() {
        let s = Stats::new(2);
        FrameCaptured { source: 1 }.emit(&s);
        FramesDropped { source: 1 }.emit(&s);
        FramesDropped { source: 0 }.emit(&s);
        assert_eq!((get(&s.captured), get(&s.dropped)), (1, 2));
        assert_eq!((get(&s.sources[1].captured), get(&s.sources[1].dropped)), (1, 1));
        assert_eq!((get(&s.sources[0].captured), get(&s.sources[0].dropped)), (0, 1));

        SourceUp { source: 0, fps: 12.5 }.emit(&s);
        assert_eq!((get(&s.sources[0].up), s.sources[0].fps()), (1, Some(12.5)));
        SourceLost { source: 0 }.emit(&s);
        assert_eq!((get(&s.sources[0].up), get(&s.sources[0].reconnects)), (0, 1));
        assert_eq!(get(&s.sources[1].up), 0);
        SourceUp { source: 0, fps: 12.5 }.emit(&s);
        SourceEnded { source: 0 }.emit(&s);
        assert_eq!((get(&s.sources[0].up), get(&s.sources[0].reconnects)), (0, 1));

        BatchRun { frames: 3 }.emit(&s);
        BatchRun { frames: 0 }.emit(&s);
        assert_eq!((get(&s.batches), get(&s.last_batch)), (1, 3));

        let one = &s.sources[1];
        assert!(one.entropy.get().is_nan() && one.drift.get().is_nan());
        FrameExplained {
            source: 1,
            outside_roi: Some(0.25),
            alert: true,
            alerting: true,
            signals: [Some(0.5), Some(0.25), Some(0.75)],
            drift: Some(0.4),
            drift_alert: true,
            drift_alerting: true,
        }
        .emit(&s);
        assert_eq!(
            (
                one.entropy.get(),
                one.concentration.get(),
                one.stability.get(),
                one.drift.get()
            ),
            (0.5, 0.25, 0.75, 0.4)
        );
        assert_eq!((get(&one.alerting), get(&one.drift_alerting)), (1, 1));
        FrameExplained {
            source: 1,
            outside_roi: None,
            alert: false,
            alerting: false,
            signals: [Some(0.125), None, None],
            drift: None,
            drift_alert: false,
            drift_alerting: false,
        }
        .emit(&s);
        FrameNotExplained.emit(&s);
        assert_eq!((get(&s.explained), get(&s.failed)), (2, 1));
        assert_eq!(
            (get(&one.processed), get(&one.alerts), one.outside_roi()),
            (2, 1, 0.25)
        );
        assert_eq!(
            (
                get(&one.drift_alerts),
                get(&one.alerting),
                get(&one.drift_alerting)
            ),
            (1, 0, 0)
        );
        // Not measured on the last frame: NaN, not the old value; drift keeps its last one.
        assert_eq!(one.entropy.get(), 0.125);
        assert!(one.concentration.get().is_nan() && one.stability.get().is_nan());
        assert_eq!(one.drift.get(), 0.4);
        assert_eq!(get(&s.sources[0].processed), 0);

        FrameDrawn.emit(&s);
        FrameWritten {
            latency: Duration::from_millis(30),
        }
        .emit(&s);
        assert_eq!((get(&s.drawn), get(&s.written)), (1, 1));
        assert_eq!(s.latency.snapshot().1, 1);
        // A source the stats do not know moves only the totals.
        FrameCaptured { source: 9 }.emit(&s);
        assert_eq!(get(&s.captured), 2);
    }
}
