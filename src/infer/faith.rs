//! Sampled faithfulness: every `faithfulness_every`-th frame of a source, two perturbed copies
//! of its model input (see [`crate::attention::probes_into`]) go through the model with the
//! explained class as target, and the change of that class's confidence is reported.
//!
//! The probes are made by the session that explained the frame, from the input still in its
//! slot and the CAM it just computed, and queued here. They ride in the free rows of the next
//! batches (the batcher leaves room for them: [`Probes::reserve`]), so on a loaded pipeline they
//! cost two items of a batch, not a run of their own. A session whose batch left rows free,
//! or that finds a batch's worth waiting, runs what is queued at once, in its own slot, so
//! the queue stays short and the last frames of a file are measured too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use opencv::core::{Mat, Size};
use opencv::prelude::*;

use crate::explainer::TargetSpec;
use crate::frame::{ClassMap, Frame};

/// Which perturbation a probe is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    CamMult,
    Deletion,
}

/// One perturbed input waiting for, or riding in, a batch: its outcome to be, and its data.
pub(crate) struct Probe {
    pub of: Faith,
    pub data: Vec<f32>,
}

/// A probe's outcome: the class's confidence on the perturbed input (NaN until it has run).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Faith {
    pub source: usize,
    pub seq: u64,
    pub pts_ms: f64,
    pub class: usize,
    /// The explained class's confidence (softmax) on the frame itself.
    pub base: f32,
    pub kind: Kind,
    pub prob: f32,
}

/// Makes the two probes of a model input from its CAM at feature resolution: upsampled and
/// normalized as pytorch-grad-cam hands a CAM to its metrics, then
/// [`crate::attention::probes_into`]. Keeps its buffers from one input to the next.
pub(crate) struct Perturber {
    /// The model input's (height, width), and whether it is interleaved (NHWC).
    hw: (usize, usize),
    interleaved: bool,
    up: Mat,
    small: Vec<f32>,
    order: Vec<f32>,
}

impl Perturber {
    pub(crate) fn new(item_dims: [usize; 3], interleaved: bool) -> Perturber {
        let hw = if interleaved {
            (item_dims[0], item_dims[1])
        } else {
            (item_dims[1], item_dims[2])
        };
        Perturber {
            hw,
            interleaved,
            up: Mat::default(),
            small: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Writes the CAM-multiplied input into `cam_mult` and the one with its hottest tenth
    /// deleted into `deletion`; false when the CAM cannot be upsampled.
    pub(crate) fn probes(
        &mut self,
        item: &[f32],
        cam: &ndarray::Array2<f32>,
        cam_mult: &mut [f32],
        deletion: &mut [f32],
    ) -> bool {
        let (h, w) = self.hw;
        let size = Size::new(w as i32, h as i32);
        if crate::render::upsample_normalized_with(cam, size, &mut self.up, &mut self.small).is_err() {
            return false;
        }
        let Ok(up) = self.up.data_typed::<f32>() else {
            return false;
        };
        crate::attention::probes_into(item, up, self.interleaved, cam_mult, deletion, &mut self.order);
        true
    }
}

pub(crate) struct Probes {
    /// Per source index: sample every N-th frame (0: never).
    every: Vec<u32>,
    item_len: usize,
    queue: Mutex<VecDeque<Probe>>,
    pending: AtomicUsize,
    /// Data buffers of probes that have run, for the next ones.
    free: Mutex<Vec<Vec<f32>>>,
    perturber: Mutex<Perturber>,
}

impl Probes {
    /// `None` when no source samples faithfulness.
    pub(crate) fn new(every: Vec<u32>, item_dims: [usize; 3], interleaved: bool) -> Option<Probes> {
        if every.iter().all(|&e| e == 0) {
            return None;
        }
        Some(Probes {
            every,
            item_len: item_dims.iter().product(),
            queue: Mutex::new(VecDeque::new()),
            pending: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
            perturber: Mutex::new(Perturber::new(item_dims, interleaved)),
        })
    }

    pub(crate) fn item_len(&self) -> usize {
        self.item_len
    }

    /// Probes waiting for a batch.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Rows a batch of `b` leaves for the probes waiting: up to half of it.
    pub(crate) fn reserve(&self, b: usize) -> usize {
        self.pending().min(b / 2)
    }

    /// Whether this frame is one to measure.
    pub(crate) fn due(&self, f: &Frame) -> bool {
        self.every
            .get(f.source)
            .is_some_and(|&e| e > 0 && f.seq % e as u64 == 0)
    }

    /// Queues the two probes of a frame from its model input and its (first) map.
    pub(crate) fn add(&self, f: &Frame, item: &[f32], map: &ClassMap) {
        if item.len() != self.item_len {
            return;
        }
        let mut bufs = [self.buffer(), self.buffer()];
        let [m, d] = &mut bufs;
        let made = self
            .perturber
            .lock()
            .is_ok_and(|mut p| p.probes(item, &map.cam, m, d));
        if !made {
            return;
        }
        let Ok(mut q) = self.queue.lock() else { return };
        for (kind, data) in [Kind::CamMult, Kind::Deletion].into_iter().zip(bufs) {
            q.push_back(Probe {
                of: Faith {
                    source: f.source,
                    seq: f.seq,
                    pts_ms: f.pts_ms,
                    class: map.class,
                    base: map.prob,
                    kind,
                    prob: f32::NAN,
                },
                data,
            });
        }
        self.pending.store(q.len(), Ordering::Relaxed);
    }

    fn buffer(&self) -> Vec<f32> {
        let v = self.free.lock().ok().and_then(|mut f| f.pop());
        let mut v = v.unwrap_or_default();
        v.resize(self.item_len, 0.0);
        v
    }

    /// Moves up to `room` queued probes into `input` from row `from` on, with their targets
    /// appended to `specs`; they are kept in `riding` until their batch has run.
    pub(crate) fn take_into(
        &self,
        input: &mut [f32],
        from: usize,
        room: usize,
        specs: &mut Vec<TargetSpec>,
        riding: &mut Vec<Probe>,
    ) {
        if room == 0 || self.pending() == 0 {
            return;
        }
        let Ok(mut q) = self.queue.lock() else { return };
        let len = self.item_len;
        for row in from..from + room {
            let Some(dst) = input.get_mut(row * len..(row + 1) * len) else {
                break;
            };
            let Some(p) = q.pop_front() else { break };
            dst.copy_from_slice(&p.data);
            specs.push(TargetSpec::Class(p.of.class));
            riding.push(p);
        }
        self.pending.store(q.len(), Ordering::Relaxed);
    }

    /// The outcomes of the probes that rode in a batch (`probs[j]`: probe j's confidence),
    /// into `out`; their buffers go back for reuse.
    pub(crate) fn finish(
        &self,
        riding: &mut Vec<Probe>,
        probs: impl Iterator<Item = f32>,
        out: &mut Vec<Faith>,
    ) {
        for (p, prob) in riding.iter().zip(probs) {
            out.push(Faith { prob, ..p.of });
        }
        self.recycle(riding);
    }

    /// Gives the buffers of probes that will not run (their batch failed) back.
    pub(crate) fn recycle(&self, riding: &mut Vec<Probe>) {
        if let Ok(mut f) = self.free.lock() {
            f.extend(riding.drain(..).map(|p| p.data));
        } else {
            riding.clear();
        }
    }
}
