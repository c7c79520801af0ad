//! The default model against pytorch-grad-cam (fixtures from tools/make_fixtures.py): the same
//! stills, preprocessed by our Rust/OpenCV path, must give the reference's top-1, Grad-CAM
//! weights, raw CAM, plain CAM, normalized 224×224 CAM and overlay.

use gradcamd::cam::{self, correlation};
use gradcamd::config::ModelConfig;
use gradcamd::engine::{Engine, EngineOptions};
use gradcamd::model::Model;
use gradcamd::preprocess::Preprocessor;
use gradcamd::render::{overlay, upsample_normalized, Blend, Scratch};
use ndarray::{Array2, ArrayView4, Axis};
use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

use crate::util::{floats, max_abs, max_abs_diff, read_json, root, CORR_GAP, REL};

struct Out {
    class: i64,
    top5: Vec<usize>,
    target_logit: f32,
    weights: Vec<f32>,
    cam: Array2<f32>,
    cam_fc: Array2<f32>,
}

fn load() -> Model {
    let spec = ModelConfig {
        path: Some(root().join("models/efficientnet_lite0.onnx")),
        ..Default::default()
    };
    Model::load(&spec, false).expect("default model")
}

fn image(rel: &str) -> Mat {
    let p = root().join(rel);
    assert!(p.is_file(), "{} missing: run `make setup`", p.display());
    imgcodecs::imread(&p, imgcodecs::IMREAD_COLOR).expect("imread")
}

/// `images` preprocessed for `model`, as one [N, 3, 224, 224] batch.
fn batch_input(model: &Model, images: &[Mat]) -> Vec<f32> {
    let mut pre = Preprocessor::new(&model.sidecar.input);
    let item = pre.item_len();
    let mut buf = vec![0f32; images.len() * item];
    for (i, im) in images.iter().enumerate() {
        pre.fill(im, &mut buf[i * item..(i + 1) * item])
            .expect("preprocess");
    }
    buf
}

/// Runs `images` as one batch with `targets` and returns per-image results.
fn explain(model: &Model, engine: &mut Engine, images: &[Mat], targets: &[i64]) -> Vec<Out> {
    let buf = batch_input(model, images);
    let x = ArrayView4::from_shape((images.len(), 3, 224, 224), &buf[..]).unwrap();
    let fc = model.graph.fc.clone().expect("default model has a GAP+FC head");
    engine
        .run_with(x, targets, |b| {
            (0..images.len())
                .map(|i| {
                    let class = b.class[i];
                    let row = b.logits.index_axis(Axis(0), i);
                    let mut idx: Vec<usize> = (0..row.len()).collect();
                    idx.sort_by(|&p, &q| row[q].total_cmp(&row[p]));
                    let a = b.a.index_axis(Axis(0), i);
                    let da = b.da.index_axis(Axis(0), i);
                    let w = ndarray::ArrayView1::from(
                        &fc.weights[class as usize * fc.channels..(class as usize + 1) * fc.channels],
                    );
                    Out {
                        class,
                        top5: idx[..5].to_vec(),
                        target_logit: row[class as usize],
                        weights: cam::gradcam_weights(da),
                        cam: cam::gradcam(a, da),
                        cam_fc: cam::cam_fc(a, w),
                    }
                })
                .collect()
        })
        .expect("run")
}

