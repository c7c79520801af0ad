//! Augmentation against independent references: every backward rule on a tiny model with a
//! torch-autograd gradient (tools/make_tiny_models.py), the default model's original outputs
//! left bit-identical, and clear errors for what cannot be explained.

use gradcamd::engine::{Engine, EngineOptions};
use ndarray::ArrayView4;
use onnx_gradcam::{augment, AugmentOptions, OnnxError, OnnxModel};

use crate::util::{fixture, floats, ints, max_abs, max_abs_diff, proto, read_json, REL_TINY};

pub(crate) struct Run {
    pub logits: Vec<f32>,
    pub da: Vec<f32>,
    pub class: Vec<i64>,
}

pub(crate) fn run(model: &OnnxModel, opts: &AugmentOptions, x: &[f32], n: usize, targets: &[i64]) -> Run {
    let aug = augment(model, opts).unwrap_or_else(|e| panic!("augment: {e}"));
    let mut e = Engine::new(&aug, &EngineOptions::default()).unwrap_or_else(|e| panic!("session: {e}"));
    let per = x.len() / n;
    let dims = per / 4;
    let side = (dims as f64).sqrt() as usize;
    let input = ArrayView4::from_shape((n, 4, side, side), x).expect("x shape");
    e.run_with(input, targets, |b| Run {
        logits: b.logits.iter().copied().collect(),
        da: b.da.iter().copied().collect(),
        class: b.class.to_vec(),
    })
    .expect("run")
}

/// Target x: the gradient every rule in the head contributes to.
pub(crate) fn at_x() -> AugmentOptions {
    AugmentOptions {
        target_layer: Some("x".into()),
        ..Default::default()
    }
}

/// `model` is an edit of the tiny fixture `name` that computes the same function: at target x,
/// its top-1 classes and dx are the fixture's torch ones.
pub(crate) fn same_as_fixture(model: &OnnxModel, name: &str) {
    let j = read_json(&fixture(&format!("tiny/{name}.json")));
    let want_class = ints(&j["class"]);
    let n = want_class.len();
    let r = run(model, &at_x(), &floats(&j["x"]), n, &vec![-1; n]);
    assert_eq!(r.class, want_class, "{name}: top-1 classes");
    let want = floats(&j["dx"]);
    let d = max_abs_diff(&r.da, &want);
    assert!(d <= REL_TINY * max_abs(&want), "{name}: dA differs by {d}");
}

fn check_tiny(name: &str) {
    let model = OnnxModel::load(&fixture(&format!("tiny/{name}.onnx"))).expect("load tiny model");
    let j = read_json(&fixture(&format!("tiny/{name}.json")));
    let x = floats(&j["x"]);
    let want_class: Vec<i64> = ints(&j["class"]);
    let n = want_class.len();
    let through_softmax = name == "softmax";
    // Target x itself: the gradient every rule in the head contributes to.
    let opts = AugmentOptions {
        target_layer: Some("x".into()),
        through_softmax,
        ..Default::default()
    };
    let r = run(&model, &opts, &x, n, &vec![-1; n]);
    assert_eq!(r.class, want_class, "{name}: top-1 classes");
    let want_logits = floats(&j["logits"]);
    let dl = max_abs_diff(&r.logits, &want_logits);
    assert!(
        dl <= REL_TINY * max_abs(&want_logits).max(1.0),
        "{name}: logits differ by {dl}"
    );
    let want = floats(&j["dx"]);
    let d = max_abs_diff(&r.da, &want);
    let tol = REL_TINY * max_abs(&want).max(1e-3);
    assert!(
        d <= tol,
        "{name}: dA max abs diff {d} > {tol}\n got  {:?}\n want {:?}",
        &r.da[..8],
        &want[..8]
    );

    // With the pooling rule: x, or the tensor the fixture names.
    let opts = AugmentOptions {
        through_softmax,
        ..Default::default()
    };
    let aug = augment(&model, &opts).expect("augment with pooling rule");
    match j.get("default_target") {
        Some(t) => {
            assert_eq!(aug.target, t.as_str().unwrap(), "{name}: default target");
            let r = run(&model, &opts, &x, n, &vec![-1; n]);
            let want = floats(&j["d_default"]);
            let d = max_abs_diff(&r.da, &want);
            assert!(
                d <= REL_TINY * max_abs(&want).max(1e-3),
                "{name}: dA at default target differs by {d}"
            );
        }
        None => assert_eq!(aug.target, "x", "{name}: default target"),
    }
}

