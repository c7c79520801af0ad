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
//! - [`engine`]: where batches run, an ORT session here or, through [`remote`], a KServe v2
//!   server (Triton, KServe) that serves the augmented model.
//! - [`config`], [`cli`], [`error`]: configuration as parsed (`[model]` is also every
//!   command's model flags), flags, failure classes and exit codes.
//! - [`paths`]: which paths are one file, and how outputs are claimed; [`uri`]: source URIs
//!   with their secrets taken out.
//! - [`monitor`]: per source, in frame order: smoothing, ROI share and alerts, events, whose
//!   logs [`events`] writes on threads of their own.
//! - [`stats`] counts (stages emit named events, [`stats::event`]; each stage loop has one
//!   [`stats::StageMeter`]), [`cpu`] and [`alloc`] measure what each stage costs, [`metrics`]
//!   prints them for Prometheus.
//! - [`app`]: the subcommands (`run`, `explain`, `inspect`, `augment`, `export-triton`, `bench`, `compare`,
//!   `report`).
//!
//! Video pipeline (feature `video`), one file per stage, joined by bounded channels carrying
//! the types in [`frame`]:
//! - [`capture`]: one thread per source, `VideoCapture`;
//! - [`infer`]: a batching thread ([`preprocess`] into free input slots), one thread per ORT
//!   session, and the in-order release that feeds the monitors;
//! - [`render`]: N workers drawing heatmap and HUD;
//! - [`sink`]: one thread per source, re-ordering by frame number and feeding that source's
//!   outputs (file, HTTP hub, window);
//! - [`mqtt`]: state, labels, alerts and discovery on an MQTT broker, fed by the in-order
//!   release through a bounded outbox, on threads of its own;
//! - [`pipeline`]: builds the validated plan and runs the threads, with a shutdown deadline.
#![warn(unreachable_pub)]
// Dead code is found by the full build: without `video`, what only the pipeline uses is unused.
#![cfg_attr(not(feature = "video"), allow(dead_code))]

// The engine: everything the build without OpenCV has.
pub mod alloc;
pub mod app;
pub(crate) mod attention;
pub mod builtin;
pub mod cam;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod cpu;
pub mod engine;
pub mod error;
pub mod explainer;
pub(crate) mod frame;
pub mod model;
pub(crate) mod npy;
pub(crate) mod paths;
pub mod remote;
pub(crate) mod sidecar;
pub mod stats;

// The video pipeline and what only it uses.
#[cfg(feature = "video")]
pub(crate) mod capture;
#[cfg(feature = "video")]
pub(crate) mod events;
#[cfg(feature = "video")]
pub(crate) mod infer;
#[cfg(feature = "video")]
pub(crate) mod metrics;
#[cfg(feature = "video")]
pub(crate) mod monitor;
#[cfg(feature = "video")]
pub(crate) mod mqtt;
#[cfg(feature = "video")]
pub mod pipeline;
#[cfg(feature = "video")]
pub mod preprocess;
#[cfg(feature = "video")]
pub mod render;
#[cfg(feature = "video")]
pub(crate) mod sink;
#[cfg(feature = "video")]
pub(crate) mod uri;

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