fn check(case: &serde_json::Value, got: &Out) {
    let name = format!("{} target={}", case["image"], case["target"]);
    assert_eq!(
        got.class,
        case["class_used"].as_i64().unwrap(),
        "{name}: class used"
    );
    let top5: Vec<usize> = case["top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["index"].as_u64().unwrap() as usize)
        .collect();
    if case["target"].is_null() {
        assert_eq!(got.top5[0], top5[0], "{name}: top-1");
    }
    let tl = case["target_logit"].as_f64().unwrap() as f32;
    assert!(
        (got.target_logit - tl).abs() < 5e-5, // worst measured 5.7e-6 (logits ~10)
        "{name}: target logit got {} want {tl}",
        got.target_logit
    );
    let w = floats(&case["weights"]);
    let dw = max_abs_diff(&got.weights, &w);
    assert!(
        dw <= 1e-8, // worst measured 9.3e-10 (|w| up to 5e-3)
        "{name}: Grad-CAM weights differ by {dw} (max |w| {})",
        max_abs(&w)
    );
    let r = correlation(got.cam.as_slice().unwrap(), &floats(&case["cam_raw"]));
    eprintln!(
        "{name}: class {} weights max abs diff {dw:.3e}, Grad-CAM correlation {r:.9}",
        got.class
    );
    assert!(1.0 - r <= CORR_GAP, "{name}: Grad-CAM correlation {r}");
    if !case["cam_fc_raw"].is_null() {
        let r = correlation(got.cam_fc.as_slice().unwrap(), &floats(&case["cam_fc_raw"]));
        assert!(1.0 - r <= CORR_GAP, "{name}: CAM (fc) correlation {r}");
    }
}

#[test]
fn gradcam_matches_pytorch_grad_cam_batch_1_and_4() {
    let fx = read_json(&root().join("tests/fixtures/default_gradcam.json"));
    let cases = fx["cases"].as_array().unwrap();
    let model = load();
    let mut engine = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    let top1: Vec<&serde_json::Value> = cases.iter().filter(|c| c["target"].is_null()).collect();
    assert!(top1.len() >= 4, "fixtures need 4 top-1 stills");
    // Batch of 4 in one run, as the fixtures were made.
    let imgs: Vec<Mat> = top1.iter().map(|c| image(c["image"].as_str().unwrap())).collect();
    let outs = explain(&model, &mut engine, &imgs, &vec![-1; imgs.len()]);
    for (c, o) in top1.iter().zip(&outs) {
        check(c, o);
    }
    // Batch of 1, every case, explicit targets included.
    for c in cases {
        let t = c["target"].as_i64().unwrap_or(-1);
        let o = explain(&model, &mut engine, &[image(c["image"].as_str().unwrap())], &[t]);
        check(c, &o[0]);
    }
}

#[test]
fn the_in_graph_cam_matches_pytorch_grad_cam() {
    // `inspect --in-graph-cam` / `bench --in-graph-cam`: Grad-CAM computed by ONNX Runtime in
    // the augmented graph, against pytorch-grad-cam's raw map as the host-side one is (after
    // its ReLU: worst measured 1.4e-6 of the largest value, 1 - r 1e-12).
    let fx = read_json(&root().join("tests/fixtures/default_gradcam.json"));
    let top1: Vec<&serde_json::Value> = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["target"].is_null())
        .collect();
    let spec = ModelConfig {
        path: Some(root().join("models/efficientnet_lite0.onnx")),
        ..Default::default()
    };
    let model = Model::load(&spec, true).expect("default model with the in-graph CAM");
    let mut engine = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    let imgs: Vec<Mat> = top1.iter().map(|c| image(c["image"].as_str().unwrap())).collect();
    let buf = batch_input(&model, &imgs);
    let x = ArrayView4::from_shape((imgs.len(), 3, 224, 224), &buf[..]).unwrap();
    let cams: Vec<Vec<f32>> = engine
        .run_with(x, &vec![-1; imgs.len()], |b| {
            let cam = b.cam.as_ref().expect("the model outputs gradcamd_cam");
            (0..imgs.len())
                .map(|i| cam.index_axis(Axis(0), i).iter().copied().collect())
                .collect()
        })
        .unwrap();
    for (c, got) in top1.iter().zip(&cams) {
        let want = floats(&c["cam_raw"]);
        let r = correlation(got, &want);
        let relu: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
        let d = max_abs_diff(got, &relu) / max_abs(&want);
        eprintln!(
            "{}: in-graph CAM correlation {r:.12}, max diff {d:e} of the largest value",
            c["image"]
        );
        assert!(
            1.0 - r <= CORR_GAP,
            "{}: in-graph CAM correlation {r}",
            c["image"]
        );
        assert!(d <= REL, "{}: in-graph CAM differs by {d:e}", c["image"]);
    }
}

#[test]
fn embedded_model_is_the_committed_file() {
    let file = std::fs::read(root().join("models/efficientnet_lite0.onnx")).unwrap();
    assert!(
        file == gradcamd::builtin::EMBEDDED_ONNX,
        "the binary embeds a different model than models/"
    );
}

fn read_png16(rel: &str) -> Vec<f32> {
    let m = imgcodecs::imread(root().join(rel), imgcodecs::IMREAD_UNCHANGED).expect("png");
    assert_eq!(m.depth(), opencv::core::CV_16U, "{rel} is not 16-bit");
    m.data_typed::<u16>()
        .unwrap()
        .iter()
        .map(|&v| v as f32 / 65535.0)
        .collect()
}

