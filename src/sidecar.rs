//! The model sidecar: a TOML file beside the model (`<model stem>.toml`) that says how to feed
//! it: input size, colour order, normalization, and the labels file. ONNX has no standard place
//! for these, and guessing them silently gives plausible-looking but wrong explanations.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::builtin::{EMBEDDED_LABELS, EMBEDDED_NAME, EMBEDDED_SIDECAR};
use crate::config::{ColorOrder, ModelConfig};

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
pub enum Layout {
    /// [N, 3, H, W], planar (PyTorch, most ONNX exports).
    Nchw,
    /// [N, H, W, 3], interleaved (TensorFlow exports).
    Nhwc,
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

impl InputSpec {
    /// `x = pixel * scale + offset` for the frame's B, G and R channels: the model's
    /// `(pixel - mean) / std`, computed the one way that preprocessing here and a u8-input
    /// graph (`export-triton --u8-input`) both use, so they give the same floats.
    pub fn affine_bgr(&self) -> ([f32; 3], [f32; 3]) {
        let mut scale = [0.0; 3];
        let mut offset = [0.0; 3];
        for (bgr, c) in self.plane_of_bgr().into_iter().enumerate() {
            scale[bgr] = 1.0 / self.std[c];
            offset[bgr] = -self.mean[c] / self.std[c];
        }
        (scale, offset)
    }

    /// Shape of one item: [3, height, width] or [height, width, 3].
    pub fn item_dims(&self) -> [usize; 3] {
        let (h, w) = (self.height as usize, self.width as usize);
        match self.layout {
            Layout::Nchw => [3, h, w],
            Layout::Nhwc => [h, w, 3],
        }
    }

    /// The model's channel of the frame's B, G and R.
    pub fn plane_of_bgr(&self) -> [usize; 3] {
        match self.color {
            ColorOrder::Rgb => [2, 1, 0],
            ColorOrder::Bgr => [0, 1, 2],
        }
    }

    /// What a server whose model takes u8 frames is sent: the resized frame's own pixels,
    /// B, G, R and interleaved, unnormalized (the graph normalizes).
    pub fn raw_pixels(&self) -> InputSpec {
        InputSpec {
            color: ColorOrder::Bgr,
            layout: Layout::Nhwc,
            mean: [0.0; 3],
            std: [1.0; 3],
            ..self.clone()
        }
    }

