//! Sinks: where annotated frames go. One thread per source re-orders that source's frames by
//! `seq` (render workers finish out of order) and hands each to the source's outputs: a video
//! file ([`file`]) and the HTTP hub ([`http`]).
//!
//! Every source's frames go out strictly by `seq`, which inference numbered densely: a frame
//! the model ran on is never thrown away for arriving late. (Live frames used to go out as
//! they came, dropping those that arrived after a newer one: 8% of the explained frames of an
//! overloaded 200 fps camera, uncounted.) A live source does not wait for ever, though: when
//! more frames are waiting than can be in flight, the missing one is given up and counted as
//! dropped.

pub(crate) mod display;
pub(crate) mod file;
pub(crate) mod http;
pub(crate) mod vtt;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::frame::{Annotated, Pool};
use crate::stats::event::{FrameWritten, FramesDropped};
use crate::stats::{Event, Stage, StageMeter, Stats};
use file::{FileSink, Written};
use http::Hub;
use opencv::core::Mat;

/// How often a sink with no frame coming looks whether the shutdown deadline has passed.
const ABANDON_POLL: Duration = Duration::from_millis(50);

/// The outputs of one source.
pub(crate) struct SourceSink {
    pub index: usize,
    pub file: Option<FileSink>,
    pub hub: Option<Arc<Hub>>,
    /// The display thread's input, when this source has a window.
    pub display: Option<crossbeam_channel::Sender<crate::frame::Shown>>,
    /// For a live source: how many frames may wait for a missing one before it is given up.
    /// `None` waits for every frame (file sources: lossless).
    pub gap_limit: Option<usize>,
    /// Where written frames' buffers go back to capture.
    pub recycle: Option<Pool<Mat>>,
    /// The MQTT output's heatmaps, when it publishes them.
    pub heatmaps: Option<Arc<crate::mqtt::Heatmaps>>,
}

