//! The default model, built into the binary so that `gradcamd run --source clip.mp4` works
//! from any directory. It is loaded exactly like a user's model.

/// How the built-in model is named where a path would be.
pub(crate) const EMBEDDED_NAME: &str = "builtin:efficientnet_lite0";
/// The built-in model's name on an inference server, as `export-triton` names it.
pub(crate) const EMBEDDED_STEM: &str = "efficientnet_lite0";
pub const EMBEDDED_ONNX: &[u8] = include_bytes!("../models/efficientnet_lite0.onnx");
pub(crate) const EMBEDDED_SIDECAR: &str = include_str!("../models/efficientnet_lite0.toml");
pub(crate) const EMBEDDED_LABELS: &str = include_str!("../models/imagenet_labels.txt");
