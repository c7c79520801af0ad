//! Everything that crosses a channel between stages, in one place.
//!
//! ```text
//! capture ──Frame──▶ infer ──Explained──▶ render ×N ──Annotated──▶ sink (per source) ──Shown──▶ display
//! ```
//!
//! The image carriers need OpenCV (feature `video`); [`ClassMap`], [`Pool`] and [`Demand`] do
//! not, so that `explain` and the engine build without it.

use ndarray::Array2;
#[cfg(feature = "video")]
use opencv::core::Mat;

/// One class's explanation of one item.
#[derive(Debug, Clone)]
pub struct ClassMap {
    pub class: usize,
    /// Softmax probability of the class.
    pub prob: f32,
    /// Raw score (logit) of the class.
    pub score: f32,
    /// The method's map at feature resolution, before normalization.
    pub cam: Array2<f32>,
}

impl ClassMap {
    /// No map: a frame that could not be explained, or a buffer to fill.
    pub fn empty() -> ClassMap {
        ClassMap::zeros((0, 0))
    }

    /// A map of `dims` (feature resolution), for buffers filled later.
    pub fn zeros(dims: (usize, usize)) -> ClassMap {
        ClassMap {
            class: 0,
            prob: 0.0,
            score: 0.0,
            cam: Array2::zeros(dims),
        }
    }

    /// Makes `self` a copy of `other`, reusing the map's buffer when the sizes agree.
    pub(crate) fn copy_from(&mut self, other: &ClassMap) {
        self.class = other.class;
        self.prob = other.prob;
        self.score = other.score;
        if self.cam.dim() == other.cam.dim() {
            self.cam.assign(&other.cam);
        } else {
            self.cam = other.cam.clone();
        }
    }
}

/// Whether an output that shows frames only on demand (the HTTP stream: while someone watches,
/// or when a snapshot is due) wants a source's next frame. Render asks before drawing one that
/// no file or window shows; the sink that holds the viewers answers.
pub(crate) trait Demand: Send + Sync {
    fn wants_frame(&self, source: usize) -> bool;
}

#[cfg(feature = "video")]
/// One decoded frame.
pub(crate) struct Frame {
    /// Index of the source in the plan; sinks route on it.
    pub source: usize,
    /// Position in the source, from 0. Capture counts the frames it reads; inference renumbers
    /// the frames it takes, densely (a live source's replaced frames are not counted), so from
    /// there on it is the frame's index in the source's output, and sinks re-order on it.
    pub seq: u64,
    /// Presentation time in milliseconds, as the decoder reports it, or one frame interval
    /// after the last where it reports none that advances (see `capture::Source::pts`).
    pub pts_ms: f64,
    /// BGR, 8-bit, 3 channels.
    pub image: Mat,
    /// When capture read it: the start of the latency the sinks measure.
    pub captured: std::time::Instant,
    /// A placeholder while a live source is down: shown as "stream lost", never explained.
    pub lost: bool,
}

/// The alerts that are on after a frame (the monitor's verdict), for the outputs that show them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Alerts {
    /// Too much attention outside the ROI.
    pub roi: bool,
    /// Attention drifted from the baseline.
    pub drift: bool,
}

#[cfg(feature = "video")]
/// A frame with its classification and explanation.
pub(crate) struct Explained {
    pub frame: Frame,
    /// One map per explained class (several for `topk`); empty when the frame could not be
    /// explained (it is still written, without overlay, so the output keeps every frame).
    pub maps: Vec<ClassMap>,
    /// The source's explained frames per second over the last 2 s, when this frame left
    /// inference: for the HUD.
    pub fps: f32,
    /// Not explained because the inference server was away: said on the frame, always.
    pub unavailable: bool,
    pub alerts: Alerts,
}

#[cfg(feature = "video")]
impl Explained {
    /// A frame that goes on without inference: a lost stream's placeholder, or (`unavailable`)
    /// a live frame while the inference server is away.
    pub(crate) fn bare(frame: Frame, unavailable: bool) -> Explained {
        Explained {
            frame,
            maps: Vec::new(),
            fps: 0.0,
            unavailable,
            alerts: Alerts::default(),
        }
    }
}

#[cfg(feature = "video")]
/// A frame ready for the sinks.
pub(crate) struct Annotated {
    pub source: usize,
    pub seq: u64,
    pub image: Mat,
    pub captured: std::time::Instant,
    /// Presentation time in the source (continuous over reconnects and loops): the file sink
    /// keeps a variable-rate source's timing with it.
    pub pts_ms: f64,
    /// Label of the (first) explained class, "" when not explained; for the HTTP page.
    pub label: std::sync::Arc<str>,
    pub prob: f32,
    /// A "stream lost" placeholder, not a frame of the source.
    pub lost: bool,
    /// Whether render drew the explanation on it: not when no output was going to show it.
    pub drawn: bool,
    pub alerts: Alerts,
}

/// A frame for a source's window: the display thread shows the newest and skips the rest.
#[cfg(feature = "video")]
pub(crate) struct Shown {
    pub source: usize,
    pub image: Mat,
}

/// Spare buffers handed back by a later stage for an earlier one to reuse, so that steady state
/// allocates nothing: frames' `Mat`s (sink → capture) and CAM maps (render → inference). A
/// bounded channel: giving to a full pool drops the buffer, taking from an empty one returns
/// `None` (the caller allocates).
pub(crate) struct Pool<T> {
    tx: crossbeam_channel::Sender<T>,
    rx: crossbeam_channel::Receiver<T>,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }
    }
}

impl<T> Pool<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        Pool { tx, rx }
    }

    pub(crate) fn take(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    pub(crate) fn give(&self, item: T) {
        let _ = self.tx.try_send(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_map_copies_into_its_own_buffer_or_takes_the_new_size() {
        let src = ClassMap {
            class: 7,
            prob: 0.25,
            score: 3.5,
            cam: Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32),
        };
        // Same size: the values, in the buffer it had (no allocation per frame once warm).
        let mut same = ClassMap::zeros((2, 3));
        let buffer = same.cam.as_ptr();
        same.copy_from(&src);
        assert_eq!((same.class, same.prob, same.score), (7, 0.25, 3.5));
        assert_eq!(same.cam, src.cam);
        assert_eq!(same.cam.as_ptr(), buffer);
        // Another size (an empty pooled map, or a model of another size): it takes src's.
        let mut other = ClassMap::empty();
        other.copy_from(&src);
        assert_eq!(other.cam, src.cam);
    }
}
