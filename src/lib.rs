//! gradcamd: where a CNN classifier looks, on live video.
//!
//! # Layout
//! Engine (builds without OpenCV, `--no-default-features`):
//! - [`onnx_gradcam`] (`crates/onnx-gradcam`, a library of its own): reads a classifier and
//!   appends the backward graph of its head (augmentation).
//! - [`engine`]: the ONNX Runtime session that runs the augmented model on a batch.
//! - [`explainer`]: one session's batches explained (several runs for `topk`), CAMs computed
//!   while ORT still owns the outputs; [`cam`]: the CAM methods on activations and gradients.
//! - [`model`]: a model ready to serve: ONNX + [`sidecar`] + augmentation, checked up front;
//!   [`builtin`]: the default model in the binary.
//! - [`config`], [`cli`], [`error`]: configuration as parsed (`[model]` is also every
//!   command's model flags), flags, failure classes and exit codes.
//! - [`paths`]: which paths are one file, and how outputs are claimed; [`uri`]: source URIs
//!   with their secrets taken out.
//! - [`monitor`]: per source, in frame order: smoothing, ROI share and alerts, events, whose
//!   logs [`events`] writes on threads of their own.
//! - [`stats`] counts (stages emit named events, [`stats::event`]; each stage loop has one
//!   [`stats::StageMeter`]), [`cpu`] and [`alloc`] measure what each stage costs, [`metrics`]
//!   prints them for Prometheus.
//! - [`app`]: the subcommands (`run`, `explain`, `inspect`, `augment`, `bench`, `compare`).
//!
//! Video pipeline (feature `video`), one file per stage, joined by bounded channels carrying
//! the types in [`frame`]:
//! - [`capture`]: one thread per source, `VideoCapture`;
//! - [`infer`]: a batching thread ([`preprocess`] into free input slots), one thread per ORT
//!   session, and the in-order release that feeds the monitors;
//! - [`render`]: N workers drawing heatmap and HUD;
//! - [`sink`]: one thread per source, re-ordering by frame number and feeding that source's
//!   outputs (file, HTTP hub, window);
//! - [`pipeline`]: builds the validated plan and runs the threads, with a shutdown deadline.
pub mod alloc;
pub mod app;
pub mod builtin;
pub mod cam;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod events;
pub mod explainer;
pub mod frame;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod npy;
pub mod paths;
pub mod sidecar;

#[cfg(feature = "video")]
pub mod capture;
#[cfg(feature = "video")]
pub mod infer;
#[cfg(feature = "video")]
pub mod pipeline;
#[cfg(feature = "video")]
pub mod preprocess;
#[cfg(feature = "video")]
pub mod render;
#[cfg(feature = "video")]
pub mod sink;
pub mod stats;
pub mod uri;

/// `eprintln!` that never panics: with stderr closed (`gradcamd run … 2>&1 | head -2`) a
/// message is lost, not the recording.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `println!` that never panics on a closed stdout (`gradcamd inspect m.onnx | head`).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
