//! `gradcamd inspect` and `gradcamd augment`: what the rewriter sees in a model.

use std::fmt::Write as _;

use crate::cli::{AugmentArgs, InspectArgs};
use crate::error::{fail, Kind, KindExt};
use crate::onnx::proto::fmt_dims;
use crate::onnx::vjp::is_supported;
use crate::onnx::{augment, AugmentOptions, OnnxModel};

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let m = OnnxModel::load(&args.model).map_err(|e| fail(Kind::from(&e), e))?;
    let g = m.graph();
    let mut out = String::new();
    let dims = |n: &str| {
        m.declared_dims(n)
            .map(|d| fmt_dims(&d))
            .unwrap_or_else(|| "[?]".into())
    };
    let _ = writeln!(out, "model    {}", args.model.display());
    let _ = writeln!(
        out,
        "producer {} {}  opset {}  ir {}",
        m.proto.producer_name, m.proto.producer_version, m.opset, m.proto.ir_version
    );
    let _ = writeln!(out, "nodes    {}", g.node.len());
    for v in m.real_inputs() {
        let _ = writeln!(out, "input    {} {}", v.name, dims(&v.name));
    }
    for v in &g.output {
        let _ = writeln!(out, "output   {} {}", v.name, dims(&v.name));
    }
    let opts = AugmentOptions {
        target_layer: args.target_layer.clone(),
        ..Default::default()
    };
    match augment(&m, &opts) {
        Ok(a) => {
            let _ = writeln!(
                out,
                "target   {} {}{}",
                a.target,
                dims(&a.target),
                if args.target_layer.is_some() {
                    " (named)"
                } else {
                    " (pooling rule)"
                }
            );
            if a.pre_softmax {
                let _ = writeln!(
                    out,
                    "score    the input of the final Softmax (pre-softmax, as pytorch-grad-cam)"
                );
            }
            let _ = writeln!(
                out,
                "head     {} ops from the target to the logits:",
                a.head.len()
            );
            for (op, name) in &a.head {
                let _ = writeln!(out, "           {op:<20} {name}");
            }
            let _ = writeln!(
                out,
                "cam      {}",
                if a.fc.is_some() {
                    "available (GAP + fully-connected head)"
                } else {
                    "not available (head is not GAP + FC); use gradcam"
                }
            );
            let _ = writeln!(out, "candidates (4-D tensors nearest the logits first):");
            for c in &a.candidates {
                let _ = writeln!(
                    out,
                    "           {:<48} {:<18} from {}",
                    c.name,
                    c.dims.as_deref().map(fmt_dims).unwrap_or_else(|| "[?]".into()),
                    c.producer
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "augment  FAILED: {e}");
            let ops: std::collections::BTreeSet<&str> = g
                .node
                .iter()
                .map(|n| n.op_type.as_str())
                .filter(|o| !is_supported(o))
                .collect();
            let _ = writeln!(
                out,
                "ops without a backward rule in this model: {}",
                ops.into_iter().collect::<Vec<_>>().join(", ")
            );
            print!("{out}");
            return Err(fail(Kind::from(&e), e));
        }
    }
    print!("{out}");
    Ok(())
}

pub fn augment_cmd(args: &AugmentArgs) -> anyhow::Result<()> {
    let m = OnnxModel::load(&args.model).map_err(|e| fail(Kind::from(&e), e))?;
    let opts = AugmentOptions {
        target_layer: args.target_layer.clone(),
        in_graph_cam: args.in_graph_cam,
        ..Default::default()
    };
    let a = augment(&m, &opts).map_err(|e| fail(Kind::from(&e), e))?;
    std::fs::write(&args.output, &a.bytes)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write {}: {e}; check the directory exists and is writable",
                args.output.display()
            )
        })
        .kind(Kind::Output)?;
    eprintln!(
        "wrote {} (target {}, {} head ops; new input target_class, new outputs gradcamd_A, gradcamd_dA, gradcamd_class{})",
        args.output.display(),
        a.target,
        a.head.len(),
        if a.in_graph_cam { ", gradcamd_cam" } else { "" }
    );
    Ok(())
}
