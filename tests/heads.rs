//! Reduced-width replicas of the heads of torchvision's resnet, mobilenet_v2/v3_small,
//! efficientnet_b0, vgg16, densenet121 and convnext_tiny (tools/make_head_replicas.py): each a
//! real torchvision class at tiny width, exported by the legacy (opsets 13, 17, 18, and a fixed
//! batch of 2) and dynamo (opset 18) exporters. The pooling rule must pick the reference's target
//! tensor, and A, dA and the CAM must match torch autograd.

use gradcamd::cam::{self, correlation, Method};
use gradcamd::engine::{Engine, EngineOptions};
use ndarray::{ArrayView4, Axis};
use onnx_gradcam::{augment, AugmentOptions, OnnxModel};

use crate::util::{fixture, floats, ints, max_abs, max_abs_diff, read_json, CORR_GAP, REL};

fn check(name: &str) {
    let model = OnnxModel::load(&fixture(&format!("heads/{name}.onnx"))).unwrap();
    let j = read_json(&fixture(&format!("heads/{name}.json")));
    let aug = augment(&model, &AugmentOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        aug.target,
        j["target_tensor_onnx"].as_str().unwrap(),
        "{name}: target tensor"
    );
    let dims: Vec<usize> = j["input_dims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap_or(0) as usize)
        .collect();
    let x = floats(&j["input"]);
    let n = j["class"].as_array().unwrap().len();
    let (c, h, w) = (dims[1], dims[2], dims[3]);
    let input = ArrayView4::from_shape((n, c, h, w), &x).unwrap();
    let mut e = Engine::new(&aug, &EngineOptions::default()).unwrap();
    let (class, a, da, cams) = e
        .run_with(input, &vec![-1; n], |b| {
            let cams: Vec<Vec<f32>> = (0..n)
                .map(|i| {
                    cam::raw(
                        Method::GradCam,
                        b.a.index_axis(Axis(0), i),
                        b.da.index_axis(Axis(0), i),
                        None,
                    )
                    .iter()
                    .copied()
                    .collect()
                })
                .collect();
            (
                b.class.to_vec(),
                b.a.iter().copied().collect::<Vec<_>>(),
                b.da.iter().copied().collect::<Vec<_>>(),
                cams,
            )
        })
        .unwrap();
    let want_class: Vec<i64> = ints(&j["class"]);
    assert_eq!(class, want_class, "{name}: top-1");
    let want_a = floats(&j["A"]);
    let d = max_abs_diff(&a, &want_a);
    assert!(d <= REL * max_abs(&want_a), "{name}: A differs by {d}");
    let want_da = floats(&j["dA"]);
    let d = max_abs_diff(&da, &want_da);
    assert!(
        d <= REL * max_abs(&want_da),
        "{name}: dA differs by {d} (max |dA| {})",
        max_abs(&want_da)
    );
    let want_cam = floats(&j["cam"]);
    let per = want_cam.len() / n;
    for (i, got) in cams.iter().enumerate() {
        let r = correlation(got, &want_cam[i * per..(i + 1) * per]);
        assert!(1.0 - r <= CORR_GAP, "{name}: item {i} CAM correlation {r}");
    }
}

macro_rules! heads {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

heads!(
    resnet_legacy_op13,
    resnet_legacy_op17,
    resnet_legacy_op18,
    resnet_legacy_op17_b2,
    resnet_dynamo_op18,
    mobilenet_v2_legacy_op13,
    mobilenet_v2_legacy_op17,
    mobilenet_v2_legacy_op18,
    mobilenet_v2_legacy_op17_b2,
    mobilenet_v2_dynamo_op18,
    mobilenet_v3_small_legacy_op13,
    mobilenet_v3_small_legacy_op17,
    mobilenet_v3_small_legacy_op18,
    mobilenet_v3_small_legacy_op17_b2,
    mobilenet_v3_small_dynamo_op18,
    efficientnet_b0_legacy_op13,
    efficientnet_b0_legacy_op17,
    efficientnet_b0_legacy_op18,
    efficientnet_b0_legacy_op17_b2,
    efficientnet_b0_dynamo_op18,
    vgg16_legacy_op13,
    vgg16_legacy_op17,
    vgg16_legacy_op18,
    vgg16_legacy_op17_b2,
    vgg16_dynamo_op17,
    vgg16_dynamo_op18,
    densenet121_legacy_op13,
    densenet121_legacy_op17,
    densenet121_legacy_op18,
    densenet121_legacy_op17_b2,
    densenet121_dynamo_op18,
    convnext_tiny_legacy_op13,
    convnext_tiny_legacy_op17,
    convnext_tiny_legacy_op18,
    convnext_tiny_legacy_op17_b2,
    convnext_tiny_dynamo_op18,
);
