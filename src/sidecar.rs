//! The model sidecar: a TOML file beside the model (`<model stem>.toml`) that says how to feed
//! it: input size, colour order, normalization, and the labels file. ONNX has no standard place
//! for these, and guessing them silently gives plausible-looking but wrong explanations.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot read model sidecar {path}: {err}; write one beside the model (see models/efficientnet_lite0.toml)")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("invalid model sidecar {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("cannot read labels file {path}: {err}; fix `labels` in {sidecar}")]
    Labels {
        path: PathBuf,
        sidecar: PathBuf,
        err: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Graph input to feed.
    pub name: String,
    /// Model input width in pixels; every frame is resized to it whole (no crop).
    pub width: u32,
    /// Model input height in pixels.
    pub height: u32,
    /// Channel order the model expects.
    pub color: ColorOrder,
    /// Tensor layout.
    #[serde(default = "default_layout")]
    pub layout: Layout,
    /// Per-channel mean, in the model's colour order, on the 0..255 pixel scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, same order and scale: `x = (pixel - mean) / std`.
    pub std: [f32; 3],
}

fn default_layout() -> Layout {
    Layout::Nchw
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Graph output holding the class scores.
    pub logits: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    labels: Option<PathBuf>,
    input: InputSpec,
    output: OutputSpec,
}

#[derive(Debug, Clone)]
pub struct Sidecar {
    pub path: PathBuf,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// One label per class index; empty when the sidecar names no labels file.
    pub labels: Vec<String>,
}

impl Sidecar {
    /// The sidecar path for a model: `models/foo.onnx` → `models/foo.toml`.
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("toml")
    }

    pub fn load(path: &Path) -> Result<Self, SidecarError> {
        let text = std::fs::read_to_string(path).map_err(|e| SidecarError::Read {
            path: path.to_path_buf(),
            err: e,
        })?;
        Self::parse(&text, path, |l| {
            let lp = path.parent().unwrap_or(Path::new(".")).join(l);
            std::fs::read_to_string(&lp).map_err(|e| SidecarError::Labels {
                path: lp,
                sidecar: path.to_path_buf(),
                err: e,
            })
        })
    }

    /// The sidecar of the model built into the binary.
    pub fn embedded() -> Result<Self, SidecarError> {
        Self::parse(
            crate::model::EMBEDDED_SIDECAR,
            Path::new(crate::model::EMBEDDED_NAME),
            |_| Ok(crate::model::EMBEDDED_LABELS.to_string()),
        )
    }

    fn parse(
        text: &str,
        path: &Path,
        read_labels: impl FnOnce(&Path) -> Result<String, SidecarError>,
    ) -> Result<Self, SidecarError> {
        let raw: Raw = toml::from_str(text).map_err(|e| SidecarError::Invalid {
            path: path.to_path_buf(),
            msg: e.message().to_string(),
        })?;
        let invalid = |msg: String| SidecarError::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        if raw.input.width == 0 || raw.input.height == 0 {
            return Err(invalid("input width and height must be > 0".into()));
        }
        if raw.input.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(invalid("input std must be finite and non-zero".into()));
        }
        let labels = match &raw.labels {
            Some(l) => read_labels(l)?
                .lines()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => Vec::new(),
        };
        Ok(Sidecar {
            path: path.to_path_buf(),
            input: raw.input,
            output: raw.output,
            labels,
        })
    }

    pub fn label(&self, class: usize) -> String {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// Resolves a target given as a label (case-insensitive) or an index.
    pub fn class_of(&self, target: &str) -> Result<usize, String> {
        if let Ok(i) = target.parse::<usize>() {
            if !self.labels.is_empty() && i >= self.labels.len() {
                return Err(format!(
                    "class index {i} is out of range (the model has {} classes)",
                    self.labels.len()
                ));
            }
            return Ok(i);
        }
        // ImageNet-style labels list synonyms ("tabby, tabby cat"): any of them names the class.
        let t = target.trim().to_lowercase();
        let exact =
            |l: &String| l.to_lowercase() == t || l.split(',').any(|syn| syn.trim().to_lowercase() == t);
        if let Some(i) = self.labels.iter().position(exact) {
            return Ok(i);
        }
        let mut near: Vec<&String> = self
            .labels
            .iter()
            .filter(|l| l.to_lowercase().contains(&t))
            .collect();
        near.truncate(5);
        let hint = if near.is_empty() {
            String::new()
        } else {
            format!(
                "; did you mean {}?",
                near.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(format!(
            "unknown class label \"{target}\" in {}{hint}",
            self.path.display()
        ))
    }
}
