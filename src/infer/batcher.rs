//! The batching thread: reads every source's channel, batches frames across sources (up to
//! `batch_size`, waiting at most `batch_timeout` after the first) and preprocesses each frame,
//! as it arrives, straight into a free input slot of one of the sessions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use super::{Carrier, SLOTS};
use crate::engine::InputSlot;
use crate::explainer::Targets;
use crate::frame::{Explained, Frame};
use crate::preprocess::Preprocessor;
use crate::stats::event::FrameNotExplained;
use crate::stats::{Event, Stage, StageMeter, Stats};

/// How many frames the next batch gets, `left` frames before the end of the input when that is
/// known. Near the end the batches shrink so that every session is handed some of the last
/// frames and they finish together: on a 120-frame clip, one session running the last batch of
/// 8 alone left a core idle for 50 ms, 10% of the run. Small batches cost nothing on the CPU
/// (batch 1–4 run as fast per frame as batch 8). One session has nobody to wait for.
pub(super) fn batch_target(b: usize, sessions: usize, left: Option<u64>) -> usize {
    match left {
        Some(left) if sessions > 1 && left > 0 => {
            let share = left.div_ceil((sessions * SLOTS) as u64);
            usize::try_from(share).unwrap_or(b).clamp(1, b)
        }
        _ => b,
    }
}

/// What the batcher waits for before it starts a batch: a free carrier, then a free input slot.
pub(super) struct Free {
    pub(super) carriers: Receiver<Carrier>,
    pub(super) slots: Receiver<(usize, InputSlot)>,
    /// Taken by [`Free::try_next`] without its other half.
    pub(super) carrier: Option<Carrier>,
    pub(super) slot: Option<(usize, InputSlot)>,
}

impl Free {
    /// The next carrier with a free slot, waiting `d` at most (waiting while every slot is
    /// with the sessions is the backpressure): `Ok(None)` on timeout, `Err` once inference
    /// has shut down.
    fn next_within(&mut self, d: Duration) -> Result<Option<Carrier>, ()> {
        use crossbeam_channel::RecvTimeoutError::{Disconnected, Timeout};
        let until = Instant::now() + d;
        if self.carrier.is_none() {
            match self.carriers.recv_deadline(until) {
                Ok(c) => self.carrier = Some(c),
                Err(Timeout) => return Ok(None),
                Err(Disconnected) => return Err(()),
            }
        }
        if self.slot.is_none() {
            match self.slots.recv_deadline(until) {
                Ok(s) => self.slot = Some(s),
                Err(Timeout) => return Ok(None),
                Err(Disconnected) => return Err(()),
            }
        }
        Ok(self.try_next())
    }

    /// The same without waiting: `None` while every slot is with the sessions.
    fn try_next(&mut self) -> Option<Carrier> {
        if self.carrier.is_none() {
            self.carrier = self.carriers.try_recv().ok();
        }
        if self.slot.is_none() {
            self.slot = self.slots.try_recv().ok();
        }
        match (self.carrier.take(), self.slot.take()) {
            (Some(c), Some(s)) => Some(Self::ready(c, s)),
            (c, s) => {
                (self.carrier, self.slot) = (c, s);
                None
            }
        }
    }

    fn ready(mut batch: Carrier, (worker, slot): (usize, InputSlot)) -> Carrier {
        batch.worker = worker;
        batch.slot = Some(slot);
        batch.frames.clear();
        batch.specs.clear();
        batch.usable.clear();
        batch.unavailable = false;
        batch.faith.clear();
        batch
    }
}

