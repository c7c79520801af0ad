//! The other commands end to end: `explain`, `inspect`, `augment`, `bench`, `compare`.

use opencv::prelude::*;

use crate::util::{expect_error, media, probe, run, s, scratch, stderr};

#[test]
fn explain_writes_json_and_overlays() {
    let dir = scratch("explain");
    let json = dir.join("e.json");
    let chelsea = s(&media("chelsea.png"));
    let coffee = s(&media("coffee.png"));
    let o = run(&[
        "explain",
        &chelsea,
        &coffee,
        "--json",
        &s(&json),
        "--overlay-dir",
        &s(&dir.join("ov")),
        "--save-tensors",
        &s(&dir.join("t")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = crate::util::read_json(&json);
    let arr = v.as_array().expect("a JSON array");
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["image"], chelsea.as_str());
    assert_eq!(arr[1]["target"]["label"], "espresso");
    for e in arr {
        let top5 = e["top5"].as_array().unwrap();
        assert_eq!(top5.len(), 5);
        let probs: Vec<f64> = top5.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(
            probs.windows(2).all(|w| w[0] >= w[1]) && probs[0] <= 1.0,
            "top5 not sorted: {probs:?}"
        );
        assert_eq!(e["target"]["index"], top5[0]["index"], "top1 target");
        let cam = e["cam_raw"].as_array().unwrap();
        assert_eq!((cam.len(), cam[0].as_array().unwrap().len()), (7, 7));
        assert!(
            crate::util::floats(&e["cam_raw"]).iter().all(|&x| x >= 0.0),
            "Grad-CAM is after ReLU"
        );
    }
    for (name, w, h) in [("chelsea", 451, 300), ("coffee", 600, 400)] {
        let p = dir.join("ov").join(format!("{name}.png"));
        let m = opencv::imgcodecs::imread(&p, opencv::imgcodecs::IMREAD_COLOR).unwrap();
        assert_eq!((m.cols(), m.rows()), (w, h), "{}", p.display());
    }
    for t in ["chelsea_A", "chelsea_dA", "coffee_A", "coffee_dA"] {
        let b = std::fs::read(dir.join("t").join(format!("{t}.npy"))).unwrap();
        let header = String::from_utf8_lossy(&b[10..128]);
        assert!(
            header.contains("'shape': (1280, 7, 7)"),
            "{t}.npy header: {header}"
        );
        assert_eq!(b.len(), 128 + 4 * 1280 * 49, "{t}.npy size");
    }
    // An explicit label target.
    let o = run(&["explain", &chelsea, "--target", "Tabby", "--json", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["target"]["index"], 281);
    // Unknown label: suggestions, config exit code.
    let o = run(&["explain", &chelsea, "--target", "tabby kat", "--json", "-"]);
    expect_error(&o, 2, &["tabby kat"]);
    let o = run(&["explain", "/nonexistent.png", "--json", "-"]);
    expect_error(&o, 5, &["/nonexistent.png"]);
}

#[test]
fn inspect_and_augment() {
    let o = run(&["inspect", "models/efficientnet_lite0.onnx"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "target   /_swish_1/Clip_output_0",
        "GlobalAveragePool",
        "Gemm",
        "candidates",
        "method cam available",
        "[1,1280,7,7]",
    ] {
        assert!(text.contains(want), "inspect lacks {want:?}:\n{text}");
    }
    let dir = scratch("augment");
    let out = dir.join("aug.onnx");
    let o = run(&["augment", "models/efficientnet_lite0.onnx", "-o", &s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = onnx_gradcam::OnnxModel::load(&out).unwrap();
    let outs: Vec<&str> = m.graph().output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["logits", "gradcamd_A", "gradcamd_dA", "gradcamd_class"]);
    // Each head op marked by whether it has a backward rule; the one that has none fails the
    // augmentation (exit 4) but is still shown.
    let o = run(&["inspect", "tests/fixtures/tiny/unsupported_op.onnx"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let marks: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let mark = w.next().filter(|m| *m == "✓" || *m == "✗")?;
            Some((mark, w.next()?))
        })
        .collect();
    assert_eq!(
        marks,
        [
            ("✓", "GlobalAveragePool"),
            ("✓", "Flatten"),
            ("✓", "Gemm"),
            ("✗", "Sin"),
            ("✓", "Gemm")
        ],
        "{text}"
    );
    // Augmenting twice is refused with a reason.
    let o = run(&["augment", &s(&out), "-o", &s(&dir.join("twice.onnx"))]);
    expect_error(&o, 4, &["already augmented"]);
}

#[test]
fn topk_lists_k_maps_and_renders_a_grid() {
    let dir = scratch("topk");
    let chelsea = s(&media("chelsea.png"));
    let o = run(&[
        "explain",
        &chelsea,
        "--target",
        "topk:3",
        "--json",
        "-",
        "--overlay-dir",
        &s(&dir),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v[0];
    let maps = e["maps"].as_array().expect("topk lists maps");
    assert_eq!(maps.len(), 3);
    for (k, m) in maps.iter().enumerate() {
        assert_eq!(
            m["index"], e["top5"][k]["index"],
            "map {k} is the k-th best class"
        );
    }
    assert_eq!(maps[0]["cam_raw"], e["cam_raw"], "the first map is the target's");
    assert_ne!(
        maps[0]["cam_raw"], maps[1]["cam_raw"],
        "each class has its own map"
    );
    for f in ["chelsea.png", "chelsea.2.png", "chelsea.3.png"] {
        assert!(dir.join(f).is_file(), "overlay {f} missing");
    }
    // More classes than the top-5 list holds: still K maps, K different classes.
    let o = run(&["explain", &chelsea, "--target", "topk:7", "--json", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let maps = v[0]["maps"].as_array().expect("topk lists maps");
    let mut classes: Vec<u64> = maps.iter().filter_map(|m| m["index"].as_u64()).collect();
    classes.sort_unstable();
    classes.dedup();
    assert_eq!((maps.len(), classes.len()), (7, 7), "{maps:?}");

    // Video: the grid keeps the frame size and every frame.
    let out = dir.join("grid.mp4");
    let input = media("carphone_pristine.mp4");
    let o = run(&[
        "run",
        "--quiet",
        "--source",
        &s(&input),
        "--output",
        &s(&out),
        "--target",
        "topk:4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (n, fps, w, h) = probe(&out);
    assert_eq!((n, w, h), (120, 176, 144));
    assert!((fps - probe(&input).1).abs() < 0.01);
}

#[test]
fn bench_reports_engine_pipeline_and_multi_camera_numbers() {
    let dir = scratch("bench");
    let json = dir.join("bench.json");
    let o = run(&[
        "bench",
        "--video",
        &s(&media("carphone_pristine.mp4")),
        "--batch-size",
        "4",
        "--iters",
        "1",
        "--repeats",
        "1",
        "--sources",
        "1,2",
        "--seconds",
        "2",
        "--camera",
        "320x180@15",
        "--profile",
        &s(&dir.join("ort")),
        "--json",
        &s(&json),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = crate::util::read_json(&json);
    for k in ["forward_fps", "gradients_fps", "pipeline_fps", "batch_size"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} missing in {v}");
    }
    assert_eq!(v["pipeline"]["frames"], 120, "the pipeline run keeps every frame");
    let p = &v["pipeline"];
    assert!(p["floor_fps"].as_f64().unwrap() > 0.0 && p["floor_ratio"].as_f64().unwrap() > 0.0);
    let cpu = &p["stage_seconds"];
    for k in ["decode", "inference", "render", "encode", "total"] {
        assert!(cpu[k].as_f64().is_some_and(|x| x > 0.0), "cpu {k}: {cpu}");
    }
    assert!(cpu["inference"].as_f64() < cpu["total"].as_f64());
    // ORT's profile: the appended head (backward + CAM) is a small part of the node time.
    let prof = &v["profile"];
    let (fwd, ours) = (
        prof["forward_ms"].as_f64().unwrap(),
        prof["appended_ms"].as_f64().unwrap(),
    );
    assert!(ours > 0.0 && fwd > 5.0 * ours, "{prof}");
    assert!(std::path::Path::new(prof["trace"].as_str().unwrap()).is_file());
    let src = v["sources"]
        .as_array()
        .expect("multi-camera results under `sources`");
    assert_eq!(src.len(), 2);
    for (p, n) in src.iter().zip([1, 2]) {
        assert_eq!(p["sources"], n);
        assert!(
            p["processed"].as_u64().unwrap() > 0 && p["latency_p99_ms"].as_f64().unwrap() > 0.0,
            "{p}"
        );
        assert!(p["drop_rate"].as_f64().unwrap() < 1.0);
    }
}

#[test]
fn compare_runs_saved_real_frames_on_two_providers() {
    let dir = scratch("compare");
    let frames = dir.join("frames.npy");
    let o = run(&[
        "explain",
        &s(&media("chelsea.png")),
        &s(&media("coffee.png")),
        "--json",
        "-",
        "--save-input",
        &s(&frames),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json = dir.join("c.json");
    let o = run(&[
        "compare",
        "--input",
        &s(&frames),
        "--provider",
        "cpu",
        "--reference",
        "cpu",
        "--json",
        &s(&json),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = crate::util::read_json(&json);
    assert_eq!(v["frames"], 2);
    assert_eq!(v["top1_agree"], 2);
    // The same provider twice is deterministic: the maps are identical.
    assert_eq!(v["cam_max_abs_diff_rel"], 0.0, "{v}");
    assert!(
        1.0 - v["cam_min_correlation"].as_f64().unwrap() <= crate::util::CORR_GAP,
        "{v}"
    );
    // The failure path: below the threshold is exit 7 with one line that gives both numbers.
    // (Identical maps pass any threshold up to 1; one above 1 is the only way to fail on one
    // machine without a second provider.)
    let o = run(&[
        "compare",
        "--input",
        &s(&frames),
        "--provider",
        "cpu",
        "--reference",
        "cpu",
        "--min-correlation",
        "1.01",
    ]);
    expect_error(&o, 7, &["CAM correlation", "is below 1.01"]);
    // Without the cuda feature the CUDA provider is a clear runtime error, not a silent CPU run.
    let o = run(&["compare", "--input", &s(&frames), "--provider", "cuda"]);
    if !cfg!(feature = "cuda") {
        expect_error(&o, 7, &["cuda", "not available"]);
    }
    let o = run(&["compare", "--input", &s(&media("chelsea.png"))]);
    expect_error(&o, 5, &["not a float32 .npy"]);
}
