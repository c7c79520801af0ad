//! Models without a sidecar, and channels-last (TensorFlow-style) models: the input layout and
//! size come from the graph, an NHWC target tensor is handed out as [N,C,h,w].
//! The test model is built here with gradcamd's own protobuf structs.

use gradcamd::engine::{Engine, EngineOptions};
use onnx_gradcam::proto::{
    attr_type, dtype, AttributeProto, DimValue, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use onnx_gradcam::{augment, AugmentOptions, OnnxModel};
use prost::Message;

fn vi(name: &str, elem: i32, dims: &[Option<i64>], sym: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(d.map_or_else(|| DimValue::Param(sym.into()), DimValue::Value)),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dtype::FLOAT,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// image [N,8,8,3] → ReduceMean(axes 1,2, keepdims 0) → Gemm(W [5,3], transB) → logits [N,5].
pub fn nhwc_model() -> (Vec<u8>, Vec<f32>) {
    let w: Vec<f32> = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let node = |op: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>| NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: format!("{op}_0"),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    };
    let ints = |n: &str, v: Vec<i64>| AttributeProto {
        name: n.into(),
        r#type: attr_type::INTS,
        ints: v,
        ..Default::default()
    };
    let int = |n: &str, v: i64| AttributeProto {
        name: n.into(),
        r#type: attr_type::INT,
        i: v,
        ..Default::default()
    };
    let g = GraphProto {
        node: vec![
            node(
                "ReduceMean",
                &["image"],
                "pooled",
                vec![ints("axes", vec![1, 2]), int("keepdims", 0)],
            ),
            node("Gemm", &["pooled", "W"], "logits", vec![int("transB", 1)]),
        ],
        name: "nhwc".into(),
        initializer: vec![f32_tensor("W", &[5, 3], &w)],
        input: vec![vi("image", dtype::FLOAT, &[None, Some(8), Some(8), Some(3)], "N")],
        output: vec![vi("logits", dtype::FLOAT, &[None, Some(5)], "N")],
        value_info: vec![],
    };
    let m = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "gradcamd-test".into(),
        producer_version: String::new(),
        graph: Some(g),
    };
    (m.encode_to_vec(), w)
}

#[test]
fn nhwc_target_is_transposed_and_its_gradient_is_right() {
    let (bytes, w) = nhwc_model();
    let m = OnnxModel::from_bytes(bytes).unwrap();
    let aug = augment(&m, &AugmentOptions::default()).unwrap();
    assert_eq!(aug.target, "image");
    assert!(aug.target_nhwc);
    let mut e = Engine::new(&aug, &EngineOptions::default()).unwrap();
    let x = ndarray::Array4::from_shape_fn((2, 8, 8, 3), |(n, i, j, c)| {
        ((n * 5 + i * 3 + j + c * 7) % 13) as f32 / 13.0
    });
    let (a, da, class) = e
        .run_with(x.view(), &[-1, 4], |b| {
            (b.a.to_owned(), b.da.to_owned(), b.class.to_vec())
        })
        .unwrap();
    assert_eq!(a.shape(), &[2, 3, 8, 8], "A must come out channels-first");
    for ((n, c, i, j), v) in a.indexed_iter() {
        assert_eq!(*v, x[[n, i, j, c]]);
    }
    assert_eq!(class[1], 4);
    // d logit_c / d image[n,i,j,k] = W[c,k] / 64 everywhere.
    for ((n, k, _, _), v) in da.indexed_iter() {
        let want = w[class[n] as usize * 3 + k] / 64.0;
        assert!((v - want).abs() < 1e-7, "dA[{n},{k}] = {v}, want {want}");
    }
}

#[cfg(feature = "video")]
#[test]
fn models_without_a_sidecar_take_layout_from_the_graph_and_the_rest_from_flags() {
    use std::process::Command;
    let dir = crate::util::scratch("no_sidecar");
    let (bytes, _) = nhwc_model();
    let m = dir.join("tf_like.onnx");
    std::fs::write(&m, bytes).unwrap();
    let img = crate::util::media("chelsea.png").display().to_string();
    let bin = env!("CARGO_BIN_EXE_gradcamd");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "explain",
            img.as_str(),
            "--model",
            m.to_str().unwrap(),
            "--json",
            "-",
        ];
        a.extend_from_slice(extra);
        Command::new(bin).args(a).output().unwrap()
    };
    // No sidecar, no normalization: the error names what is missing.
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--mean") && err.contains("tf_like.toml"), "{err}");
    // With --scale: runs, layout NHWC and size 8x8 from the graph.
    let o = run(&["--scale", "0.00392156"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cam = v[0]["cam_raw"].as_array().unwrap();
    assert_eq!((cam.len(), cam[0].as_array().unwrap().len()), (8, 8));
    assert_eq!(
        v[0]["target"]["label"],
        format!("class {}", v[0]["target"]["index"])
    );
}

#[cfg(feature = "video")]
#[test]
fn flags_reproduce_the_sidecar() {
    use std::process::Command;
    let dir = crate::util::scratch("flags_vs_sidecar");
    let m = dir.join("lite0.onnx");
    std::fs::copy(crate::util::root().join("models/efficientnet_lite0.onnx"), &m).unwrap();
    let labels = crate::util::root().join("models/imagenet_labels.txt");
    let img = crate::util::media("coffee.png").display().to_string();
    let bin = env!("CARGO_BIN_EXE_gradcamd");
    let with_flags = Command::new(bin)
        .args([
            "explain",
            &img,
            "--model",
            m.to_str().unwrap(),
            "--mean",
            "127",
            "--std",
            "128,128,128",
        ])
        .args(["--labels", labels.to_str().unwrap(), "--json", "-"])
        .output()
        .unwrap();
    let builtin = Command::new(bin)
        .args(["explain", &img, "--json", "-"])
        .output()
        .unwrap();
    assert!(
        with_flags.status.success(),
        "{}",
        String::from_utf8_lossy(&with_flags.stderr)
    );
    let a: serde_json::Value = serde_json::from_slice(&with_flags.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&builtin.stdout).unwrap();
    assert_eq!(a[0]["target"], b[0]["target"]);
    assert_eq!(a[0]["cam_raw"], b[0]["cam_raw"]);
}
