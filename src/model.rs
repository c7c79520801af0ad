//! A model ready to serve: the ONNX file, its sidecar, and the augmented graph, all checked
//! before any thread starts.

use std::path::PathBuf;

/// The default model, built into the binary so that `gradcamd run --source clip.mp4` works
/// from any directory. It is loaded exactly like a user's model.
pub const EMBEDDED_NAME: &str = "builtin:efficientnet_lite0";
pub const EMBEDDED_ONNX: &[u8] = include_bytes!("../models/efficientnet_lite0.onnx");
pub const EMBEDDED_SIDECAR: &str = include_str!("../models/efficientnet_lite0.toml");
pub const EMBEDDED_LABELS: &str = include_str!("../models/imagenet_labels.txt");

use crate::error::{fail, Kind, KindExt};
use crate::onnx::{augment, AugmentOptions, Augmented, OnnxModel};
use crate::sidecar::{InputOverrides, Sidecar};

pub struct Model {
    /// The file, or [`EMBEDDED_NAME`] for the built-in model.
    pub path: PathBuf,
    pub sidecar: Sidecar,
    pub graph: Augmented,
}

/// Everything that says which model to load and how to feed it.
#[derive(Debug, Clone, Default)]
pub struct ModelSpec {
    /// ONNX file; `None` is the built-in model.
    pub path: Option<PathBuf>,
    /// Sidecar; `None` is `<stem>.toml` beside the model, or, when there is none, a sidecar
    /// derived from the graph and `input`.
    pub sidecar: Option<PathBuf>,
    pub target_layer: Option<String>,
    pub in_graph_cam: bool,
    /// Flags / config keys over the sidecar.
    pub input: InputOverrides,
}

impl Model {
    pub fn load(spec: &ModelSpec) -> anyhow::Result<Self> {
        let (path, mut sidecar, onnx) = match &spec.path {
            None => {
                let sc = match &spec.sidecar {
                    Some(p) => Sidecar::load(p),
                    None => Sidecar::embedded(),
                };
                let onnx = OnnxModel::from_bytes(EMBEDDED_ONNX.to_vec()).map_err(|e| fail(Kind::Model, e))?;
                (PathBuf::from(EMBEDDED_NAME), sc.kind(Kind::Config)?, onnx)
            }
            Some(path) => {
                if !path.exists() {
                    return Err(fail(
                        Kind::Model,
                        format!(
                            "model file {} does not exist; check --model or [model] path",
                            path.display()
                        ),
                    ));
                }
                let onnx = OnnxModel::load(path).map_err(|e| {
                    let k = Kind::from(&e);
                    fail(k, e)
                })?;
                let implicit = Sidecar::path_for(path);
                let sc = match &spec.sidecar {
                    Some(p) => Sidecar::load(p).kind(Kind::Config)?,
                    None if implicit.is_file() => Sidecar::load(&implicit).kind(Kind::Config)?,
                    None => Sidecar::derive(&onnx, path, &spec.input).map_err(|e| fail(Kind::Config, e))?,
                };
                (path.clone(), sc, onnx)
            }
        };
        sidecar.apply(&spec.input).map_err(|e| fail(Kind::Config, e))?;
        if !onnx.real_inputs().any(|v| v.name == sidecar.input.name) {
            let names: Vec<&str> = onnx.real_inputs().map(|v| v.name.as_str()).collect();
            return Err(fail(
                Kind::Config,
                format!(
                    "sidecar {} names input '{}', but the model's inputs are: {}",
                    sidecar.path.display(),
                    sidecar.input.name,
                    names.join(", ")
                ),
            ));
        }
        let opts = AugmentOptions {
            target_layer: spec.target_layer.clone(),
            logits: Some(sidecar.output.logits.clone()),
            in_graph_cam: spec.in_graph_cam,
            ..Default::default()
        };
        let mut graph = augment(&onnx, &opts).map_err(|e| {
            let k = Kind::from(&e);
            fail(k, format!("{}: {e}", path.display()))
        })?;
        graph.input_name = sidecar.input.name.clone();
        Ok(Model { path, sidecar, graph })
    }

    pub fn num_classes(&self) -> Option<usize> {
        self.graph
            .fc
            .as_ref()
            .map(|f| f.classes)
            .or((!self.sidecar.labels.is_empty()).then_some(self.sidecar.labels.len()))
    }
}
