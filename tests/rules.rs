//! Backward rules in the forms the torch-made tiny models do not take: a tiny model is edited
//! so that its function gains a term whose gradient is known in closed form (or keeps its
//! function exactly), and the augmented model's dx must be the fixture's torch dx plus that
//! term. Then the forms that cannot be differentiated here, refused by name.

use onnx_gradcam::{augment, OnnxModel};

use crate::augment::{at_x, run, same_as_fixture, Run};
use crate::util::{fixture, floats, ints, max_abs, max_abs_diff, proto, read_json, REL_TINY};
use proto::{AttributeProto, ModelProto, NodeProto, TensorProto};

fn node(op: &str, input: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: input.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("edit_{output}"),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn ints_init(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: proto::dtype::INT64,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn set_opset(m: &mut ModelProto, v: i64) {
    for o in m.opset_import.iter_mut().filter(|o| o.domain.is_empty()) {
        o.version = v;
    }
}

/// gap_flatten_gemm (x -> GAP -> Flatten `t2_flatten` [N,4] -> Gemm `pre` [N,5]) with
/// logits = pre + extra, where `nodes` compute `extra` [N,1] from `t2_flatten` (or from x).
/// extra is the same for every class, so each item's top-1 stays the fixture's.
fn plus_extra(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, opset: i64) -> ModelProto {
    let mut m = proto::tiny("gap_flatten_gemm");
    set_opset(&mut m, opset);
    proto::node(&mut m, "Gemm", 0).output[0] = "pre".into();
    let g = proto::graph(&mut m);
    g.node.extend(nodes);
    g.node.push(node("Add", &["pre", "extra"], "logits", vec![]));
    g.initializer.extend(inits);
    g.initializer.push(ints_init("col", &[2], &[-1, 1]));
    m
}

/// `g` [N] as the [N,1] column `extra`.
fn column(g: &str) -> NodeProto {
    node("Reshape", &[g, "col"], "extra", vec![])
}

fn explain(model: &OnnxModel) -> Run {
    let j = read_json(&fixture("tiny/gap_flatten_gemm.json"));
    let r = run(model, &at_x(), &floats(&j["x"]), 3, &[-1; 3]);
    assert_eq!(r.class, ints(&j["class"]), "top-1 classes");
    r
}

fn refusal(m: &ModelProto) -> String {
    match augment(&proto::parse(m), &at_x()) {
        Ok(_) => panic!("augmented a model it cannot differentiate"),
        Err(e) => e.to_string(),
    }
}

/// The fixture's dx plus `extra(k)` at every position of channel k of every item.
fn check_plus(name: &str, r: &Run, extra: impl Fn(usize) -> f32, rel: f32) {
    let base = floats(&read_json(&fixture("tiny/gap_flatten_gemm.json"))["dx"]);
    let want: Vec<f32> = base
        .iter()
        .enumerate()
        .map(|(i, v)| v + extra((i / 9) % 4))
        .collect();
    let d = max_abs_diff(&r.da, &want);
    assert!(
        d <= rel * max_abs(&want),
        "{name}: dA differs by {d}\n got  {:?}\n want {:?}",
        &r.da[..18],
        &want[..18]
    );
}

#[test]
fn reduce_mean_without_axes_is_over_everything_and_with_noop_is_the_identity() {
    // extra = mean(x) over all axes, batch included: sum_n d extra / dx = N / (N*36) = 1/36.
    let m = plus_extra(
        vec![
            node("ReduceMean", &["x"], "all", vec![attr_i("keepdims", 1)]),
            column("all"),
        ],
        vec![],
        17,
    );
    check_plus("no axes", &explain(&proto::parse(&m)), |_| 1.0 / 36.0, REL_TINY);
    // The same with an empty axes input (opset 18) and keepdims = 0: a scalar.
    let m = plus_extra(
        vec![
            node("ReduceMean", &["x", "none"], "all", vec![attr_i("keepdims", 0)]),
            column("all"),
        ],
        vec![ints_init("none", &[0], &[])],
        18,
    );
    check_plus(
        "empty axes",
        &explain(&proto::parse(&m)),
        |_| 1.0 / 36.0,
        REL_TINY,
    );

    // Opset 18 with noop_with_empty_axes and no axes: the identity, even with keepdims = 0.
    let mut m = proto::tiny("gap_flatten_gemm");
    set_opset(&mut m, 18);
    proto::node(&mut m, "GlobalAveragePool", 0).input[0] = "same".into();
    let noop = node(
        "ReduceMean",
        &["x"],
        "same",
        vec![attr_i("keepdims", 0), attr_i("noop_with_empty_axes", 1)],
    );
    proto::graph(&mut m).node.insert(0, noop);
    check_plus("noop", &explain(&proto::parse(&m)), |_| 0.0, REL_TINY);
}

#[test]
fn window_ops_refuse_by_name_what_they_cannot_differentiate() {
    // An AveragePool whose last windows hang over the input divides them by what ONNX and torch
    // count differently.
    let mut m = proto::tiny("avgpool_pad_include");
    proto::node(&mut m, "AveragePool", 0)
        .attribute
        .push(attr_i("ceil_mode", 1));
    let e = refusal(&m);
    assert!(e.contains("AveragePool") && e.contains("ceil_mode = 1"), "{e}");
    // Column-major argmax indices.
    let mut m = proto::tiny("maxpool_overlap");
    proto::node(&mut m, "MaxPool", 0)
        .attribute
        .push(attr_i("storage_order", 1));
    let e = refusal(&m);
    assert!(e.contains("MaxPool") && e.contains("storage_order = 1"), "{e}");
    // SAME padding depends on the input's size: a model that does not declare it is refused,
    // naming the fix.
    let mut m = proto::tiny("conv_depthwise_same");
    let x = &mut proto::graph(&mut m).input[0];
    let dims = &mut x
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap()
        .shape
        .as_mut()
        .unwrap()
        .dim;
    for (d, name) in dims[2..].iter_mut().zip(["H", "W"]) {
        d.value = Some(proto::DimValue::Param(name.into()));
    }
    let e = refusal(&m);
    assert!(
        e.contains("Conv")
            && e.contains("auto_pad SAME_UPPER needs the input's spatial size")
            && e.contains("shape inference"),
        "{e}"
    );
    // A window so large that its backward kernel would not fit in memory.
    let mut m = proto::tiny("maxpool_overlap");
    let pool = proto::node(&mut m, "MaxPool", 0);
    pool.attribute.retain(|a| a.name != "kernel_shape");
    pool.attribute
        .push(attr_ints("kernel_shape", &[100_000, 100_000]));
    let e = refusal(&m);
    assert!(
        e.contains("kernel_shape [100000, 100000]") && e.contains("larger than 256"),
        "{e}"
    );
    let mut m = proto::tiny("maxpool_overlap");
    let pool = proto::node(&mut m, "MaxPool", 0);
    pool.attribute.retain(|a| a.name != "kernel_shape");
    pool.attribute.push(attr_ints("kernel_shape", &[64, 64]));
    let e = refusal(&m);
    assert!(e.contains("more than 1024 elements"), "{e}");
    // A strided Slice (its gradient would be a scatter).
    let mut m = proto::tiny("slice_crop");
    proto::graph(&mut m)
        .initializer
        .push(ints_init("steps", &[2], &[2, 1]));
    proto::node(&mut m, "Slice", 0).input.push("steps".into());
    let e = refusal(&m);
    assert!(
        e.contains("Slice with steps [2, 1]") && e.contains("only steps of 1"),
        "{e}"
    );
    // A kernel the graph does not give.
    let mut m = proto::tiny("maxpool_overlap");
    proto::node(&mut m, "MaxPool", 0)
        .attribute
        .retain(|a| a.name != "kernel_shape");
    let e = refusal(&m);
    assert!(e.contains("kernel shape is unknown"), "{e}");
}

#[test]
fn matmul_with_a_1d_operand_is_refused() {
    let v = TensorProto {
        name: "v".into(),
        dims: vec![4],
        data_type: 1,
        float_data: vec![1.0, -2.0, 0.5, 3.0],
        ..Default::default()
    };
    // [N,4] x [4] and [4] x [4,N]: both [N].
    let b_1d = vec![node("MatMul", &["t2_flatten", "v"], "mv", vec![]), column("mv")];
    let a_1d = vec![
        node(
            "Transpose",
            &["t2_flatten"],
            "ft",
            vec![attr_ints("perm", &[1, 0])],
        ),
        node("MatMul", &["v", "ft"], "vm", vec![]),
        column("vm"),
    ];
    for nodes in [b_1d, a_1d] {
        let e = refusal(&plus_extra(nodes, vec![v.clone()], 17));
        assert!(e.contains("MatMul with a 1-D operand"), "{e}");
    }
}

#[test]
fn batch_normalization_of_a_5d_tensor_scales_each_channel() {
    // batchnorm_before_pool with its BatchNormalization on x reshaped to [N,4,3,3,1] (as a
    // BatchNorm3d sees it) and back: the same function, so the fixture's torch dx holds.
    let mut m = proto::tiny("batchnorm_before_pool");
    let bn = proto::node(&mut m, "BatchNormalization", 0);
    bn.input[0] = "x5".into();
    let out = std::mem::replace(&mut bn.output[0], "y5".into());
    let g = proto::graph(&mut m);
    g.initializer.push(ints_init("s5", &[5], &[-1, 4, 3, 3, 1]));
    g.initializer.push(ints_init("s4", &[4], &[-1, 4, 3, 3]));
    g.node.insert(0, node("Reshape", &["x", "s5"], "x5", vec![]));
    let at = g
        .node
        .iter()
        .position(|n| n.op_type == "BatchNormalization")
        .expect("BN")
        + 1;
    g.node.insert(at, node("Reshape", &["y5", "s4"], &out, vec![]));
    same_as_fixture(&proto::parse(&m), "batchnorm_before_pool");
}

/// d logits[n, class[n]] / dx by central differences of the model's forward pass in ONNX
/// Runtime: a reference that shares nothing with the backward rules.
fn central_differences(model: &OnnxModel, x: &[f32], class: &[i64], h: f32) -> Vec<f32> {
    use gradcamd::engine::{Engine, EngineOptions};
    let aug = augment(model, &at_x()).expect("augment");
    let mut e = Engine::forward_only(&aug, &EngineOptions::default()).expect("session");
    let n = class.len();
    let mut score = |x: &[f32]| -> Vec<f64> {
        let v = ndarray::ArrayView4::from_shape((n, 4, 3, 3), x).expect("x shape");
        e.run_with(v, &[], |b| {
            (0..n).map(|i| b.logits[[i, class[i] as usize]] as f64).collect()
        })
        .expect("forward")
    };
    let per = x.len() / n;
    let mut dx = vec![0f32; x.len()];
    let mut xp = x.to_vec();
    for k in 0..per {
        // Item i's score depends on item i's x only: one perturbed batch gives all n.
        for i in 0..n {
            xp[i * per + k] = x[i * per + k] + h;
        }
        let up = score(&xp);
        for i in 0..n {
            xp[i * per + k] = x[i * per + k] - h;
        }
        let down = score(&xp);
        for i in 0..n {
            xp[i * per + k] = x[i * per + k];
            dx[i * per + k] = ((up[i] - down[i]) / (2.0 * h as f64)) as f32;
        }
    }
    dx
}

#[test]
fn layer_normalization_over_channels_at_each_position_without_an_axis() {
    // ConvNeXt's LayerNorm2d on the feature map itself: x -> Transpose [N,3,3,4] ->
    // LayerNormalization (no axis: the last, the channels) -> Transpose back -> GAP -> Gemm.
    // Over the last axis or over the last three differ here, unlike on a pooled [N,1,1,4].
    let mut m = proto::tiny("gap_flatten_gemm");
    proto::node(&mut m, "GlobalAveragePool", 0).input[0] = "xl".into();
    let g = proto::graph(&mut m);
    let f = |name: &str, v: &[f32]| TensorProto {
        name: name.into(),
        dims: vec![4],
        data_type: 1,
        float_data: v.to_vec(),
        ..Default::default()
    };
    g.initializer.push(f("ln_scale", &[1.5, -0.5, 2.0, 0.8]));
    g.initializer.push(f("ln_bias", &[0.1, 0.2, -0.3, 0.4]));
    let nodes = [
        node("Transpose", &["x"], "xt", vec![attr_ints("perm", &[0, 2, 3, 1])]),
        node("LayerNormalization", &["xt", "ln_scale", "ln_bias"], "ln", vec![]),
        node("Transpose", &["ln"], "xl", vec![attr_ints("perm", &[0, 3, 1, 2])]),
    ];
    for (k, n) in nodes.into_iter().enumerate() {
        g.node.insert(k, n);
    }
    let model = proto::parse(&m);
    let j = read_json(&fixture("tiny/gap_flatten_gemm.json"));
    let x = floats(&j["x"]);
    let class = ints(&j["class"]);
    let r = run(&model, &at_x(), &x, 3, &class);
    let want = central_differences(&model, &x, &class, 1e-2);
    let d = max_abs_diff(&r.da, &want);
    // Measured 2.3e-5 against a largest |dx| of 0.32 (h = 0.01 in float32).
    assert!(
        d <= 2e-4 * max_abs(&want),
        "dA differs by {d} (max {})",
        max_abs(&want)
    );
}

#[test]
fn layer_normalization_without_an_axis_normalizes_the_last_one() {
    // transpose_layernorm says axis = -1; without it the default is the same axis.
    let mut m = proto::tiny("transpose_layernorm");
    proto::node(&mut m, "LayerNormalization", 0)
        .attribute
        .retain(|a| a.name != "axis");
    same_as_fixture(&proto::parse(&m), "transpose_layernorm");
}

mod gather {
    use super::*;

    /// extra = mean(Gather(flat, idx, axis)) over the gathered axis: d extra / d flat[k] =
    /// count of k in idx / len(idx), and d flat[k] / dx = 1/9.
    fn mean_of_gathered(idx: &[i64], axis: i64, opset: i64) -> ModelProto {
        plus_extra(
            vec![
                node(
                    "Gather",
                    &["t2_flatten", "idx"],
                    "picked",
                    vec![attr_i("axis", axis)],
                ),
                node(
                    "ReduceMean",
                    &["picked"],
                    "extra",
                    vec![attr_ints("axes", &[1]), attr_i("keepdims", 1)],
                ),
            ],
            vec![ints_init("idx", &[idx.len() as i64], idx)],
            opset,
        )
    }

    fn counts(idx: &[i64]) -> impl Fn(usize) -> f32 + '_ {
        move |k| idx.iter().filter(|&&i| i == k as i64).count() as f32 / idx.len() as f32 / 9.0
    }

    #[test]
    fn a_scalar_index_picks_one_column() {
        let m = plus_extra(
            vec![
                node(
                    "Gather",
                    &["t2_flatten", "two"],
                    "picked",
                    vec![attr_i("axis", 1)],
                ),
                column("picked"),
            ],
            vec![ints_init("two", &[], &[2])],
            17,
        );
        check_plus(
            "scalar index",
            &explain(&proto::parse(&m)),
            |k| (k == 2) as u8 as f32 / 9.0,
            REL_TINY,
        );
    }

    #[test]
    fn repeated_indices_add_up_from_opset_16_and_are_refused_before() {
        let idx = [2, 0, 2];
        // A negative axis too: -1 is the feature axis of [N,4].
        let r = explain(&proto::parse(&mean_of_gathered(&idx, -1, 16)));
        check_plus("repeats, opset 16", &r, counts(&idx), REL_TINY);
        let e = refusal(&mean_of_gathered(&idx, 1, 15));
        assert!(e.contains("needs opset >= 16"), "{e}");
    }

    #[test]
    fn unique_constant_indices_need_no_adding_before_opset_16() {
        let idx = [2, 0];
        let r = explain(&proto::parse(&mean_of_gathered(&idx, 1, 15)));
        check_plus("unique, opset 15", &r, counts(&idx), REL_TINY);
    }

    /// extra = mean over the index axes of Gather(flat^T [4,N], idx [2,2], axis).
    fn rank2(axis: i64, opset: i64) -> ModelProto {
        let (src, axes) = match axis {
            0 => ("ft", [0, 1]),
            _ => ("t2_flatten", [1, 2]),
        };
        let mut m = plus_extra(
            vec![
                node(
                    "Transpose",
                    &["t2_flatten"],
                    "ft",
                    vec![attr_ints("perm", &[1, 0])],
                ),
                node("Gather", &[src, "idx2"], "picked", vec![attr_i("axis", axis)]),
                node(
                    "ReduceMean",
                    &["picked"],
                    "picked_mean",
                    vec![attr_ints("axes", &axes), attr_i("keepdims", 0)],
                ),
                column("picked_mean"),
            ],
            vec![ints_init("idx2", &[2, 2], &[2, 0, 2, 1])],
            opset,
        );
        proto::graph(&mut m)
            .node
            .retain(|n| axis == 0 || n.op_type != "Transpose");
        m
    }

    #[test]
    fn an_index_tensor_on_axis_0_scatters_back_from_opset_16_only() {
        let r = explain(&proto::parse(&rank2(0, 16)));
        check_plus("rank-2 index", &r, counts(&[2, 0, 2, 1]), REL_TINY);
        let e = refusal(&rank2(0, 15));
        assert!(e.contains("supported on axis 0 from opset 16"), "{e}");
        let e = refusal(&rank2(1, 17));
        assert!(e.contains("supported on axis 0 from opset 16"), "{e}");
    }

    #[test]
    fn float16_models_scatter_back_too() {
        // ONNX Runtime's CPU kernels cannot add float16 in a scatter: this ran into "MLFloat16
        // data type is not supported with ScatterElements opset 16 when reduction is 'add'".
        let j = read_json(&fixture("tiny/gap_flatten_gemm.json"));
        for (name, mut m, idx) in [
            (
                "ScatterElements",
                mean_of_gathered(&[2, 0, 2], 1, 16),
                vec![2, 0, 2],
            ),
            ("ScatterND", rank2(0, 16), vec![2, 0, 2, 1]),
        ] {
            proto::retype(&mut m, proto::dtype::FLOAT16);
            // float16 rounding may swap close logits: seed the reference's classes.
            let r = run(
                &proto::parse(&m),
                &at_x(),
                &floats(&j["x"]),
                3,
                &ints(&j["class"]),
            );
            // float16 keeps ~3 decimal digits.
            check_plus(name, &r, counts(&idx), 1e-2);
        }
    }

    #[test]
    fn float64_models_scatter_into_float64_zeros() {
        // ONNX Runtime's CPU provider runs no float64 pooling, so this is checked in the graph:
        // a ConstantOfShape value is one element of the output type (ONNX spec).
        use prost::Message;
        for mut m in [mean_of_gathered(&[2, 0, 2], 1, 16), rank2(0, 16)] {
            proto::retype(&mut m, proto::dtype::DOUBLE);
            let a = augment(&proto::parse(&m), &at_x()).expect("augment");
            let g = ModelProto::decode(a.bytes.as_slice())
                .expect("decodes")
                .graph
                .expect("graph");
            let values: Vec<(i32, usize)> = g
                .node
                .iter()
                .filter(|n| n.op_type == "ConstantOfShape")
                .flat_map(|n| n.attribute.iter().filter_map(|a| a.t.as_ref()))
                .map(|t| (t.data_type, t.raw_data.len()))
                .collect();
            assert_eq!(values, [(proto::dtype::DOUBLE, 8)]);
        }
    }
}
