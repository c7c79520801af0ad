//! Reading ONNX classifiers and rewriting them so that one ONNX Runtime run also returns the
//! gradients Grad-CAM needs (ORT itself has no autograd).
//!
//! - [`proto`]: the protobuf messages we read, written from the ONNX spec's field numbers.
//! - [`model`]: a parsed model with producer/consumer/rank indexes.
//! - [`augment`]: picks the target tensor, appends the head's backward graph, adds outputs.
//! - [`vjp`]: one backward rule per supported op; [`builder`] emits the nodes.

pub mod augment;
pub mod builder;
pub mod model;
pub mod proto;
pub mod vjp;

use std::path::PathBuf;

pub use augment::{augment, AugmentOptions, Augmented};
pub use model::OnnxModel;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read model {path}: {err}; check the path given as --model or [model] path")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("model {path} is not a valid ONNX file: {msg}; re-export it or check it is not truncated")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{0}")]
    Decode(String),
    #[error("model uses opset {found}; gradcamd needs opset >= {min}: re-export with a newer opset_version")]
    Opset { found: i64, min: i64 },
    #[error("not a CNN classifier: {0}")]
    NotCnn(String),
    #[error("target tensor '{name}' is not in the model; candidates: {candidates}")]
    TargetNotFound { name: String, candidates: String },
    #[error("unsupported op {op} (node '{node}') between the target tensor and the logits: {why}")]
    Unsupported { op: String, node: String, why: String },
}