impl SourceSink {
    /// Runs until the input closes, or until `abandon` is set (the shutdown deadline passed:
    /// the frames still in flight are given up); returns what the file output wrote, if there
    /// is one. `on_frame` is called after each frame (progress bar).
    pub(crate) fn run(
        mut self,
        rx: Receiver<Annotated>,
        stats: Arc<Stats>,
        abandon: Arc<AtomicBool>,
        on_frame: impl Fn(u64),
    ) -> Option<Written> {
        let span = tracing::info_span!("sink", source = self.index);
        let _e = span.enter();
        // Frames `next`, `next + 1`, ... that arrived early (render workers finish out of order);
        // grows to the largest reordering distance once, then is reused.
        let mut pending: VecDeque<Option<Annotated>> = VecDeque::new();
        let mut next = 0u64;
        let mut written = 0u64;
        let mut meter = StageMeter::new(&stats, Stage::Encode);
        loop {
            if abandon.load(Ordering::Relaxed) {
                break;
            }
            // Woken now and then to see the flag while no frame comes (a stage stuck upstream).
            let a = match rx.recv_timeout(ABANDON_POLL) {
                Ok(a) => a,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            meter.tick(1);
            let Some(at) = a.seq.checked_sub(next).map(|d| d as usize) else {
                continue; // given up on (and counted) earlier, live only: too late now
            };
            if pending.len() <= at {
                pending.resize_with(at + 1, || None);
            }
            pending[at] = Some(a);
            loop {
                match pending.front() {
                    Some(Some(_)) => {}
                    Some(None) if self.gap_limit.is_some_and(|l| pending.len() > l + 1) => {
                        tracing::warn!(
                            frame = next,
                            waiting = pending.len() - 1,
                            "a frame did not reach the sink; going on without it"
                        );
                        FramesDropped { source: self.index }.emit(&stats);
                    }
                    _ => break,
                }
                if let Some(Some(a)) = pending.pop_front() {
                    meter.time(|| self.emit(a, &stats, &mut written));
                    on_frame(written);
                }
                next += 1;
            }
        }
        // Only reachable with a frame lost on the way (none is, by design); write the rest in order.
        for a in pending.into_iter().flatten() {
            meter.time(|| self.emit(a, &stats, &mut written));
        }
        meter.finish();
        self.file.take().map(|f| f.finish())
    }

    fn emit(&mut self, a: Annotated, stats: &Stats, written: &mut u64) {
        if let Some(h) = &self.hub {
            h.publish(&a);
        }
        if let (Some(h), true) = (&self.heatmaps, a.drawn) {
            h.offer(a.source, &a.image);
        }
        if let Some(d) = &self.display {
            // A busy window skips frames rather than queueing them.
            let _ = d.try_send(crate::frame::Shown {
                source: a.source,
                image: a.image.clone(),
            });
        }
        let captured = a.captured;
        let recycle = self.recycle.as_ref();
        let mut give = |m: Mat| {
            if let Some(p) = recycle {
                p.give(m);
            }
        };
        match self.file.as_mut() {
            Some(f) => {
                // A camera that connected after start-up: its rate is known now.
                if let Some(fps) = stats.source(self.index).and_then(|s| s.fps()) {
                    f.set_fps(fps);
                }
                // The file keeps the frame (to repeat it across a gap in the source's time)
                // and hands back the one it kept before.
                let cap = vtt::Caption {
                    label: a.label,
                    prob: a.prob,
                    alerts: a.alerts,
                    lost: a.lost,
                };
                f.push(a.image, a.pts_ms, cap, &mut give);
                *written += 1;
            }
            None => give(a.image),
        }
        FrameWritten {
            latency: captured.elapsed(),
        }
        .emit(stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Scalar, CV_8UC3};
    use opencv::prelude::*;

    /// Frame `seq` is a 1-row image of value `seq`, so the pool shows what went out, in order.
    fn frame(seq: u64) -> Annotated {
        Annotated {
            source: 0,
            seq,
            image: Mat::new_rows_cols_with_default(1, 1, CV_8UC3, Scalar::all(seq as f64)).unwrap(),
            captured: std::time::Instant::now(),
            pts_ms: seq as f64 * 40.0,
            label: Arc::from(""),
            prob: 0.0,
            lost: false,
            drawn: true,
            alerts: Default::default(),
        }
    }

    /// Feeds `order` to a sink with `gap_limit`; returns the frames it handed out, in order,
    /// and the drops it counted.
    fn through(order: &[u64], gap_limit: Option<usize>) -> (Vec<u64>, u64) {
        let stats = Arc::new(Stats::new(1));
        let pool = Pool::new(64);
        let sink = SourceSink {
            index: 0,
            file: None,
            hub: None,
            display: None,
            gap_limit,
            recycle: Some(pool.clone()),
            heatmaps: None,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        for &s in order {
            tx.send(frame(s)).unwrap();
        }
        drop(tx);
        let out = std::cell::RefCell::new(Vec::new());
        // Each emitted frame reaches the pool before on_frame runs.
        sink.run(rx, stats.clone(), Arc::default(), |_| {
            while let Some(m) = pool.take() {
                out.borrow_mut()
                    .push(m.at_2d::<opencv::core::Vec3b>(0, 0).unwrap()[0] as u64);
            }
        });
        (out.into_inner(), Stats::get(&stats.dropped))
    }

    #[test]
    fn an_abandoned_sink_ends_while_its_input_is_still_open() {
        // Past the shutdown deadline a stage upstream may never close its channel.
        let sink = SourceSink {
            index: 0,
            file: None,
            hub: None,
            display: None,
            gap_limit: None,
            recycle: None,
            heatmaps: None,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let abandon = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let (ab, sn) = (abandon.clone(), seen.clone());
        std::thread::spawn(move || {
            sink.run(rx, Arc::new(Stats::new(1)), ab, |_| {
                sn.fetch_add(1, Ordering::SeqCst);
            });
            let _ = done_tx.send(());
        });
        tx.send(frame(0)).unwrap();
        for _ in 0..10_000 {
            if seen.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1, "frame 0 was not handed out");
        abandon.store(true, Ordering::SeqCst);
        // `tx` is still alive: only the flag can end the sink.
        assert!(
            done.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the sink did not end on the flag"
        );
        drop(tx);
    }

    #[test]
    fn frames_go_out_in_order_however_they_arrive() {
        assert_eq!(through(&[2, 0, 1, 4, 3, 5], None), (vec![0, 1, 2, 3, 4, 5], 0));
        // Live, every frame arriving, late ones included: none is lost.
        assert_eq!(through(&[1, 2, 3, 0, 5, 4], Some(3)), (vec![0, 1, 2, 3, 4, 5], 0));
    }

    #[test]
    fn a_live_sink_gives_up_a_missing_frame_once_more_than_its_limit_wait() {
        // 3 is missing while 4, 5, 6 wait (limit 3); with 7 it is given up and counted once;
        // when it finally comes it is too late, and not counted again.
        let (out, dropped) = through(&[0, 1, 2, 4, 5, 6, 7, 3, 8], Some(3));
        assert_eq!((out, dropped), (vec![0, 1, 2, 4, 5, 6, 7, 8], 1));
        // A file source waits for it.
        let (out, dropped) = through(&[0, 1, 2, 4, 5, 6, 7, 3, 8], None);
        assert_eq!((out, dropped), (vec![0, 1, 2, 3, 4, 5, 6, 7, 8], 0));
    }
}
