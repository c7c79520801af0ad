//! Everything that crosses a channel between stages, in one place.
//!
//! ```text
//! capture ──Frame──▶ infer ──Explained──▶ render ×N ──Annotated──▶ sink (per source)
//! ```

use opencv::core::Mat;

use crate::explainer::ClassMap;

/// One decoded frame.
pub struct Frame {
    /// Index of the source in the plan; sinks route on it.
    pub source: usize,
    /// Position in the source, from 0, dense: sinks re-order on it and never wait for a gap.
    pub seq: u64,
    /// Presentation time in milliseconds, as the decoder reports it.
    pub pts_ms: f64,
    /// BGR, 8-bit, 3 channels.
    pub image: Mat,
    /// When capture read it: the start of the latency the sinks measure.
    pub captured: std::time::Instant,
    /// A placeholder while a live source is down: shown as "stream lost", never explained.
    pub lost: bool,
}

/// A frame with its classification and explanation.
pub struct Explained {
    pub frame: Frame,
    /// One map per explained class (several for `topk`); empty when the frame could not be
    /// explained (it is still written, without overlay, so the output keeps every frame).
    pub maps: Vec<ClassMap>,
    /// Pipeline throughput when this frame left inference, for the HUD.
    pub fps: f32,
}

/// A frame ready for the sinks.
pub struct Annotated {
    pub source: usize,
    pub seq: u64,
    pub image: Mat,
    pub captured: std::time::Instant,
    /// Label of the (first) explained class, "" when not explained; for the HTTP page.
    pub label: String,
    pub prob: f32,
}
