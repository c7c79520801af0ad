//! Bad input: one clear line and its own exit code for each kind; a display that is not there.

use std::path::{Path, PathBuf};

use crate::util::{bin, events, expect_error, field, fixture, media, root, run, s, scratch, stderr};

/// A tiny model and a sidecar for it in a scratch dir.
fn tiny_with_sidecar(dir: &Path, name: &str) -> PathBuf {
    let m = dir.join(format!("{name}.onnx"));
    std::fs::copy(fixture(&format!("tiny/{name}.onnx")), &m).unwrap();
    std::fs::write(
        dir.join(format!("{name}.toml")),
        "[input]\nname = \"x\"\nwidth = 3\nheight = 3\ncolor = \"rgb\"\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n[output]\nlogits = \"logits\"\n",
    )
    .unwrap();
    m
}

#[test]
fn bad_inputs_give_one_clear_line_and_their_own_exit_code() {
    let dir = scratch("bad_inputs");
    let clip = s(&media("carphone_pristine.mp4"));
    let out = s(&dir.join("out.mp4"));
    // `run --source clip --output out` plus extra flags.
    let run_on = |source: &str, output: &str, extra: &[&str]| {
        let mut a = vec!["run", "--source", source, "--output", output];
        a.extend_from_slice(extra);
        run(&a)
    };

    // Config: unknown key, invalid value, bad flag value, unknown label.
    let cfg = dir.join("typo.toml");
    std::fs::write(&cfg, "[pipeline]\nbatch_sise = 4\n").unwrap();
    expect_error(
        &run(&["run", "--config", &s(&cfg)]),
        2,
        &["typo.toml", "batch_sise"],
    );
    std::fs::write(&cfg, "[pipeline]\nbatch_size = 0\n").unwrap();
    expect_error(&run(&["run", "--config", &s(&cfg)]), 2, &["batch_size"]);
    expect_error(&run_on(&clip, &out, &["--batch-size", "0"]), 2, &["batch_size"]);
    expect_error(
        &run_on(&clip, &out, &["--target", "tabbby cat"]),
        2,
        &["tabbby cat"],
    );
    // A source with nowhere to go; an events log alone is somewhere.
    std::fs::write(&cfg, format!("[[source]]\nuri = \"{clip}\"\n")).unwrap();
    expect_error(
        &run(&["run", "--config", &s(&cfg)]),
        2,
        &["has no output", "events ="],
    );
    let ev = dir.join("only.jsonl");
    std::fs::write(
        &cfg,
        format!("[[source]]\nuri = \"{clip}\"\nevents = \"{}\"\n", s(&ev)),
    )
    .unwrap();
    let o = run(&["run", "--quiet", "--config", &s(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(events(&ev).len(), 120);
    // Nobody sees its frames, so none is drawn (with an output, all 120 are: file_to_file).
    assert_eq!(field(&stderr(&o), "drawn"), 0.0, "{}", stderr(&o));

    // Model: missing, corrupt.
    expect_error(
        &run_on(&clip, &out, &["--model", "/nonexistent/m.onnx"]),
        3,
        &["/nonexistent/m.onnx"],
    );
    let bad = dir.join("corrupt.onnx");
    std::fs::write(&bad, b"\x08\x07garbage, not protobuf\xff\xff\xff").unwrap();
    std::fs::copy(
        root().join("models/efficientnet_lite0.toml"),
        dir.join("corrupt.toml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("models/imagenet_labels.txt"),
        dir.join("imagenet_labels.txt"),
    )
    .unwrap();
    expect_error(
        &run_on(&clip, &out, &["--model", &s(&bad)]),
        3,
        &["corrupt.onnx", "not a valid ONNX"],
    );

    // Model: not a CNN classifier, unsupported head op.
    let m = tiny_with_sidecar(&dir, "no_pool");
    expect_error(
        &run_on(&clip, &out, &["--model", &s(&m)]),
        4,
        &["not a CNN classifier"],
    );
    let m = tiny_with_sidecar(&dir, "unsupported_op");
    expect_error(&run_on(&clip, &out, &["--model", &s(&m)]), 4, &["Sin", "node"]);

    // Video: missing, undecodable.
    expect_error(
        &run_on("/nonexistent/clip.mp4", &out, &[]),
        5,
        &["/nonexistent/clip.mp4"],
    );
    let junk = dir.join("junk.mp4");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    expect_error(&run_on(&s(&junk), &out, &[]), 5, &["junk.mp4", "decode"]);

    // Output: directory missing, or not creatable.
    expect_error(
        &run_on(&clip, "/nonexistent/dir/o.mp4", &[]),
        6,
        &["/nonexistent/dir/o.mp4"],
    );
    expect_error(
        &run_on(&clip, "/proc/gradcamd-test.mp4", &[]),
        6,
        &["/proc/gradcamd-test.mp4"],
    );

    assert!(
        !dir.join("out.mp4").exists(),
        "a failed run left an output file behind"
    );
}

#[test]
fn display_without_a_screen_is_a_clear_error_and_offscreen_works() {
    let clip = s(&media("carphone_pristine.mp4"));
    let o = bin()
        .args(["run", "--quiet", "--source", &clip, "--display"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("QT_QPA_PLATFORM")
        .output()
        .unwrap();
    expect_error(&o, 6, &["no display", "--http"]);
    // Qt's offscreen platform stands in for a screen: the window path runs to the end.
    let o = bin()
        .args(["run", "--quiet", "--source", &clip, "--display"])
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Every frame of the clip was read and explained on its way to the window (no file).
    let log = stderr(&o);
    assert_eq!(
        (
            field(&log, "frames_in"),
            field(&log, "explained"),
            field(&log, "frames_out")
        ),
        (120.0, 120.0, 0.0),
        "{log}"
    );
}
