//! Every CAM method against pytorch-grad-cam (tools/make_method_fixtures.py,
//! tools/make_vgg_replica.py): the default model on four stills, and a small VGG-like model whose
//! gradients vary over space, where HiResCAM and XGrad-CAM really differ from Grad-CAM.

use gradcamd::cam::{self, correlation, Method};
use gradcamd::config::ModelConfig;
use gradcamd::engine::{Engine, EngineOptions};
use gradcamd::model::Model;
use gradcamd::preprocess::Preprocessor;
use gradcamd::render::upsample_normalized;
use ndarray::{Array2, Array3, ArrayView4, Axis};
use opencv::core::{Mat, Size};
use opencv::imgcodecs;
use opencv::prelude::*;

use crate::util::{floats, max_abs, max_abs_diff, read_json, root, CORR_GAP, REL};

fn method_of(reference_name: &str) -> Method {
    match reference_name {
        "GradCAM" => Method::GradCam,
        "GradCAMPlusPlus" => Method::GradCamPP,
        "XGradCAM" => Method::XGradCam,
        "HiResCAM" => Method::HiResCam,
        "LayerCAM" => Method::LayerCam,
        "EigenCAM" => Method::EigenCam,
        "EigenGradCAM" => Method::EigenGradCam,
        other => panic!("fixture names an unknown method {other}"),
    }
}

/// A, dA and class of each image, from one batch.
pub(crate) fn run_batch(model: &Model, images: &[String]) -> Vec<(Array3<f32>, Array3<f32>, i64)> {
    let mut engine = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    let mut pre = Preprocessor::new(&model.sidecar.input);
    let (h, w) = pre.input_hw();
    let item = pre.item_len();
    let mut buf = vec![0f32; images.len() * item];
    for (i, p) in images.iter().enumerate() {
        let p = root().join(p);
        assert!(p.is_file(), "{} missing: run `make setup`", p.display());
        let m = imgcodecs::imread(&p, imgcodecs::IMREAD_COLOR).unwrap();
        pre.fill(&m, &mut buf[i * item..(i + 1) * item]).unwrap();
    }
    let x = ArrayView4::from_shape((images.len(), 3, h, w), &buf[..]).unwrap();
    engine
        .run_with(x, &vec![-1; images.len()], |b| {
            (0..images.len())
                .map(|i| {
                    (
                        b.a.index_axis(Axis(0), i).to_owned(),
                        b.da.index_axis(Axis(0), i).to_owned(),
                        b.class[i],
                    )
                })
                .collect()
        })
        .unwrap()
}

/// pytorch-grad-cam's final map from a raw map: ReLU, normalize, resize, normalize.
fn final_map(raw: &Array2<f32>, size: i32) -> Vec<f32> {
    let relu = raw.mapv(|v| v.max(0.0));
    let mut big = Mat::default();
    upsample_normalized(&relu, Size::new(size, size), &mut big).unwrap();
    big.data_typed::<f32>().unwrap().to_vec()
}

