//! Augments an ONNX classifier for Grad-CAM and says what it found.
//!
//!     cargo run -p onnx-gradcam --example augment -- model.onnx out.onnx [--target TENSOR] [--cam]
//!
//! `--target` names the activation tensor to explain (default: the input of the pooling op
//! nearest to the logits); `--cam` also has the graph compute Grad-CAM itself.

use std::path::PathBuf;
use std::process::ExitCode;

use onnx_gradcam::augment::{IN_TARGET, OUT_A, OUT_CAM, OUT_CLASS, OUT_DA};
use onnx_gradcam::proto::fmt_dims;
use onnx_gradcam::{augment, AugmentOptions, OnnxModel};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("augment: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = AugmentOptions::default();
    let mut files = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--target" => opts.target_layer = Some(it.next().ok_or("--target needs a tensor name")?),
            "--cam" => opts.in_graph_cam = true,
            _ if a.starts_with("--") => return Err(format!("unknown option {a}").into()),
            _ => files.push(PathBuf::from(a)),
        }
    }
    let [input, output] = &files[..] else {
        return Err("usage: augment MODEL.onnx OUT.onnx [--target TENSOR] [--cam]".into());
    };
    let model = OnnxModel::load(input)?;
    let g = augment(&model, &opts)?;
    std::fs::write(output, &g.bytes).map_err(|e| format!("cannot write {}: {e}", output.display()))?;

    let dims = |d: &Option<Vec<Option<i64>>>| d.as_deref().map_or("?".into(), fmt_dims);
    println!("input     {} {}", g.input_name, dims(&g.input_dims));
    println!(
        "logits    {}{}",
        g.logits,
        if g.pre_softmax {
            " (scored before its softmax)"
        } else {
            ""
        }
    );
    println!("target    {} {}", g.target, dims(&g.target_dims));
    let head: Vec<&str> = g.head.iter().map(|(op, _)| op.as_str()).collect();
    println!("head      {}", head.join(" -> "));
    if let Some(fc) = &g.fc {
        println!(
            "CAM       FC weights for {} classes x {} channels",
            fc.classes, fc.channels
        );
    }
    let cam = if g.in_graph_cam {
        format!(", {OUT_CAM}")
    } else {
        String::new()
    };
    println!(
        "wrote     {} ({} bytes): feed {IN_TARGET} (int64, -1 = top-1), read {OUT_A}, {OUT_DA}, {OUT_CLASS}{cam}",
        output.display(),
        g.bytes.len()
    );
    Ok(())
}