macro_rules! tiny {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check_tiny(stringify!($name)); } )* };
}

mod tiny_rules {
    use super::check_tiny;
    tiny!(
        gap_flatten_gemm,
        gap_flatten_gemm_transb0,
        gap_reshape_matmul_add,
        reducemean_attr,
        reducemean_input,
        relu_head,
        clip_relu6,
        hardswish,
        hardsigmoid,
        sigmoid,
        leakyrelu,
        silu,
        softmax,
        dropout_identity,
        se_broadcast_mul,
        batchnorm,
        batchnorm_before_pool,
        avgpool_1x1,
        transpose_layernorm,
        fixed_batch,
    );
}

/// The body's window ops (x [N,4,7,7]), against torch autograd through them.
mod tiny_body_rules {
    use super::check_tiny;
    tiny!(
        conv_relu,
        conv_strided_grouped,
        conv_depthwise_same,
        maxpool_overlap,
        maxpool_ceil,
        avgpool_pad_exclude,
        avgpool_pad_include,
        pad_conv,
        pad_crop_conv,
        concat_branches,
        slice_crop,
        slice_no_axes,
        erf_gelu,
        split_gate,
        split_unused,
        body_chain,
    );
}

#[test]
fn a_softmax_or_log_softmax_output_is_explained_by_the_raw_score_under_it() {
    // pytorch-grad-cam explains a classifier's raw score; a model that ends in (Log)Softmax
    // is differentiated at the Softmax's input unless asked otherwise. The softmax model is
    // x -> GAP -> Flatten -> Gemm(transB=1) -> Softmax, so d z_c / dx = W[c, k] / 9 at every
    // position of channel k (the reference json holds d prob_c / dx, the through_softmax case).
    let j = read_json(&fixture("tiny/softmax.json"));
    let x = floats(&j["x"]);
    let class = ints(&j["class"]);
    let mut proto = proto::tiny("softmax");
    let gemm_w = proto::node(&mut proto, "Gemm", 0).input[1].clone();
    let w = &proto::initializer(&mut proto, &gemm_w)
        .to_f32()
        .expect("float weights");
    assert_eq!(w.len(), 5 * 4);
    let want: Vec<f32> = class
        .iter()
        .flat_map(|&c| (0..4).flat_map(move |k| std::iter::repeat_n(w[c as usize * 4 + k] / 9.0, 9)))
        .collect();
    for op in ["Softmax", "LogSoftmax"] {
        let mut m = proto.clone();
        proto::node(&mut m, "Softmax", 0).op_type = op.into();
        let model = proto::parse(&m);
        let aug = augment(&model, &AugmentOptions::default()).expect("augments");
        assert!(aug.pre_softmax, "{op}: not looked through");
        let r = run(
            &model,
            &AugmentOptions::default(),
            &x,
            class.len(),
            &vec![-1; class.len()],
        );
        assert_eq!(r.class, class, "{op}: top-1 classes");
        // Measured 2.5e-10 of the largest value for both: one float32 rounding of W / 9.
        let d = max_abs_diff(&r.da, &want);
        assert!(
            d <= 1e-8 * max_abs(&want),
            "{op}: dA differs by {d}\n got  {:?}\n want {:?}",
            &r.da[..9],
            &want[..9]
        );
    }
}