/// Checks every method of one fixture file; `final_key` names the stored final map and
/// `stride`/`offset` how it was subsampled from `size`×`size`.
fn check_fixture(
    file: &str,
    model: &Model,
    final_key: &str,
    size: i32,
    stride: usize,
    offset: usize,
) -> Vec<(Method, f64)> {
    let fx = read_json(&root().join(file));
    let imgs = fx["images"].as_array().unwrap();
    let names: Vec<String> = imgs
        .iter()
        .map(|i| i["image"].as_str().unwrap().to_string())
        .collect();
    let outs = run_batch(model, &names);
    let mut worst: Vec<(Method, f64)> = Vec::new();
    for (img, (a, da, class)) in imgs.iter().zip(&outs) {
        let name = img["image"].as_str().unwrap();
        assert_eq!(*class, img["class_used"].as_i64().unwrap(), "{name}: class");
        if let Some(want) = img.get("da") {
            let want = floats(want);
            let got: Vec<f32> = da.iter().copied().collect();
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= REL * max_abs(&want),
                "{name}: dA differs by {d} (max |dA| {})",
                max_abs(&want)
            );
        }
        for (mname, entry) in img["methods"].as_object().unwrap() {
            let m = method_of(mname);
            let mut raw = cam::raw(m, a.view(), da.view(), None);
            let want_raw = floats(&entry["raw"]);
            let mut r = correlation(raw.as_slice().unwrap(), &want_raw);
            if matches!(m, Method::EigenCam | Method::EigenGradCam) {
                // The reference keeps LAPACK's arbitrary sign; ours follows the documented rule.
                let (lo, hi) = raw.iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
                assert!(hi >= -lo, "{name} {mname}: sign rule violated");
                if r < 0.0 {
                    r = -r;
                    raw.mapv_inplace(|v| -v);
                }
            }
            assert!(1.0 - r <= CORR_GAP, "{name} {mname}: raw map correlation {r}");
            let got = final_map(&raw, size);
            let n = size as usize;
            let sub: Vec<f32> = (offset..n)
                .step_by(stride)
                .flat_map(|i| (offset..n).step_by(stride).map(move |j| (i, j)))
                .map(|(i, j)| got[i * n + j])
                .collect();
            let want_final = floats(&entry[final_key]);
            let d = max_abs_diff(&sub, &want_final);
            // Worst measured 2.1e-6 (EigenCAM, default model).
            assert!(d < 2e-5, "{name} {mname}: final {size}x{size} map differs by {d}");
            match worst.iter_mut().find(|(w, _)| *w == m) {
                Some(e) => e.1 = e.1.min(r),
                None => worst.push((m, r)),
            }
        }
    }
    worst
}

fn model(path: &str, sidecar: Option<&str>) -> Model {
    let spec = ModelConfig {
        path: Some(root().join(path)),
        sidecar: sidecar.map(|s| root().join(s)),
        ..Default::default()
    };
    Model::load(&spec, false).unwrap()
}

#[test]
fn every_method_matches_pytorch_grad_cam_on_the_default_model() {
    let m = model("models/efficientnet_lite0.onnx", None);
    for (method, r) in check_fixture("tests/fixtures/methods_default.json", &m, "final_224", 224, 8, 4) {
        eprintln!("default model, {method}: worst raw correlation {r:.9}");
    }
}

#[test]
fn every_method_matches_pytorch_grad_cam_where_gradients_vary_over_space() {
    let m = model(
        "tests/fixtures/vgg_replica.onnx",
        Some("tests/fixtures/vgg_replica.toml"),
    );
    assert_eq!(
        m.graph.head.first().map(|(op, _)| op.as_str()),
        Some("AveragePool")
    );
    for (method, r) in check_fixture("tests/fixtures/methods_vgg.json", &m, "final", 64, 1, 0) {
        eprintln!("vgg replica, {method}: worst raw correlation {r:.9}");
    }
    // The fixture is only a test of HiResCAM and XGrad-CAM if they differ from Grad-CAM here.
    let outs = run_batch(&m, &[".deps/media/chelsea.png".to_string()]);
    let (a, da, _) = &outs[0];
    let g = cam::raw(Method::GradCam, a.view(), da.view(), None);
    let h = cam::raw(Method::HiResCam, a.view(), da.view(), None);
    let r = correlation(g.as_slice().unwrap(), h.as_slice().unwrap());
    assert!(
        r < 0.9,
        "HiResCAM and Grad-CAM agree ({r}) on a head where they should not"
    );
}