#[test]
fn normalized_cam_and_overlay_match_pytorch_grad_cam() {
    let fx = read_json(&root().join("tests/fixtures/default_gradcam.json"));
    let model = load();
    let mut engine = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    for c in fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["target"].is_null())
    {
        let img = image(c["image"].as_str().unwrap());
        let o = &explain(&model, &mut engine, std::slice::from_ref(&img), &[-1])[0];
        let name = c["image"].as_str().unwrap();

        // The normalized, upsampled CAM pytorch-grad-cam returns.
        let mut big = Mat::default();
        upsample_normalized(&o.cam, Size::new(224, 224), &mut big).unwrap();
        let big = big.data_typed::<f32>().unwrap();
        let want = read_png16(c["cam_224"].as_str().unwrap());
        let d = max_abs_diff(big, &want);
        eprintln!("{name}: 224x224 CAM max abs diff {d:e}");
        assert!(d < 5e-5, "{name}: 224x224 CAM max abs diff {d}"); // worst measured 8.6e-6

        // The overlay, on the 224x224 input image, against show_cam_on_image.
        let mut small_img = Mat::default();
        imgproc::resize(
            &img,
            &mut small_img,
            Size::new(224, 224),
            0.0,
            0.0,
            imgproc::INTER_LINEAR,
        )
        .unwrap();
        let ov = overlay(&o.cam, &small_img, 0.5, Blend::Reference, &mut Scratch::default()).unwrap();
        let want = imgcodecs::imread(
            root().join(c["overlay_224"].as_str().unwrap()),
            imgcodecs::IMREAD_COLOR,
        )
        .unwrap();
        let (g, w) = (ov.data_bytes().unwrap(), want.data_bytes().unwrap());
        assert_eq!(g.len(), w.len());
        let diffs: Vec<u8> = g.iter().zip(w).map(|(a, b)| a.abs_diff(*b)).collect();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        let off = diffs.iter().filter(|&&d| d > 2).count() as f64 / diffs.len() as f64;
        eprintln!("{name}: overlay mean abs diff {mean:.4}, share of values off by > 2: {off:.5}");
        assert!(
            mean < 0.01 && off < 1e-4,
            "{name}: overlay differs: mean {mean}, share > 2 levels {off}"
        );
    }
}

/// A full batch runs through an IoBinding into pre-allocated outputs, a partial one through
/// `OrtApi::Run` on views of the same buffers: through the explainer, both must give the same
/// classes, maps and tensors, and the same as the reference fixtures.
#[test]
fn bound_full_and_partial_batches_agree() {
    use gradcamd::explainer::{Explainer, TargetSpec};
    let fx = read_json(&root().join("tests/fixtures/default_gradcam.json"));
    let top1: Vec<&serde_json::Value> = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["target"].is_null())
        .take(4)
        .collect();
    let model = load();
    let mut pre = Preprocessor::new(&model.sidecar.input);
    let engine = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    let mut ex = Explainer::new(
        engine,
        cam::Method::GradCam,
        model.graph.fc.clone(),
        std::num::NonZeroUsize::new(4).expect("4 is not 0"),
        pre.item_dims(),
    );
    ex.warm_up(2).expect("warm-up");
    let item = pre.item_len();
    let mut buf = vec![0f32; 4 * item];
    for (i, c) in top1.iter().enumerate() {
        pre.fill(
            &image(c["image"].as_str().unwrap()),
            &mut buf[i * item..(i + 1) * item],
        )
        .unwrap();
    }
    let full = ex.explain(&buf, &[TargetSpec::Top1; 4], true).unwrap().to_vec();
    let part = ex
        .explain(&buf[..3 * item], &[TargetSpec::Top1; 3], true)
        .unwrap()
        .to_vec();
    for (i, (f, p)) in full.iter().zip(&part).enumerate() {
        assert_eq!(f.maps[0].class, p.maps[0].class, "item {i}");
        assert_eq!(
            f.maps[0].class as u64,
            top1[i]["class_used"].as_u64().unwrap(),
            "item {i} against the fixture"
        );
        let (fc, pc) = (
            f.maps[0].cam.as_slice().unwrap(),
            p.maps[0].cam.as_slice().unwrap(),
        );
        let tol = 1e-5 * max_abs(fc).max(1e-6);
        assert!(
            max_abs_diff(fc, pc) <= tol,
            "item {i}: CAM differs by {}",
            max_abs_diff(fc, pc)
        );
        let (fa, pa) = (f.tensors.as_ref().unwrap(), p.tensors.as_ref().unwrap());
        let (fa, pa) = (fa.0.as_slice().unwrap(), pa.0.as_slice().unwrap());
        assert!(max_abs_diff(fa, pa) <= 1e-5 * max_abs(fa), "item {i}: A differs");
        assert!(
            1.0 - correlation(fc, &floats(&top1[i]["cam_raw"])) <= CORR_GAP,
            "item {i} vs fixture"
        );
    }
}