#[test]
fn the_head_is_exactly_the_ops_between_the_target_and_the_score() {
    // What `inspect` and the "cam needs a GAP + FC head" error show. Not in it: the target's
    // own producer (se_broadcast_mul's Mul, when se_out is the target), the Softmax under
    // which the raw score is taken, ops off the path.
    let ops = |name: &str, opts: AugmentOptions| -> Vec<String> {
        let model = OnnxModel::load(&fixture(&format!("tiny/{name}.onnx"))).expect("load tiny model");
        let aug = augment(&model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        aug.head.into_iter().map(|(op, _)| op).collect()
    };
    let cases: [(&str, AugmentOptions, &[&str]); 6] = [
        (
            "se_broadcast_mul",
            AugmentOptions::default(),
            &["GlobalAveragePool", "Flatten", "Gemm"],
        ),
        (
            "se_broadcast_mul",
            at_x(),
            &[
                "GlobalAveragePool",
                "Sigmoid",
                "Mul",
                "GlobalAveragePool",
                "Flatten",
                "Gemm",
            ],
        ),
        (
            "softmax",
            AugmentOptions::default(),
            &["GlobalAveragePool", "Flatten", "Gemm"],
        ),
        (
            "softmax",
            AugmentOptions {
                through_softmax: true,
                ..Default::default()
            },
            &["GlobalAveragePool", "Flatten", "Gemm", "Softmax"],
        ),
        (
            "transpose_layernorm",
            AugmentOptions::default(),
            &[
                "GlobalAveragePool",
                "Transpose",
                "LayerNormalization",
                "Transpose",
                "Flatten",
                "Gemm",
            ],
        ),
        (
            "batchnorm_before_pool",
            at_x(),
            &[
                "BatchNormalization",
                "Relu",
                "GlobalAveragePool",
                "Flatten",
                "Gemm",
            ],
        ),
    ];
    for (name, opts, want) in cases {
        assert_eq!(ops(name, opts), want, "{name}");
    }

    // A branch off the target that does not reach the score (an auxiliary output) is not part
    // of the head, even when it has no backward rule (Sin has none).
    use proto::{NodeProto, ValueInfoProto};
    let mut m = proto::tiny("gap_flatten_gemm");
    let g = proto::graph(&mut m);
    g.node.push(NodeProto {
        input: vec!["x".into()],
        output: vec!["side".into()],
        name: "aux".into(),
        op_type: "Sin".into(),
        ..Default::default()
    });
    g.output.push(ValueInfoProto {
        name: "side".into(),
        ..Default::default()
    });
    let model = proto::parse(&m);
    let aug =
        augment(&model, &AugmentOptions::default()).unwrap_or_else(|e| panic!("with an aux output: {e}"));
    let head: Vec<String> = aug.head.into_iter().map(|(op, _)| op).collect();
    assert_eq!(head, ["GlobalAveragePool", "Flatten", "Gemm"]);

    // The candidates a user is offered for target_layer: the 4-D tensors the score depends on,
    // nearest first, each once (no weights, no 2-D tensors).
    let model = OnnxModel::load(&fixture("tiny/se_broadcast_mul.onnx")).expect("load");
    let aug = augment(&model, &AugmentOptions::default()).expect("augments");
    let names: Vec<String> = aug.candidates.into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "t4_globalaveragepool",
            "se_out",
            "x",
            "t2_sigmoid",
            "t1_globalaveragepool"
        ]
    );
}