    /// The u8-input graph's arithmetic for this input.
    pub fn frames_front(&self) -> onnx_gradcam::frames::FramesFront {
        let (scale_bgr, offset_bgr) = self.affine_bgr();
        onnx_gradcam::frames::FramesFront {
            height: self.height,
            width: self.width,
            scale_bgr,
            offset_bgr,
            rgb: self.color == ColorOrder::Rgb,
            nchw: self.layout == Layout::Nchw,
        }
    }
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

fn read_labels(p: &Path) -> Result<Vec<String>, String> {
    let text = crate::paths::read_text(p, "labels file")
        .map_err(|e| format!("cannot read labels file {}: {e}", p.display()))?;
    Ok(text
        .lines()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
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
    pub(crate) fn path_for(model: &Path) -> PathBuf {
        model.with_extension("toml")
    }

    pub fn load(path: &Path) -> Result<Self, SidecarError> {
        let text = crate::paths::read_text(path, "sidecar").map_err(|e| SidecarError::Read {
            path: path.to_path_buf(),
            err: e,
        })?;
        Self::parse(&text, path, |l| {
            let lp = path.parent().unwrap_or(Path::new(".")).join(l);
            crate::paths::read_text(&lp, "labels file").map_err(|e| SidecarError::Labels {
                path: lp,
                sidecar: path.to_path_buf(),
                err: e,
            })
        })
    }

    /// The sidecar of the model built into the binary.
    pub(crate) fn embedded() -> Result<Self, SidecarError> {
        Self::parse(EMBEDDED_SIDECAR, Path::new(EMBEDDED_NAME), |_| {
            Ok(EMBEDDED_LABELS.to_string())
        })
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
        let labels = match &raw.labels {
            Some(l) => read_labels(l)?
                .lines()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => Vec::new(),
        };
        let sc = Sidecar {
            path: path.to_path_buf(),
            input: raw.input,
            output: raw.output,
            labels,
        };
        sc.validate()?;
        Ok(sc)
    }

    /// A sidecar for a model that has none: input name, size and layout from the ONNX graph,
    /// normalization, colour order and labels from `o`. Errors name the missing piece.
    pub fn derive(onnx: &onnx_gradcam::OnnxModel, model: &Path, o: &ModelConfig) -> Result<Self, String> {
        let input = onnx.real_inputs().next().ok_or("the model has no input")?;
        let dims = input.dims().unwrap_or_default();
        let (layout, h, w) = match dims.as_slice() {
            [_, Some(3), h, w] => (Layout::Nchw, *h, *w),
            [_, h, w, Some(3)] => (Layout::Nhwc, *h, *w),
            _ => {
                return Err(format!(
                    "input '{}' has shape {}; gradcamd needs a 3-channel image input [N,3,H,W] or [N,H,W,3]",
                    input.name,
                    onnx_gradcam::proto::fmt_dims(&dims)
                ))
            }
        };
        let (height, width) = match (o.input_size, h, w) {
            (Some([w, h]), _, _) => (h, w),
            (None, Some(h), Some(w)) if h > 0 && w > 0 => (h as u32, w as u32),
            _ => {
                return Err(format!(
                    "input '{}' has a dynamic size; pass --input-size WxH or write a sidecar {}",
                    input.name,
                    Self::path_for(model).display()
                ))
            }
        };
        let (mean, std) = match (o.mean, o.std, o.scale) {
            (Some(m), Some(s), None) => (m, s),
            (None, None, Some(k)) => ([0.0; 3], [1.0 / k; 3]),
            (Some(m), None, None) => (m, [1.0; 3]),
            (None, Some(s), None) => ([0.0; 3], s),
            (None, None, None) => {
                return Err(format!(
                    "model {} has no sidecar ({}) and its input normalization is unknown: pass --mean R,G,B and --std R,G,B (0..255 scale), or --scale S, or write the sidecar (see models/efficientnet_lite0.toml)",
                    model.display(),
                    Self::path_for(model).display()
                ))
            }
            _ => return Err("--scale cannot be combined with --mean/--std".into()),
        };
        let output = onnx.graph().output.first().ok_or("the model has no output")?;
        let labels = match &o.labels {
            Some(p) => read_labels(p)?,
            None => Vec::new(),
        };
        let sc = Sidecar {
            path: model.with_extension("(derived)"),
            input: InputSpec {
                name: input.name.clone(),
                width,
                height,
                color: o.color.unwrap_or(ColorOrder::Rgb),
                layout,
                mean,
                std,
            },
            output: OutputSpec {
                logits: output.name.clone(),
            },
            labels,
        };
        sc.validate().map_err(|e| e.to_string())?;
        Ok(sc)
    }

    /// Flags and config keys override what the sidecar says.
    pub fn apply(&mut self, o: &ModelConfig) -> Result<(), String> {
        if o.scale.is_some() && (o.mean.is_some() || o.std.is_some()) {
            return Err("--scale cannot be combined with --mean/--std".into());
        }
        if let Some(k) = o.scale {
            self.input.mean = [0.0; 3];
            self.input.std = [1.0 / k; 3];
        }
        if let Some(m) = o.mean {
            self.input.mean = m;
        }
        if let Some(s) = o.std {
            self.input.std = s;
        }
        if let Some(c) = o.color {
            self.input.color = c;
        }
        if let Some([w, h]) = o.input_size {
            (self.input.width, self.input.height) = (w, h);
        }
        if let Some(p) = &o.labels {
            self.labels = read_labels(p)?;
        }
        self.validate().map_err(|e| e.to_string())
    }

    fn validate(&self) -> Result<(), SidecarError> {
        let invalid = |msg: &str| SidecarError::Invalid {
            path: self.path.clone(),
            msg: msg.to_string(),
        };
        if self.input.width == 0 || self.input.height == 0 {
            return Err(invalid("input width and height must be > 0"));
        }
        if self.input.std.iter().any(|&s| s == 0.0 || !s.is_finite())
            || self.input.mean.iter().any(|m| !m.is_finite())
        {
            return Err(invalid("input mean must be finite and std finite and non-zero"));
        }
        // torchvision's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) are on the 0..1 scale;
        // taken as 0..255 they give plausible, wrong maps. Never guess: say the equivalent.
        let (m, sd) = (self.input.mean, self.input.std);
        if m.iter().all(|&v| v.abs() <= 1.0) && sd.iter().all(|&v| v < 1.0) {
            let f = |v: [f32; 3]| {
                v.iter()
                    .map(|x| format!("{}", (x * 255.0 * 1000.0).round() / 1000.0))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(invalid(&format!(
                "mean {m:?} and std {sd:?} look like the 0..1 scale, but gradcamd's are on 0..255 (x = (pixel - mean) / std); use --mean {} --std {} (or mean = [...] / std = [...] in the sidecar)",
                f(m),
                f(sd)
            )));
        }
        Ok(())
    }

    pub fn label(&self, class: usize) -> String {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// Resolves a target given as a label (case-insensitive) or an index.
    pub(crate) fn class_of(&self, target: &str) -> Result<usize, String> {
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