/// A method fixture and the paths of its images, as `gradcamd explain` takes them.
fn fixture_images(fixture: &str) -> (serde_json::Value, Vec<String>) {
    let fx = read_json(&root().join(fixture));
    let paths = fx["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| root().join(i["image"].as_str().unwrap()).display().to_string())
        .collect();
    (fx, paths)
}

#[test]
fn the_method_a_user_picks_is_the_one_that_runs_end_to_end() {
    // `gradcamd explain --method` on the VGG replica, where the methods really differ: the map
    // it writes is pytorch-grad-cam's raw map after the ReLU (eigen methods: up to the sign).
    let (fx, paths) = fixture_images("tests/fixtures/methods_vgg.json");
    let imgs = fx["images"].as_array().unwrap();
    let mut worst = 0f32;
    for (flag, name) in [
        ("gradcam", "GradCAM"),
        ("gradcampp", "GradCAMPlusPlus"),
        ("xgradcam", "XGradCAM"),
        ("hirescam", "HiResCAM"),
        ("layercam", "LayerCAM"),
        ("eigencam", "EigenCAM"),
        ("eigengradcam", "EigenGradCAM"),
    ] {
        let o = crate::util::bin()
            .args(["explain", "--model"])
            .arg(root().join("tests/fixtures/vgg_replica.onnx"))
            .arg("--sidecar")
            .arg(root().join("tests/fixtures/vgg_replica.toml"))
            .args(["--method", flag, "--json", "-"])
            .args(&paths)
            .output()
            .unwrap();
        assert!(o.status.success(), "{flag}: {}", crate::util::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let got_all = v.as_array().unwrap();
        assert_eq!(got_all.len(), imgs.len());
        for (img, got) in imgs.iter().zip(got_all) {
            assert_eq!(got["method"], flag);
            assert_eq!(got["target"]["index"], img["class_used"], "{flag}");
            let cam = floats(&got["cam_raw"]);
            let raw = floats(&img["methods"][name]["raw"]);
            let relu = |k: f32| raw.iter().map(|v| (k * v).max(0.0)).collect::<Vec<f32>>();
            let mut d = max_abs_diff(&cam, &relu(1.0));
            if name.starts_with("Eigen") {
                d = d.min(max_abs_diff(&cam, &relu(-1.0)));
            }
            let rel = d / max_abs(&raw);
            worst = worst.max(rel);
            // Worst measured 1.2e-6 of the largest value.
            assert!(
                rel <= REL,
                "{flag} on {}: the map differs by {rel:e} of its largest value",
                img["image"]
            );
        }
    }
    eprintln!("explain --method, every method: worst difference {worst:e} of the largest value");
}

#[test]
fn plain_cam_is_grad_cam_times_hw_without_the_relu_on_a_gap_fc_head() {
    // On the default model's head (A -> GlobalAveragePool -> Gemm) dy_c/dA_k is w_ck / (h*w)
    // everywhere, so CAM = sum_k w_ck A_k is h*w times pytorch-grad-cam's Grad-CAM map before
    // its ReLU: an independent reference for `--method cam`, signs included.
    let (fx, paths) = fixture_images("tests/fixtures/methods_default.json");
    let imgs = fx["images"].as_array().unwrap();
    let o = crate::util::bin()
        .args(["explain", "--method", "cam", "--json", "-"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got_all = v.as_array().unwrap();
    assert_eq!(got_all.len(), imgs.len());
    let (mut negatives, mut worst) = (0, 0f32);
    for (img, got) in imgs.iter().zip(got_all) {
        assert_eq!(got["method"], "cam");
        assert_eq!(got["target"]["index"], img["class_used"]);
        let cam = floats(&got["cam_raw"]);
        let want: Vec<f32> = floats(&img["methods"]["GradCAM"]["raw"])
            .iter()
            .map(|v| 49.0 * v)
            .collect();
        negatives += want.iter().filter(|v| **v < 0.0).count();
        let rel = max_abs_diff(&cam, &want) / max_abs(&want);
        worst = worst.max(rel);
        // Measured 1.3e-6 of the largest value.
        assert!(rel <= REL, "{}: CAM differs by {rel:e}", img["image"]);
    }
    eprintln!("explain --method cam: worst difference {worst:e} of the largest value");
    // The astronaut's map dips below zero: a ReLU on CAM would fail above.
    assert!(
        negatives > 0,
        "no negative value in the reference: the test cannot see a ReLU"
    );
}