#[test]
fn cam_weights_are_the_fc_rows_of_gap_fc_heads_and_nothing_else_has_them() {
    // For A -> GAP -> FC, d z_c / d A_k(i, j) = w_ck / (h w): torch autograd's dx in each
    // fixture, times 9, is row `class` of the CAM weights whatever the weight layout.
    use proto::{AttributeProto, NodeProto, TensorProto};
    let fc = |model: &OnnxModel| augment(model, &AugmentOptions::default()).expect("augments").fc;
    for name in [
        "gap_flatten_gemm",
        "gap_flatten_gemm_transb0",
        "gap_reshape_matmul_add",
        "fixed_batch",
    ] {
        let model = OnnxModel::load(&fixture(&format!("tiny/{name}.onnx"))).expect("load");
        let fc = fc(&model).unwrap_or_else(|| panic!("{name}: no CAM weights"));
        assert_eq!((fc.classes, fc.channels), (5, 4), "{name}");
        let j = read_json(&fixture(&format!("tiny/{name}.json")));
        let dx = floats(&j["dx"]);
        for (b, &c) in ints(&j["class"]).iter().enumerate() {
            let want: Vec<f32> = (0..4).map(|k| dx[b * 36 + k * 9] * 9.0).collect();
            let got = &fc.weights[c as usize * 4..][..4];
            // Measured up to 8.3e-8 of the largest weight (dx is float64 rounded to float32).
            let d = max_abs_diff(got, &want);
            assert!(
                d <= 1e-6 * max_abs(&want),
                "{name} item {b} class {c}: {got:?} vs {want:?}"
            );
        }
    }

    let plain = proto::tiny("gap_flatten_gemm");
    let base = fc(&proto::parse(&plain)).expect("CAM weights");
    let edited = |edit: &dyn Fn(&mut Vec<NodeProto>, &mut Vec<TensorProto>)| {
        let mut m = plain.clone();
        let g = proto::graph(&mut m);
        edit(&mut g.node, &mut g.initializer);
        fc(&proto::parse(&m))
    };
    // Gemm's alpha scales the scores, so the weights.
    let scaled = edited(&|nodes, _| {
        let gemm = nodes.iter_mut().find(|n| n.op_type == "Gemm").expect("Gemm");
        gemm.attribute.push(AttributeProto {
            name: "alpha".into(),
            r#type: 1,
            f: 2.0,
            ..Default::default()
        });
    })
    .expect("CAM weights with alpha");
    let doubled: Vec<f32> = base.weights.iter().map(|w| 2.0 * w).collect();
    assert_eq!(scaled.weights, doubled, "alpha = 2");
    // Anything between the pooling and the FC layer but reshapes (here a bias added before
    // it), or after it but its bias (here a mean over the classes), is not a GAP + FC head.
    let add_before = edited(&|nodes, inits| {
        inits.push(TensorProto {
            name: "shift".into(),
            dims: vec![1, 4],
            data_type: 1,
            float_data: vec![0.5; 4],
            ..Default::default()
        });
        let gemm = nodes.iter().position(|n| n.op_type == "Gemm").expect("Gemm");
        let flat = nodes[gemm].input[0].clone();
        nodes[gemm].input[0] = "shifted".into();
        nodes.insert(
            gemm,
            NodeProto {
                input: vec![flat, "shift".into()],
                output: vec!["shifted".into()],
                name: "shift_add".into(),
                op_type: "Add".into(),
                ..Default::default()
            },
        );
    });
    assert!(add_before.is_none(), "an Add before the FC layer");
    let mean_after = edited(&|nodes, _| {
        let gemm = nodes.iter_mut().find(|n| n.op_type == "Gemm").expect("Gemm");
        gemm.output[0] = "scores".into();
        nodes.push(NodeProto {
            input: vec!["scores".into()],
            output: vec!["logits".into()],
            name: "class_mean".into(),
            op_type: "ReduceMean".into(),
            attribute: vec![AttributeProto {
                name: "axes".into(),
                r#type: 7,
                ints: vec![1],
                ..Default::default()
            }],
            ..Default::default()
        });
    });
    assert!(mean_after.is_none(), "a mean over the classes after the FC layer");
    // Two FC layers: the first one's rows are not the class weights.
    let mut m = proto::tiny("relu_head");
    let g = proto::graph(&mut m);
    let relu = g.node.iter().position(|n| n.op_type == "Relu").expect("Relu");
    let (from, to) = (g.node[relu].input[0].clone(), g.node[relu].output[0].clone());
    g.node.remove(relu);
    for n in &mut g.node {
        n.input
            .iter_mut()
            .filter(|i| **i == to)
            .for_each(|i| *i = from.clone());
    }
    let model = proto::parse(&m);
    let head: Vec<String> = augment(&model, &AugmentOptions::default())
        .expect("augments")
        .head
        .into_iter()
        .map(|(op, _)| op)
        .collect();
    assert_eq!(head, ["GlobalAveragePool", "Flatten", "Gemm", "Gemm"]);
    assert!(fc(&model).is_none(), "two stacked FC layers");
    for name in ["relu_head", "avgpool_1x1", "transpose_layernorm", "batchnorm"] {
        let model = OnnxModel::load(&fixture(&format!("tiny/{name}.onnx"))).expect("load");
        assert!(fc(&model).is_none(), "{name} has no GAP + FC head");
    }
}

