//! `gradcamd inspect` and `gradcamd augment`: what the rewriter sees in a model.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::cli::{AugmentArgs, InspectArgs};
use crate::engine::{build_session, EngineError, EngineOptions, Provider};
use crate::error::{fail, Classified, Kind, KindExt};
use onnx_gradcam::augment::locate;
use onnx_gradcam::is_supported;
use onnx_gradcam::proto::fmt_dims;
use onnx_gradcam::{augment, AugmentOptions, OnnxModel};

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let m = crate::model::read_onnx(&args.model).classified()?;
    let g = m.graph();
    let mut out = String::new();
    let opts = AugmentOptions {
        target_layer: args.target_layer.clone(),
        ..Default::default()
    };
    let located = locate(&m, &opts);
    let probed = probe(&m, located.as_ref().ok());
    // Measured shape (batch 1), else the declared one, else the inferred rank.
    let dims = |n: &str| {
        if let Some(d) = probed.get(n).filter(|d| !d.is_empty()) {
            return format!(
                "[{}]",
                d.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
            );
        }
        match (m.declared_dims(n), m.rank(n)) {
            (Some(d), _) => fmt_dims(&d),
            (None, Some(r)) => fmt_dims(&vec![None; r]),
            (None, None) => "[?]".into(),
        }
    };
    let _ = writeln!(out, "model    {}", args.model.display());
    let _ = writeln!(
        out,
        "producer {} {}  opset {}  ir {}{}",
        m.proto.producer_name,
        m.proto.producer_version,
        m.opset,
        m.proto.ir_version,
        if m.has_external_data() {
            "  (external data)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "nodes    {}", g.node.len());
    let declared = |n: &str| {
        m.declared_dims(n)
            .map_or_else(|| "[?]".to_string(), |d| fmt_dims(&d))
    };
    for v in m.real_inputs() {
        let _ = writeln!(out, "input    {} {}", v.name, declared(&v.name));
    }
    for v in &g.output {
        let _ = writeln!(out, "output   {} {}", v.name, declared(&v.name));
    }
    if probed.is_empty() {
        let _ = writeln!(
            out,
            "shapes   as declared (the input size is not fixed, so the model was not run)"
        );
    } else {
        let _ = writeln!(out, "shapes   measured by one run at batch 1");
    }
    if let Ok(l) = &located {
        let how = if args.target_layer.is_some() {
            "named"
        } else {
            "pooling rule"
        };
        let layout = if l.nhwc {
            ", channels-last: handed out as [N,C,h,w]"
        } else {
            ""
        };
        let _ = writeln!(out, "target   {} {} ({how}{layout})", l.target, dims(&l.target));
        if l.pre_softmax {
            let _ = writeln!(
                out,
                "score    {}: the input of the final Softmax (pre-softmax, as pytorch-grad-cam)",
                l.score
            );
        }
        let _ = writeln!(
            out,
            "head     {} ops from the target to the score (✓ has a backward rule):",
            l.head.len()
        );
        for &i in &l.head {
            let n = m.node(i);
            let mark = if is_supported(&n.op_type) { "✓" } else { "✗" };
            let _ = writeln!(
                out,
                "         {mark} {:<20} {:<40} -> {}",
                n.op_type,
                n.name,
                dims(&n.output[0])
            );
        }
        let _ = writeln!(
            out,
            "candidates (4-D tensors, nearest the logits first; use one as --target-layer):"
        );
        for c in &l.candidates {
            let _ = writeln!(
                out,
                "           {:<48} {:<18} from {}",
                c.name,
                dims(&c.name),
                c.producer
            );
        }
    }
    let result = located.and_then(|_| augment(&m, &opts));
    match result {
        Ok(a) => {
            let cam = if a.fc.is_some() {
                "available (global-average-pool + fully-connected head)"
            } else {
                "not available (the head is not GAP + FC); the gradient methods work"
            };
            let _ = writeln!(out, "method cam {cam}");
            let _ = writeln!(
                out,
                "augment  ok: outputs gradcamd_A, gradcamd_dA, gradcamd_class (float32, [N,C,h,w])"
            );
            crate::out!("{}", out.trim_end_matches('\n'));
            Ok(())
        }
        Err(e) => {
            let _ = writeln!(out, "augment  FAILED: {e}");
            crate::out!("{}", out.trim_end_matches('\n'));
            Err(e).classified()
        }
    }
}

/// Shapes of the target, head and candidate tensors from one ORT run on zeros, when the input
/// size is fixed; empty otherwise (or when ORT cannot run the model).
fn probe(m: &OnnxModel, l: Option<&onnx_gradcam::augment::Located>) -> HashMap<String, Vec<usize>> {
    let Some(l) = l else { return HashMap::new() };
    let Some(input) = m.real_inputs().next() else {
        return HashMap::new();
    };
    let Some(dims) = input.dims() else {
        return HashMap::new();
    };
    let fixed: Option<Vec<usize>> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| if i == 0 { Some(1) } else { d.map(|v| v as usize) })
        .collect();
    let Some(fixed) = fixed else { return HashMap::new() };
    let mut names: Vec<String> = vec![l.target.clone()];
    names.extend(l.head.iter().map(|&i| m.node(i).output[0].clone()));
    names.extend(l.candidates.iter().map(|c| c.name.clone()));
    names.sort();
    names.dedup();
    match probe_shapes(m, &input.name, &fixed, &names) {
        Ok(shapes) => names.into_iter().zip(shapes).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "shape probe failed");
            HashMap::new()
        }
    }
}

