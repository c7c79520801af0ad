//! A model ready to serve: the ONNX file, its sidecar, and the augmented graph, all checked
//! before any thread starts.

use std::path::{Path, PathBuf};

use crate::builtin::{EMBEDDED_NAME, EMBEDDED_ONNX};
use crate::config::{ModelConfig, MAX_INPUT_SIDE};
use crate::error::{fail, Classified, Classify, Kind, KindExt};
use crate::paths::{read_capped, MAX_MODEL_BYTES};
use crate::sidecar::Sidecar;
use onnx_gradcam::{augment, AugmentOptions, Augmented, OnnxError, OnnxModel};

pub struct Model {
    /// The file, or [`EMBEDDED_NAME`] for the built-in model.
    pub path: PathBuf,
    pub sidecar: Sidecar,
    pub graph: Augmented,
}

/// Reads an ONNX file as the daemon reads every input: a regular file, at most
/// [`MAX_MODEL_BYTES`] (a FIFO or `/dev/zero` given as the model is refused, not waited on).
pub(crate) fn read_onnx(path: &Path) -> Result<OnnxModel, OnnxError> {
    OnnxModel::load_with(path, |p| read_capped(p, MAX_MODEL_BYTES, "model"))
}

/// A valid classifier of grayscale (or 4-channel) images is a model gradcamd cannot feed:
/// "unsupported", not a bad config.
fn check_channels(path: &Path, onnx: &OnnxModel, input: &str) -> anyhow::Result<()> {
    let Some(dims) = onnx.declared_dims(input) else {
        return Ok(());
    };
    // NCHW or NHWC: the channel axis is the small one next to the batch or at the end.
    let channels = match dims.as_slice() {
        [_, Some(c), _, _] if *c <= 4 => Some(*c),
        [_, _, _, Some(c)] if *c <= 4 => Some(*c),
        _ => None,
    };
    match channels.filter(|&c| c != 3) {
        Some(c) => Err(fail(
            Kind::Unsupported,
            format!(
                "{} takes {c}-channel input '{input}'; gradcamd feeds colour frames (3 channels, RGB or BGR)",
                path.display()
            ),
        )),
        None => Ok(()),
    }
}

/// What the sidecar says against what the graph declares: three colour channels, an input
/// size within bounds, and as many labels as classes. Each is one line before any work.
fn check_shapes(path: &Path, onnx: &OnnxModel, sc: &Sidecar, graph: &Augmented) -> anyhow::Result<()> {
    let shown = path.display();
    let (w, h) = (sc.input.width, sc.input.height);
    if w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE {
        return Err(fail(
            Kind::Config,
            format!("model input size {w}x{h} is over the {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} limit; check --input-size or the sidecar"),
        ));
    }
    check_channels(path, onnx, &sc.input.name)?;
    if let Some(bad) = onnx
        .declared_dims(&sc.input.name)
        .and_then(|dims| dims.into_iter().flatten().find(|&d| d > MAX_INPUT_SIDE as i64))
    {
        return Err(fail(
            Kind::Unsupported,
            format!("{shown} declares an input dimension of {bad}, over the {MAX_INPUT_SIDE} limit"),
        ));
    }
    let classes = graph.fc.as_ref().map(|f| f.classes).or_else(|| {
        onnx.declared_dims(&graph.logits_output)
            .and_then(|d| d.last().copied().flatten())
            .and_then(|n| usize::try_from(n).ok())
    });
    let labels = sc.labels.len();
    if let Some(n) = classes.filter(|&n| labels > 0 && n != labels) {
        return Err(fail(
            Kind::Config,
            format!("the labels file has {labels} lines, but {shown} has {n} classes; use the labels of this model (one per class, in order)"),
        ));
    }
    Ok(())
}

impl Model {
    /// Loads, checks and augments the model `spec` names; `in_graph_cam` also has the graph
    /// compute the Grad-CAM map itself.
    pub fn load(spec: &ModelConfig, in_graph_cam: bool) -> anyhow::Result<Self> {
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
                let onnx = read_onnx(path).classified()?;
                let implicit = Sidecar::path_for(path);
                let sc = match &spec.sidecar {
                    Some(p) => Sidecar::load(p).kind(Kind::Config)?,
                    None if implicit.is_file() => Sidecar::load(&implicit).kind(Kind::Config)?,
                    None => {
                        if let [only] = onnx.real_inputs().collect::<Vec<_>>()[..] {
                            check_channels(path, &onnx, &only.name)?;
                        }
                        Sidecar::derive(&onnx, path, spec).map_err(|e| fail(Kind::Config, e))?
                    }
                };
                (path.clone(), sc, onnx)
            }
        };
        sidecar.apply(spec).map_err(|e| fail(Kind::Config, e))?;
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
            in_graph_cam,
            ..Default::default()
        };
        let mut graph =
            augment(&onnx, &opts).map_err(|e| fail(e.class(), format!("{}: {e}", path.display())))?;
        graph.input_name = sidecar.input.name.clone();
        check_shapes(&path, &onnx, &sidecar, &graph)?;
        Ok(Model { path, sidecar, graph })
    }

    pub(crate) fn num_classes(&self) -> Option<usize> {
        self.graph
            .fc
            .as_ref()
            .map(|f| f.classes)
            .or((!self.sidecar.labels.is_empty()).then_some(self.sidecar.labels.len()))
    }
}