#[test]
fn a_softmax_without_an_axis_is_over_the_last_one() {
    // x -> GAP [N,4,1,1] -> Softmax (no axis: the last, of size 1, so every output is exactly
    // 1 and the gradient exactly 0; over the channels it would not be) -> Flatten -> Gemm.
    use proto::NodeProto;
    let mut m = proto::tiny("gap_flatten_gemm");
    let g = proto::graph(&mut m);
    let flatten = g
        .node
        .iter()
        .position(|n| n.op_type == "Flatten")
        .expect("Flatten");
    let pooled = std::mem::replace(&mut g.node[flatten].input[0], "soft".into());
    g.node.insert(
        flatten,
        NodeProto {
            input: vec![pooled],
            output: vec!["soft".into()],
            name: "last_axis_softmax".into(),
            op_type: "Softmax".into(),
            ..Default::default()
        },
    );
    let model = proto::parse(&m);
    let j = read_json(&fixture("tiny/gap_flatten_gemm.json"));
    let x = floats(&j["x"]);
    let opts = at_x();
    let r = run(&model, &opts, &x, 3, &[-1]);
    assert!(r.da.iter().all(|&v| v == 0.0), "dA: {:?}", &r.da[..9]);
}

#[test]
fn a_lower_rank_tensor_broadcast_against_a_higher_rank_one_gets_the_summed_gradient() {
    // gap_flatten_gemm with flat [N,4] + zeros [2,2,2,1,4] -> [2,2,2,N,4] -> mean over the
    // three leading axes -> Gemm: the same function, so torch autograd's dx of the fixture is
    // the reference; the gradient of flat has to be summed over the three axes it lacks.
    use proto::{AttributeProto, NodeProto, TensorProto};
    let mut m = proto::tiny("gap_flatten_gemm");
    let g = proto::graph(&mut m);
    g.initializer.push(TensorProto {
        name: "zeros5".into(),
        dims: vec![2, 2, 2, 1, 4],
        data_type: 1,
        float_data: vec![0.0; 32],
        ..Default::default()
    });
    let gemm = g.node.iter().position(|n| n.op_type == "Gemm").expect("Gemm");
    let flat = std::mem::replace(&mut g.node[gemm].input[0], "mean".into());
    let nodes = [
        NodeProto {
            input: vec![flat, "zeros5".into()],
            output: vec!["wide".into()],
            name: "broadcast_add".into(),
            op_type: "Add".into(),
            ..Default::default()
        },
        NodeProto {
            input: vec!["wide".into()],
            output: vec!["mean".into()],
            name: "lead_mean".into(),
            op_type: "ReduceMean".into(),
            attribute: vec![
                AttributeProto {
                    name: "axes".into(),
                    r#type: 7,
                    ints: vec![0, 1, 2],
                    ..Default::default()
                },
                AttributeProto {
                    name: "keepdims".into(),
                    r#type: 2,
                    i: 0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    ];
    for (k, n) in nodes.into_iter().enumerate() {
        g.node.insert(gemm + k, n);
    }
    same_as_fixture(&proto::parse(&m), "gap_flatten_gemm");
}

#[test]
fn an_op_of_a_custom_domain_is_refused_by_name_and_the_default_domain_is_not() {
    // A com.microsoft Gemm is not the ONNX one, whatever its name.
    let plain = proto::tiny("gap_flatten_gemm");
    let with_domain = |domain: &str| {
        let mut m = plain.clone();
        proto::node(&mut m, "Gemm", 0).domain = domain.into();
        let model = proto::parse(&m);
        augment(&model, &AugmentOptions::default()).map(|_| ())
    };
    let e = with_domain("com.microsoft")
        .expect_err("custom domain")
        .to_string();
    assert!(
        e.contains("custom domain 'com.microsoft'") && e.contains("Gemm"),
        "{e}"
    );
    with_domain("ai.onnx").expect("ai.onnx is the default domain, spelled out");
}

#[test]
fn reduce_mean_with_axes_as_an_input_and_keepdims_0_puts_the_axes_back() {
    // reducemean_input (opset 18, axes [2,3] as an input) with keepdims = 0: the same function
    // (Flatten of [N,4] is [N,4]), so the fixture's torch dx is the reference. Only without
    // keepdims does the gradient need the axes: to unsqueeze before expanding.
    let mut m = proto::tiny("reducemean_input");
    let rm = proto::node(&mut m, "ReduceMean", 0);
    rm.attribute.retain(|a| a.name != "keepdims");
    rm.attribute.push(proto::AttributeProto {
        name: "keepdims".into(),
        r#type: 2,
        i: 0,
        ..Default::default()
    });
    // Its declared shape was the keepdims one.
    let out = rm.output[0].clone();
    proto::graph(&mut m).value_info.retain(|v| v.name != out);
    same_as_fixture(&proto::parse(&m), "reducemean_input");
}

#[test]
fn explicit_class_changes_the_seed() {
    // gap_flatten_gemm: d logit_c / dx = W[c, k] / 9 at every position of channel k, so two
    // different classes must give different gradients, each constant over space.
    let model = OnnxModel::load(&fixture("tiny/gap_flatten_gemm.onnx")).unwrap();
    let j = read_json(&fixture("tiny/gap_flatten_gemm.json"));
    let x = floats(&j["x"]);
    let a = run(&model, &AugmentOptions::default(), &x, 3, &[0, 0, 0]);
    let b = run(&model, &AugmentOptions::default(), &x, 3, &[4]);
    assert_eq!(a.class, vec![0, 0, 0]);
    assert_eq!(
        b.class,
        vec![4, 4, 4],
        "a single target applies to the whole batch"
    );
    assert!(
        max_abs_diff(&a.da, &b.da) > 1e-3,
        "class 0 and 4 gave the same gradient"
    );
    for item in a.da.chunks(36) {
        for ch in item.chunks(9) {
            assert!(
                ch.iter().all(|v| (v - ch[0]).abs() < 1e-7),
                "GAP gradient not constant over space: {ch:?}"
            );
        }
    }
}

#[test]
fn default_model_original_outputs_are_bit_identical() {
    let model = OnnxModel::load(&crate::util::root().join("models/efficientnet_lite0.onnx")).unwrap();
    let aug = augment(&model, &AugmentOptions::default()).unwrap();
    assert_eq!(aug.target, "/_swish_1/Clip_output_0");
    assert_eq!(
        &aug.bytes[..aug.original.len()],
        &aug.original[..],
        "original bytes must be a prefix"
    );
    let mut fwd = Engine::forward_only(&aug, &EngineOptions::default()).unwrap();
    let mut grad = Engine::new(&aug, &EngineOptions::default()).unwrap();
    for n in [1usize, 3] {
        let x = ndarray::Array4::from_shape_fn((n, 3, 224, 224), |(b, c, i, j)| {
            (((b * 131 + c * 71 + i * 13 + j * 7) % 255) as f32 - 127.0) / 128.0
        });
        let l0: Vec<f32> = fwd
            .run_with(x.view(), &vec![-1; n], |b| b.logits.iter().copied().collect())
            .unwrap();
        let l1: Vec<f32> = grad
            .run_with(x.view(), &vec![-1; n], |b| b.logits.iter().copied().collect())
            .unwrap();
        let same = l0.iter().zip(&l1).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "batch {n}: logits changed by augmentation, max diff {}",
            max_abs_diff(&l0, &l1)
        );
    }
}

#[test]
fn unsupported_op_names_op_and_node() {
    let model = OnnxModel::load(&fixture("tiny/unsupported_op.onnx")).unwrap();
    let e = augment(&model, &AugmentOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OnnxError::Unsupported { .. }), "{msg}");
    assert!(
        msg.contains("Sin") && msg.contains("node '"),
        "error must name op and node: {msg}"
    );
    assert!(msg.contains("Gemm"), "error must list the supported ops: {msg}");
}

#[test]
fn model_without_pooling_is_not_a_cnn() {
    let model = OnnxModel::load(&fixture("tiny/no_pool.onnx")).unwrap();
    let e = augment(&model, &AugmentOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::NotCnn(_)), "{e}");
    assert!(
        e.to_string().contains("target_layer"),
        "error must say how to fix it: {e}"
    );
}

