#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! - [`model`]: a parsed model with producer/consumer/rank indexes.
//! - [`augment`](mod@augment): picks the target tensor, appends the head's backward graph, adds outputs.
//! - [`frames`]: a u8 frames input that normalizes in the graph, for inference servers.
//! - [`proto`]: the protobuf messages read and written, from the ONNX spec's field numbers.
//!
//! Inside, one backward rule per supported op (`vjp.rs`; the body's window ops, Conv and the
//! pools, in `spatial.rs`) and a node emitter (`builder.rs`).
#![warn(unreachable_pub)]

pub mod augment;
mod builder;
pub mod frames;
pub mod model;
pub mod proto;
mod spatial;
mod vjp;

use std::path::PathBuf;

pub use augment::{augment, AugmentOptions, Augmented};
pub use model::OnnxModel;
pub use vjp::is_supported;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read model {path}: {err}; check the path and its permissions")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("model {path} is not a valid ONNX file: {msg}; re-export it or check it is not truncated")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{0}")]
    Decode(String),
    #[error(
        "model uses opset {found}; augmenting it needs opset >= {min}: re-export with a newer opset_version"
    )]
    Opset { found: i64, min: i64 },
    #[error("not a CNN classifier: {0}")]
    NotCnn(String),
    #[error("target tensor '{name}' is not in the model; candidates: {candidates}")]
    TargetNotFound { name: String, candidates: String },
    #[error("unsupported op {op} (node '{node}') between the target tensor and the logits: {why}")]
    Unsupported { op: String, node: String, why: String },
}