pub fn augment_cmd(args: &AugmentArgs) -> anyhow::Result<()> {
    crate::paths::check_distinct(&[
        crate::paths::Named::new("the model", &args.model, crate::paths::Use::Input),
        crate::paths::Named::new("the output", &args.output, crate::paths::Use::Output),
    ])
    .map_err(|e| fail(Kind::Config, e))?;
    let m = crate::model::read_onnx(&args.model).classified()?;
    let opts = AugmentOptions {
        target_layer: args.target_layer.clone(),
        in_graph_cam: args.in_graph_cam,
        ..Default::default()
    };
    let a = augment(&m, &opts).classified()?;
    std::fs::write(&args.output, &a.bytes)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write {}: {e}; check the directory exists and is writable",
                args.output.display()
            )
        })
        .kind(Kind::Output)?;
    crate::say!(
        "wrote {} (target {}, {} head ops; new input target_class, new outputs gradcamd_A, gradcamd_dA, gradcamd_class{})",
        args.output.display(),
        a.target,
        a.head.len(),
        if a.in_graph_cam { ", gradcamd_cam" } else { "" }
    );
    Ok(())
}

/// Runs `model_bytes` once on zeros of `input_dims` (batch 1, float32) with `tensors` added as
/// graph outputs, and returns each tensor's shape: the shapes `inspect` shows when the model
/// carries no value_info. Fails for models whose input size is not fixed.
fn probe_shapes(
    model: &onnx_gradcam::OnnxModel,
    input_name: &str,
    input_dims: &[usize],
    tensors: &[String],
) -> Result<Vec<Vec<usize>>, EngineError> {
    use onnx_gradcam::proto::{GraphProto, TensorTypeProto, TypeProto, ValueInfoProto};
    crate::engine::init_runtime(None)?;
    let extra = GraphProto {
        output: tensors
            .iter()
            .filter(|t| !model.graph().output.iter().any(|o| &&o.name == t))
            .map(|t| {
                let elem_type = *model
                    .elem_types
                    .get(t)
                    .unwrap_or(&onnx_gradcam::proto::dtype::FLOAT);
                let tensor_type = Some(TensorTypeProto {
                    elem_type,
                    shape: None,
                });
                ValueInfoProto {
                    name: t.clone(),
                    r#type: Some(TypeProto { tensor_type }),
                }
            })
            .collect(),
        ..Default::default()
    };
    let mut bytes = model.bytes.clone();
    prost::encoding::message::encode(7, &extra, &mut bytes);
    let opts = EngineOptions::default();
    let mut session =
        build_session(&bytes, model.dir.as_deref(), &opts, &Provider::Cpu).map_err(EngineError::Session)?;
    let n: usize = input_dims.iter().product();
    let zeros = vec![0f32; n];
    let x = ort::value::TensorRef::from_array_view((input_dims.to_vec(), zeros.as_slice()))?;
    let outputs = session.run(ort::inputs![input_name => x])?;
    Ok(tensors
        .iter()
        .map(|t| {
            outputs
                .get(t.as_str())
                .map(|v| v.shape().iter().map(|&d| d.max(0) as usize).collect())
                .unwrap_or_default()
        })
        .collect())
}
