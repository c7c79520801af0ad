//! `gradcamd export-triton`: the augmented model as a Triton model repository. Triton's ONNX
//! Runtime backend (and KServe's Triton runtime) serve it unchanged, gradients included; its
//! dynamic batcher batches across every daemon that sends to it.

use std::fmt::Write as _;
use std::path::Path;

use ndarray::ArrayView4;

use crate::cli::ExportTritonArgs;
use crate::engine::{Engine, EngineOptions};
use crate::error::{fail, Classified, Kind, KindExt};
use onnx_gradcam::augment::{IN_TARGET, OUT_A, OUT_CAM, OUT_CLASS, OUT_DA};
use onnx_gradcam::frames::IN_FRAMES;

/// One input or output of `config.pbtxt`: dims without the batch dimension.
struct Tensor {
    name: String,
    data_type: &'static str,
    dims: Vec<usize>,
}

impl Tensor {
    fn new(name: &str, data_type: &'static str, dims: &[usize]) -> Tensor {
        Tensor {
            name: name.to_string(),
            data_type,
            dims: dims.to_vec(),
        }
    }

    /// A tensor that is only the batch dimension (`[N]`) has no dims of its own: Triton wants
    /// `dims: [ 1 ]` reshaped to none.
    fn entry(&self) -> String {
        let dims = if self.dims.is_empty() {
            vec![1]
        } else {
            self.dims.clone()
        };
        let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
        let reshape = if self.dims.is_empty() {
            " reshape: { shape: [ ] }"
        } else {
            ""
        };
        format!(
            "  {{ name: \"{}\" data_type: {} dims: [ {} ]{reshape} }}",
            self.name,
            self.data_type,
            dims.join(", ")
        )
    }
}

fn config_pbtxt(name: &str, args: &ExportTritonArgs, inputs: &[Tensor], outputs: &[Tensor]) -> String {
    let list = |t: &[Tensor]| t.iter().map(Tensor::entry).collect::<Vec<_>>().join(",\n");
    let mut s = String::new();
    let _ = write!(
        s,
        "# Written by gradcamd export-triton: the gradient-augmented model for Triton's ONNX Runtime backend.\n\
         name: \"{name}\"\n\
         platform: \"onnxruntime_onnx\"\n\
         max_batch_size: {}\n\
         dynamic_batching {{ }}\n\
         instance_group [ {{ count: {} }} ]\n\
         input [\n{}\n]\n\
         output [\n{}\n]\n",
        args.max_batch,
        args.instances,
        list(inputs),
        list(outputs)
    );
    s
}

pub fn export_triton(args: &ExportTritonArgs) -> anyhow::Result<()> {
    if !(1..=1024).contains(&args.max_batch) || !(1..=64).contains(&args.instances) {
        return Err(fail(
            Kind::Config,
            format!(
                "--max-batch {} / --instances {}: out of range 1..=1024 / 1..=64",
                args.max_batch, args.instances
            ),
        ));
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => match &args.model {
            Some(m) => m
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            None => crate::builtin::EMBEDDED_STEM.to_string(),
        },
    };
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(fail(
            Kind::Config,
            format!("--name \"{name}\" is not a directory name"),
        ));
    }
    // Loaded as `run` loads it (sidecar, checks, augmentation), so the served model is the
    // one the daemon expects.
    let spec = crate::config::ModelConfig {
        path: args.model.clone(),
        sidecar: args.sidecar.clone(),
        target_layer: args.target_layer.clone(),
        ..Default::default()
    };
    let model = crate::model::Model::load(&spec, args.in_graph_cam)?;
    let a = &model.graph;
    let shown = model.path.display();
    if a.input_elem_type != onnx_gradcam::proto::dtype::FLOAT && !args.u8_input {
        return Err(fail(
            Kind::Model,
            format!("{shown}: the input is not float32, and gradcamd sends float32 to a server; export with --u8-input (the graph then casts the frames itself)"),
        ));
    }
    let item: Vec<usize> = a
        .input_dims
        .as_deref()
        .and_then(|d| d.get(1..))
        .map(|d| d.iter().map(|v| v.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0)).collect())
        .and_then(|d: Vec<Option<usize>>| d.into_iter().collect::<Option<Vec<usize>>>())
        .filter(|d| d.len() == 3)
        .ok_or_else(|| {
            fail(
                Kind::Model,
                format!("{shown}: the input's size is not fixed ([N, C, H, W] with C, H and W known); export-triton needs it for config.pbtxt"),
            )
        })?;
    // The outputs' shapes, from one run here at batch 1: the graph declares some of them
    // (the gradient) with no size.
    let mut engine = Engine::new(a, &EngineOptions::default()).classified()?;
    let zeros = vec![0f32; item.iter().product()];
    let view = ArrayView4::from_shape((1, item[0], item[1], item[2]), &zeros)
        .map_err(|e| fail(Kind::Runtime, format!("input buffer: {e}")))?;
    let (logits, act, grad, cam) = engine
        .run_with(view, &[-1], |b| {
            let tail = |s: &[usize]| s.get(1..).unwrap_or_default().to_vec();
            (
                tail(b.logits.shape()),
                tail(b.a.shape()),
                tail(b.da.shape()),
                b.cam.map(|c| tail(c.shape())),
            )
        })
        .classified()?;
    let input = &model.sidecar.input;
    let (bytes, first) = if args.u8_input {
        let bytes = onnx_gradcam::frames::with_frames_input(
            &a.bytes,
            &a.input_name,
            a.input_elem_type,
            a.opset,
            &input.frames_front(),
        )
        .map_err(|e| fail(Kind::Model, format!("{shown}: {e}")))?;
        let hw3 = [input.height as usize, input.width as usize, 3];
        (bytes, Tensor::new(IN_FRAMES, "TYPE_UINT8", &hw3))
    } else {
        (a.bytes.clone(), Tensor::new(&a.input_name, "TYPE_FP32", &item))
    };
    let inputs = [first, Tensor::new(IN_TARGET, "TYPE_INT64", &[])];
    let mut outputs = vec![
        Tensor::new(&a.logits_output, "TYPE_FP32", &logits),
        Tensor::new(OUT_A, "TYPE_FP32", &act),
        Tensor::new(OUT_DA, "TYPE_FP32", &grad),
        Tensor::new(OUT_CLASS, "TYPE_INT64", &[]),
    ];
    if let Some(cam) = cam {
        outputs.push(Tensor::new(OUT_CAM, "TYPE_FP32", &cam));
    }
    let dir = args.repo.join(&name);
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::write(p, bytes))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot write {}: {e}; check the directory is writable",
                    p.display()
                )
            })
            .kind(Kind::Output)
    };
    write(&dir.join("1").join("model.onnx"), &bytes)?;
    write(
        &dir.join("config.pbtxt"),
        config_pbtxt(&name, args, &inputs, &outputs).as_bytes(),
    )?;
    crate::say!(
        "wrote {} (config.pbtxt, 1/model.onnx: target {}, max_batch_size {}, {} instance(s)); serve it with tritonserver --model-repository {}, and point gradcamd at it with [model] provider = \"remote\", model_name = \"{name}\"",
        dir.display(),
        a.target,
        args.max_batch,
        args.instances,
        args.repo.display()
    );
    Ok(())
}