/// The batching thread: fills free slots with frames and hands them to the session.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    rxs: &[Receiver<Frame>],
    mut pre: Preprocessor,
    targets: &Targets,
    (b, timeout, expected): (usize, Duration, Option<u64>),
    mut free: Free,
    full: Vec<Sender<Carrier>>,
    tx: Sender<Explained>,
    stats: &Stats,
    (lossless, stop): (&[bool], &AtomicBool),
    probes: Option<&super::faith::Probes>,
) {
    let sessions = full.len();
    let mut received = 0u64;
    let mut target = b;
    let mut seq = 0u64;
    // Hands a batch to the session that owns its slot; false when inference has shut down.
    let mut hand = |mut batch: Carrier| {
        batch.seq = seq;
        seq += 1;
        full.get(batch.worker).is_some_and(|f| f.send(batch).is_ok())
    };
    let span = tracing::info_span!("batcher");
    let _e = span.enter();
    let mut inputs = Inputs::new(rxs, lossless);
    let mut meter = StageMeter::new(stats, Stage::Preprocess);
    let item_len = pre.item_len();
    let mut current: Option<Carrier> = None;
    let mut deadline: Option<Instant> = None;
    // While the server is away, a live frame goes to inference (to find out whether it is
    // back) at most this often; the others skip it.
    let mut probed = Instant::now();
    loop {
        // While the inference server is away, file sources' frames wait in their queues (their
        // capture waits with them): the batches in flight are tried again by the workers, and
        // a live source's new frames still pass, marked "inference unavailable".
        // Not once the run is stopping: their captures, blocked on those queues, must see it.
        let paused = stats.inference_down.load(Ordering::Relaxed) == 1 && !stop.load(Ordering::Relaxed);
        inputs.pause_lossless(paused);
        let next = inputs.next(deadline);
        let closed = matches!(next, Next::Closed);
        match next {
            Next::Frame(f) if f.lost => {
                if tx.send(Explained::bare(f, false)).is_err() {
                    break;
                }
            }
            Next::Frame(f) => {
                // A live frame never waits for a slot while the server is away (the workers
                // may all be waiting for it with file sources' batches), and tries the server
                // at most every PROBE_EVERY.
                let away = live_while_away(&f, stats, lossless);
                let mut skip = away && !probe_due(&mut probed);
                if !skip && current.is_none() {
                    current = if away {
                        free.try_next()
                    } else {
                        match wait_free(&mut free, &mut inputs, (stats, stop), &tx) {
                            Some(batch) => Some(batch),
                            None => break,
                        }
                    };
                    if current.is_some() {
                        let left = expected.and_then(|e| e.checked_sub(received));
                        target = batch_target(b, sessions, left);
                        // Rows for the faithfulness probes waiting (see `faith`).
                        if let Some(p) = probes {
                            target = target.saturating_sub(p.reserve(b)).max(1);
                        }
                        deadline = Some(Instant::now() + timeout);
                    }
                    skip = current.is_none();
                }
                if skip {
                    FrameNotExplained.emit(stats);
                    if tx.send(Explained::bare(f, true)).is_err() {
                        break;
                    }
                    continue;
                }
                received += 1;
                let Some(batch) = current.as_mut() else { break };
                meter.time(|| {
                    let i = batch.frames.len();
                    batch
                        .specs
                        .push(targets.get(f.source));
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
                });
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
    meter.finish();
}

/// A live frame while the inference server is away: written at once, marked, unless it is
/// time to try the server again (and a slot is free). It may overtake its source's frames in a
/// batch that waits for the server: the sink puts them back in order, and gives up on the late
/// ones after its gap limit, as for any live frame.
fn live_while_away(f: &Frame, stats: &Stats, lossless: &[bool]) -> bool {
    stats.inference_down.load(Ordering::Relaxed) == 1 && !lossless.get(f.source).copied().unwrap_or(false)
}

fn probe_due(probed: &mut Instant) -> bool {
    if probed.elapsed() >= PROBE_EVERY {
        *probed = Instant::now();
        return true;
    }
    false
}

/// A carrier with a free slot; while the inference server is away the live sources' frames go
/// on meanwhile, marked (the file sources' are paused in [`Inputs`]). `None` once inference or
/// the next stage has shut down.
fn wait_free(
    free: &mut Free,
    inputs: &mut Inputs,
    (stats, stop): (&Stats, &AtomicBool),
    tx: &Sender<Explained>,
) -> Option<Carrier> {
    loop {
        if stats.inference_down.load(Ordering::Relaxed) == 0 || stop.load(Ordering::Relaxed) {
            // Not blocking for good: the server may go away while this waits.
            match free.next_within(Duration::from_millis(100)) {
                Ok(Some(c)) => return Some(c),
                Ok(None) => continue,
                Err(()) => return None,
            }
        }
        if let Some(c) = free.try_next() {
            return Some(c);
        }
        inputs.pause_lossless(true);
        match inputs.next(Some(Instant::now() + Duration::from_millis(50))) {
            Next::Frame(f) => {
                let unavailable = !f.lost;
                if unavailable {
                    FrameNotExplained.emit(stats);
                }
                tx.send(Explained::bare(f, unavailable)).ok()?;
            }
            Next::Timeout => {}
            // Only the file sources are left; they wait for the slot.
            Next::Closed => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// See [`live_while_away`].
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The sources' channels, read together through one `Select` (a closed channel is left out
/// of it), so waiting for a frame allocates nothing; it is rebuilt only when a source closes or
/// the lossless ones are paused or resumed.
struct Inputs<'a> {
    rxs: &'a [Receiver<Frame>],
    sel: Select<'a>,
    /// The source index of each of `sel`'s operations.
    ids: Vec<usize>,
    open: Vec<bool>,
    lossless: &'a [bool],
    paused: bool,
    /// Frames taken from each source so far: the next one's `seq`.
    taken: Vec<u64>,
}

enum Next {
    Frame(Frame),
    Timeout,
    Closed,
}

impl<'a> Inputs<'a> {
    fn new(rxs: &'a [Receiver<Frame>], lossless: &'a [bool]) -> Self {
        let mut inputs = Inputs {
            rxs,
            sel: Select::new(),
            ids: Vec::with_capacity(rxs.len()),
            open: vec![true; rxs.len()],
            lossless,
            paused: false,
            taken: vec![0; rxs.len()],
        };
        inputs.rebuild();
        inputs
    }

    fn rebuild(&mut self) {
        let mut sel = Select::new();
        self.ids.clear();
        for (i, r) in self.rxs.iter().enumerate() {
            let held = self.paused && self.lossless.get(i).copied().unwrap_or(false);
            if self.open[i] && !held {
                sel.recv(r);
                self.ids.push(i);
            }
        }
        self.sel = sel;
    }

    /// Leaves the lossless sources' frames where they are (`true`), or reads them again.
    fn pause_lossless(&mut self, paused: bool) {
        if paused != self.paused {
            self.paused = paused;
            self.rebuild();
        }
    }

    /// The next frame from any open source, waiting until `deadline` (forever if `None`).
    /// Frames are numbered here, where the pipeline takes them: a live source's capture numbers
    /// the frames it reads, and those a newer frame replaced in its mailbox would leave gaps
    /// the sinks could not tell from frames still in flight.
    fn next(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            if !self.open.contains(&true) {
                return Next::Closed;
            }
            if self.ids.is_empty() {
                // Only paused sources are open: look again soon (the server may be back).
                let nap = Instant::now() + Duration::from_millis(100);
                std::thread::sleep(
                    deadline
                        .map_or(nap, |d| d.min(nap))
                        .saturating_duration_since(Instant::now()),
                );
                return Next::Timeout;
            }
            let op = match deadline {
                Some(d) => match self.sel.select_deadline(d) {
                    Ok(op) => op,
                    Err(_) => return Next::Timeout,
                },
                None => match self.sel.select_timeout(Duration::from_millis(200)) {
                    Ok(op) => op,
                    // Now and then, so that a pause or a resume is seen.
                    Err(_) => return Next::Timeout,
                },
            };
            let i = self.ids.get(op.index()).copied().unwrap_or(0);
            match op.recv(&self.rxs[i]) {
                Ok(mut f) => {
                    if let Some(n) = self.taken.get_mut(i) {
                        f.seq = *n;
                        *n += 1;
                    }
                    return Next::Frame(f);
                }
                Err(_) => {
                    self.open[i] = false;
                    self.rebuild();
                }
            }
        }
    }
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
