//! gradcamd: where a CNN classifier looks, on live video.
//!
//! # Layout
//! Engine (builds without OpenCV, `--no-default-features`):
//! - [`onnx`]: reads a classifier and appends the backward graph of its head (augmentation).
//! - [`engine`]: the ONNX Runtime session that runs the augmented model on a batch.
//! - [`cam`]: CAM methods on the activations and gradients.
//! - [`model`]: a model ready to serve: ONNX + [`sidecar`] + augmentation, checked up front.
//! - [`config`], [`cli`], [`error`]: configuration, flags, failure classes and exit codes.
//! - [`paths`]: which paths are one file, and how outputs are claimed; [`uri`]: source URIs
//!   with their secrets taken out.
//! - [`app`]: the subcommands (`inspect`, `augment`, `explain`, `bench`).
//!
//! Video pipeline (feature `video`), one file per stage, joined by bounded channels carrying
//! the types in [`frame`]:
//! - [`capture`]: one thread per source, `VideoCapture`;
//! - [`infer`]: one thread owning the session; batching, [`preprocess`], CAM per frame;
//! - [`render`]: N workers drawing heatmap and HUD;
//! - [`sink`]: one writer thread per output, re-ordering by frame number;
//! - [`pipeline`]: builds the validated plan and runs the threads; [`stats`] counts, [`cpu`]
//!   measures what each stage costs.
pub mod alloc;
pub mod app;
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
pub mod onnx;
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