#[test]
fn unknown_target_layer_lists_candidates() {
    let model = OnnxModel::load(&crate::util::root().join("models/efficientnet_lite0.onnx")).unwrap();
    let opts = AugmentOptions {
        target_layer: Some("nope".into()),
        ..Default::default()
    };
    let e = augment(&model, &opts).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("/_swish_1/Clip_output_0"), "{e}");
}

#[test]
fn truncated_and_garbage_models_are_errors() {
    let bytes = std::fs::read(fixture("tiny/relu_head.onnx")).unwrap();
    for cut in [0, 1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let r = OnnxModel::from_bytes(bytes[..cut].to_vec())
            .and_then(|m| augment(&m, &AugmentOptions::default()).map(|_| ()));
        assert!(r.is_err(), "truncated at {cut} of {} was accepted", bytes.len());
    }
    let r = OnnxModel::from_bytes(b"this is not a protobuf \xff\xfe".to_vec());
    assert!(r.is_err());
}

#[test]
fn external_data_models_load_and_explain() {
    use onnx_gradcam::proto::{ModelProto, StringStringEntryProto};
    use prost::Message;
    // gap_flatten_gemm with its Gemm weight moved to an external file, as onnx's
    // save_as_external_data writes it.
    let dir = crate::util::scratch("external_data");
    let mut proto = ModelProto::decode(
        std::fs::read(fixture("tiny/gap_flatten_gemm.onnx"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let g = proto.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.dims == [5, 4])
        .expect("the Gemm weight [5,4]");
    let data = if w.raw_data.is_empty() {
        w.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        std::mem::take(&mut w.raw_data)
    };
    w.float_data.clear();
    let mut blob = vec![0u8; 16]; // an offset, so the offset is honoured
    blob.extend_from_slice(&data);
    std::fs::write(dir.join("weights.bin"), &blob).unwrap();
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: k.into(),
        value: v,
    };
    w.external_data = vec![
        kv("location", "weights.bin".into()),
        kv("offset", "16".into()),
        kv("length", data.len().to_string()),
    ];
    w.data_location = 1;
    let path = dir.join("ext.onnx");
    std::fs::write(&path, proto.encode_to_vec()).unwrap();

    let model = OnnxModel::load(&path).unwrap();
    assert!(model.has_external_data());
    let aug = augment(&model, &AugmentOptions::default()).unwrap();
    assert_eq!(aug.external_data_dir.as_deref(), Some(dir.as_path()));
    let fc = aug
        .fc
        .as_ref()
        .expect("FC weights are read from the external file");
    let want_w: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(fc.weights, want_w);

    let j = read_json(&fixture("tiny/gap_flatten_gemm.json"));
    let x = floats(&j["x"]);
    let r = run(&model, &AugmentOptions::default(), &x, 3, &[-1, -1, -1]);
    let want = floats(&j["dx"]);
    let d = max_abs_diff(&r.da, &want);
    assert!(
        d <= REL_TINY * max_abs(&want),
        "dA through external weights differs by {d}"
    );

    // An external file that escapes the model directory is refused, not read.
    let mut p2 = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let g = p2.graph.as_mut().unwrap();
    let w = g.initializer.iter_mut().find(|t| t.data_location == 1).unwrap();
    w.external_data[0].value = "../../etc/passwd".into();
    std::fs::write(dir.join("escape.onnx"), p2.encode_to_vec()).unwrap();
    let m2 = OnnxModel::load(&dir.join("escape.onnx")).unwrap();
    assert!(augment(&m2, &AugmentOptions::default()).unwrap().fc.is_none());
}

#[test]
fn float16_models_differentiate_in_float16_and_hand_out_float32() {
    for name in ["relu_head", "transpose_layernorm", "hardswish"] {
        let mut m = proto::tiny(name);
        proto::retype(&mut m, proto::dtype::FLOAT16);
        let model = proto::parse(&m);
        let aug = augment(&model, &at_x()).unwrap();
        assert_eq!(aug.elem_type, onnx_gradcam::proto::dtype::FLOAT16);
        assert_eq!(aug.logits_output, "gradcamd_logits");
        let j = read_json(&fixture(&format!("tiny/{name}.json")));
        let x = floats(&j["x"]);
        let opts = at_x();
        // Rounding to float16 can swap close logits, so seed the reference's classes explicitly.
        let want_class: Vec<i64> = ints(&j["class"]);
        let r = run(&model, &opts, &x, 3, &want_class);
        assert_eq!(r.class, want_class);
        let want = floats(&j["dx"]);
        let d = max_abs_diff(&r.da, &want);
        // float16 keeps ~3 decimal digits.
        assert!(
            d <= 1e-2 * max_abs(&want),
            "{name}: float16 dA differs by {d} (max |dx| {})",
            max_abs(&want)
        );
    }
}