/// A batch of n < batch_size items (the end of a file, a batch cut short by the timeout) runs
/// on views of the bound buffers. For every n, it must give what an ordinary `Session::run` on
/// the same n items gives, and allocate nothing once that size has run once.
#[test]
fn partial_batches_on_views_match_ordinary_runs() {
    gradcamd::alloc::Counting::mark_installed();
    let fx = read_json(&root().join("tests/fixtures/default_gradcam.json"));
    let model = load();
    let mut pre = Preprocessor::new(&model.sidecar.input);
    let mut engine = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    let b = 4;
    engine.prepare(b, pre.item_dims(), 1).unwrap();
    let mut slot = engine.take_slot().expect("a slot");
    let item = pre.item_len();
    for (i, c) in fx["cases"].as_array().unwrap().iter().take(b).enumerate() {
        let data = &mut slot.data_mut()[i * item..(i + 1) * item];
        pre.fill(&image(c["image"].as_str().unwrap()), data).unwrap();
    }
    // Distinct targets per item, top-1 for the last: the target input is viewed too.
    let targets = [3i64, 281, 0, -1];
    type Outs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<i64>);
    let grab = |v: gradcamd::engine::BatchView| -> Outs {
        (
            v.logits.iter().copied().collect(),
            v.a.iter().copied().collect(),
            v.da.iter().copied().collect(),
            v.class.iter().copied().collect(),
        )
    };
    let [_, c, h, w] = [b, 3, pre.input_hw().0, pre.input_hw().1];
    for n in 1..=b {
        let bound = engine.run_slot(&slot, n, &targets[..n], grab).unwrap();
        let input = slot.data()[..n * item].to_vec();
        let view = ArrayView4::from_shape((n, c, h, w), &input).unwrap();
        let plain = engine.run_with(view, &targets[..n], grab).unwrap();
        assert_eq!(bound.3, plain.3, "n = {n}: classes");
        assert_eq!(bound.3.len(), n);
        assert_eq!(
            &bound.3[..n.min(3)],
            &targets[..n.min(3)],
            "n = {n}: targets used"
        );
        for (what, x, y) in [
            ("logits", &bound.0, &plain.0),
            ("A", &bound.1, &plain.1),
            ("dA", &bound.2, &plain.2),
        ] {
            assert_eq!(x.len(), y.len(), "n = {n}: {what} size");
            assert!(
                max_abs_diff(x, y) <= 1e-5 * max_abs(y).max(1e-6),
                "n = {n}: {what} differs by {}",
                max_abs_diff(x, y)
            );
        }
        let before = gradcamd::alloc::thread_allocs().unwrap();
        engine.run_slot(&slot, n, &targets[..n], |_| ()).unwrap();
        let allocs = gradcamd::alloc::thread_allocs().unwrap() - before;
        assert_eq!(allocs, 0, "n = {n}: a warm run allocated {allocs} times");
    }
}

/// A slot is bound to the engine that made it: another engine's slot (same id, other buffer) is
/// refused, full or partial, instead of running on buffers the caller did not fill.
#[test]
fn a_slot_runs_only_on_its_own_engine() {
    let model = load();
    let pre = Preprocessor::new(&model.sidecar.input);
    let mut a = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    let mut b = Engine::new(&model.graph, &EngineOptions::default()).unwrap();
    a.prepare(2, pre.item_dims(), 1).unwrap();
    b.prepare(2, pre.item_dims(), 1).unwrap();
    let slot = a.take_slot().expect("a slot");
    for n in [1, 2] {
        let e = b.run_slot(&slot, n, &[-1], |_| ()).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("another engine")),
            "n = {n}: {e:?}"
        );
        a.run_slot(&slot, n, &[-1], |_| ()).expect("its own engine");
    }
    // Prepared again, the engine has new slots and bindings: the old slot is refused too.
    a.prepare(2, pre.item_dims(), 1).unwrap();
    let e = a.run_slot(&slot, 2, &[-1], |_| ()).err().map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("another engine")),
        "{e:?}"
    );
    // A batch of nothing is refused, not rounded up to one.
    let e = a.prepare(0, pre.item_dims(), 1).err().map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("a batch of 0")), "{e:?}");
}
