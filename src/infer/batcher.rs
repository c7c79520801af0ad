//! The batching thread: reads every source's channel, batches frames across sources (up to
//! `batch_size`, waiting at most `batch_timeout` after the first) and preprocesses each frame,
//! as it arrives, straight into a free input slot of one of the sessions.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use super::{Carrier, SLOTS};
use crate::engine::InputSlot;
use crate::explainer::Targets;
use crate::frame::{Explained, Frame};
use crate::preprocess::Preprocessor;
use crate::stats::{Stage, StageMeter, Stats};

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
}

impl Free {
    /// Waits while every slot is with the sessions: that is the backpressure. `None` once
    /// inference has shut down.
    fn next(&self) -> Option<Carrier> {
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
pub(super) fn run(
    rxs: &[Receiver<Frame>],
    mut pre: Preprocessor,
    targets: &Targets,
    (b, timeout, expected): (usize, Duration, Option<u64>),
    free: Free,
    full: Vec<Sender<Carrier>>,
    tx: Sender<Explained>,
    stats: &Stats,
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
    let mut inputs = Inputs::new(rxs);
    let mut meter = StageMeter::new(stats, Stage::Preprocess);
    let item_len = pre.item_len();
    let mut current: Option<Carrier> = None;
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
