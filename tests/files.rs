//! File in, file out: frame counts, rates and sizes by ffprobe, the overlay's alpha, per-source
//! targets, events and ROI alerts, Ctrl-C mid-run, segments.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{bin, events, expect_error, field, media, probe, run, run_config, s, scratch, stderr};

#[test]
fn file_to_file_keeps_frame_count_fps_and_size() {
    let dir = scratch("file_to_file");
    for (clip, batch) in [("carphone_pristine.mp4", "8"), ("bikes.mp4", "3")] {
        let input = media(clip);
        let out = dir.join(clip);
        let o = run(&[
            "run",
            "--quiet",
            "--source",
            &s(&input),
            "--output",
            &s(&out),
            "--batch-size",
            batch,
        ]);
        let err = stderr(&o);
        assert!(o.status.success(), "{clip}: exit {:?}\n{err}", o.status.code());
        // The start-up line names model, target tensor, provider and batch size.
        let ready = err
            .lines()
            .find(|l| l.contains("gradcamd ready"))
            .unwrap_or_else(|| panic!("no start-up line:\n{err}"));
        for key in [
            "model=",
            "target=/_swish_1/Clip_output_0",
            "provider=cpu",
            &format!("batch_size={batch}"),
        ] {
            assert!(ready.contains(key), "start-up line lacks {key}: {ready}");
        }
        let (n_in, fps_in, w_in, h_in) = probe(&input);
        let (n_out, fps_out, w_out, h_out) = probe(&out);
        assert_eq!(n_out, n_in, "{clip}: frame count");
        assert!(
            (fps_out - fps_in).abs() < 0.01,
            "{clip}: fps {fps_out} vs {fps_in}"
        );
        assert_eq!((w_out, h_out), (w_in, h_in), "{clip}: size");
        assert!(
            err.contains(&format!("({n_in} frames)")),
            "{clip}: summary should count {n_in} frames:\n{err}"
        );
        assert_eq!(field(&err, "drawn"), n_in as f64, "{clip}: every frame drawn");
    }
}

#[test]
fn alpha_weighs_the_heatmap_in_the_video() {
    // Written losslessly (FFV1) and read back by ffmpeg, without the HUD: with alpha = 0 every
    // frame is the input exactly, and for any other alpha out = (1 - alpha) in + alpha heat, so
    // the alpha = 0.25 frames follow from the alpha = 0.75 ones (the same heat) to within the
    // rounding of both (2/3 level). The heat itself is checked against pytorch-grad-cam in
    // tests/reference.rs.
    let dir = scratch("alpha");
    let input = media("carphone_pristine.mp4");
    let (w, h) = (176, 144);
    let len = w * h * 3;
    let decode = |p: &Path| crate::util::raw_frames(p, None, "bgr24", len);
    let with_alpha = |a: f32| {
        let out = dir.join(format!("a{a}.mkv"));
        run_config(
            &dir,
            &format!("a{a}"),
            &format!(
                "[explain]\nalpha = {a}\nhud = false\n[output]\nfourcc = \"FFV1\"\n[[source]]\nuri = \"{}\"\noutput = \"{}\"\n",
                s(&input),
                s(&out)
            ),
        );
        decode(&out)
    };
    let src = decode(&input);
    let (a0, lo, hi) = (with_alpha(0.0), with_alpha(0.25), with_alpha(0.75));
    assert_eq!(src.len(), 120);
    assert!(a0.len() == 120 && lo.len() == 120 && hi.len() == 120);
    assert!(a0 == src, "alpha = 0 changed the frames");
    let mut moved = 0usize;
    for (k, ((x, l), h)) in src.iter().zip(&lo).zip(&hi).enumerate() {
        for ((&x, &l), &h) in x.iter().zip(l).zip(h) {
            let (x, l, h) = (x as f32, l as f32, h as f32);
            let heat = (h - 0.25 * x) / 0.75;
            let want = 0.75 * x + 0.25 * heat;
            assert!(
                (want - l).abs() <= 0.67,
                "frame {k}: alpha 0.25 gives {l} where the alpha 0.75 frame implies {want}"
            );
            moved += usize::from((l - x).abs() >= 8.0);
        }
    }
    // The overlay is there at all: a quarter of the heat moves a good share of the values.
    assert!(moved > src.len() * len / 10, "only {moved} values moved");
}

/// Runs gradcamd with `args`, sends SIGINT 1.5 s after its start-up line (some frames through,
/// most of a long input left), and returns its log once it has exited with success.
fn interrupted(args: &[&str]) -> String {
    let mut child = bin().args(args).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        log.push_str(&l);
        log.push('\n');
        if l.contains("gradcamd ready") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for l in lines {
        log.push_str(&l.unwrap());
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {:?} after SIGINT:\n{log}", status.code());
    log
}

#[test]
fn sigint_finalizes_a_playable_file_with_every_accepted_frame() {
    let dir = scratch("sigint");
    // A long input so the signal lands mid-run: bikes.mp4 16 times, 4000 frames, 20 s at this
    // machine's ~200 fps (4 times was 5 s, little margin on a faster machine). Only the frames
    // in flight are processed after the signal, so the test does not take longer.
    let long = crate::util::long_input(&dir);
    let (n_in, ..) = probe(&long);
    let out = dir.join("partial.mp4");
    let log = interrupted(&[
        "run",
        "--quiet",
        "--source",
        &s(&long),
        "--output",
        &s(&out),
        "--batch-size",
        "1",
    ]);
    let (n_out, _, w, h) = probe(&out);
    assert!(n_out > 0, "no frame in the finalized file:\n{log}");
    assert!(
        n_out < n_in,
        "the run ended before the signal ({n_out} of {n_in} frames); the test needs a longer input"
    );
    assert!(
        log.contains(&format!("({n_out} frames)")),
        "written count differs from decodable frames ({n_out}):\n{log}"
    );
    assert_eq!((w, h), (640, 272));
}

#[test]
fn a_stop_past_the_shutdown_deadline_finalizes_what_the_file_holds() {
    // Eight gradient passes per frame (topk:8) behind 32-frame queues: after the signal the
    // frames already read take seconds to get through, far past a 1 ms deadline. The file is
    // finalized with what it holds and plays; the frames still in flight are given up.
    let dir = scratch("deadline");
    let long = crate::util::long_input(&dir);
    let (out, cfg) = (dir.join("cut.mp4"), dir.join("cut.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[explain]\ntarget = \"topk:8\"\n[pipeline]\nbatch_size = 1\ninference_workers = 1\nqueue_frames = 32\nshutdown_timeout_ms = 1\n[[source]]\nuri = \"{}\"\noutput = \"{}\"\n",
            s(&long),
            s(&out)
        ),
    )
    .unwrap();
    let log = interrupted(&["run", "--quiet", "--config", &s(&cfg)]);
    assert!(
        log.contains("shutdown took longer than pipeline.shutdown_timeout_ms"),
        "{log}"
    );
    let n_out = crate::util::ffprobe_frames(&out).unwrap_or(0);
    assert!(n_out > 0, "no frame in the finalized file:\n{log}");
    assert!(
        log.contains(&format!("({n_out} frames)")),
        "written count differs from the file's frames ({n_out}):\n{log}"
    );
    // Frames were read that the file does not hold: given up at the deadline, not drained.
    let frames_in = field(&log, "frames_in");
    assert!(
        (n_out as f64) < frames_in,
        "{n_out} written of {frames_in} read:\n{log}"
    );
}

#[test]
fn each_source_has_its_own_target() {
    // One clip twice: the first source explains class 0 (tench), the second "bow tie" (457),
    // over a global target of top1. Every frame's event names the class its source asked for.
    let dir = scratch("per_source");
    let cfg = dir.join("two.toml");
    let (a, b) = (s(&dir.join("a.mp4")), s(&dir.join("b.mp4")));
    let (ea, eb) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    let clip = s(&media("carphone_pristine.mp4"));
    let write = |t: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[explain]\ntarget = \"top1\"\n\n[[source]]\nname = \"a\"\nuri = \"{clip}\"\noutput = \"{a}\"\nevents = \"{}\"\ntarget = \"{t}\"\n\n[[source]]\nname = \"b\"\nuri = \"{clip}\"\noutput = \"{b}\"\nevents = \"{}\"\ntarget = \"bow tie\"\n",
                s(&ea),
                s(&eb)
            ),
        )
        .unwrap()
    };
    write("0");
    let o = run(&["run", "--quiet", "--config", &s(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(crate::util::ffprobe_frames(Path::new(&a)), Some(120));
    assert_eq!(crate::util::ffprobe_frames(Path::new(&b)), Some(120));
    let classes = |p: &Path| -> Vec<i64> { events(p).iter().map(|e| e["class"].as_i64().unwrap()).collect() };
    assert_eq!(classes(&ea), vec![0; 120]);
    assert_eq!(classes(&eb), vec![457; 120]);
    // A bad per-source target is a config error that names it.
    write("bowtye");
    expect_error(
        &run(&["run", "--quiet", "--overwrite", "--config", &s(&cfg)]),
        2,
        &["bowtye"],
    );
}

#[test]
fn roi_alerts_events_and_smoothing() {
    // carphone: the model looks at the bow tie, low in the frame. A ROI over the top half puts
    // most attention outside it (alert); one over the bottom half does not.
    let dir = scratch("roi");
    let clip = s(&media("carphone_pristine.mp4"));
    let run_roi = |name: &str, roi: &str, smoothing: f32| {
        let ev = dir.join(format!("{name}.jsonl"));
        let _ = std::fs::remove_file(&ev);
        let log = run_config(
            &dir,
            name,
            &format!(
                // Batches of 2 over two sessions: many batches finish out of order, and events
                // must still come in frame order.
                "[pipeline]\nbatch_size = 2\ninference_workers = 2\n\n[[source]]\nname = \"{name}\"\nuri = \"{clip}\"\noutput = \"{}\"\nroi = {roi}\nroi_alert_ratio = 0.5\nroi_alert_frames = 5\nsmoothing = {smoothing}\nevents = \"{}\"\n",
                s(&dir.join(format!("{name}.mp4"))),
                s(&ev)
            ),
        );
        (events(&ev), log)
    };
    let (top, log) = run_roi("top", "[[0.0, 0.0], [1.0, 0.0], [1.0, 0.5], [0.0, 0.5]]", 0.0);
    assert_eq!(top.len(), 120, "one event per frame");
    for (i, e) in top.iter().enumerate() {
        assert_eq!(e["seq"], i, "events in frame order");
    }
    for k in [
        "ts",
        "source",
        "seq",
        "class",
        "label",
        "prob",
        "score",
        "peak",
        "centroid",
        "hot_bbox",
        "outside_roi",
        "alert",
    ] {
        assert!(top[0].get(k).is_some(), "event lacks {k}: {}", top[0]);
    }
    let alerts: Vec<&serde_json::Value> = top.iter().filter(|e| e["alert"] == true).collect();
    assert_eq!(alerts.len(), 1, "one alert for one long excursion");
    assert_eq!(alerts[0]["seq"], 4, "the alert fires on the 5th frame outside");
    assert!(alerts[0]["outside_roi"].as_f64().unwrap() > 0.5);
    assert!(log.contains("attention left the region of interest"), "{log}");
    assert!(
        top.iter().all(|e| e["centroid"][1].as_f64().unwrap() > 0.5),
        "attention is low in the frame"
    );

    let (bottom, _) = run_roi("bottom", "[[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]", 0.0);
    assert!(
        bottom.iter().all(|e| e["alert"] == false),
        "attention stays inside the bottom half"
    );

    // Smoothing damps the frame-to-frame motion of the attention centroid.
    let jitter = |ev: &[serde_json::Value]| {
        ev.windows(2)
            .map(|w| {
                let d =
                    |k: usize| w[1]["centroid"][k].as_f64().unwrap() - w[0]["centroid"][k].as_f64().unwrap();
                d(0).hypot(d(1))
            })
            .sum::<f64>()
    };
    let (smooth, _) = run_roi("smooth", "[[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]", 0.8);
    let (j0, j1) = (jitter(&bottom), jitter(&smooth));
    assert!(
        j1 < 0.6 * j0,
        "smoothing 0.8 should damp centroid motion: {j1} vs {j0} without"
    );
}

#[test]
fn segmented_recordings_each_play_and_together_hold_every_frame() {
    let dir = scratch("segments");
    let log = run_config(
        &dir,
        "seg",
        &format!(
            "[[source]]\nuri = \"{}\"\noutput = \"{}\"\nsegment_secs = 1\n",
            s(&media("carphone_pristine.mp4")),
            s(&dir.join("rec.mp4"))
        ),
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    files.sort();
    // 120 frames at 29.97 fps in 1 s segments: 30 + 30 + 30 + 30.
    assert_eq!(files.len(), 4, "{files:?}\n{log}");
    let mut total = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("rec-") && name.contains('T') && name.contains('Z'),
            "{name}"
        );
        let (n, fps, w, h) = probe(f);
        assert_eq!((w, h), (176, 144), "{name} plays");
        total += n;
        // Each segment has its captions, from 0 to the end of its own last frame.
        let vtt = std::fs::read_to_string(f.with_extension("vtt"))
            .unwrap_or_else(|e| panic!("{name}'s captions: {e}"));
        let ends: Vec<&str> = vtt
            .lines()
            .filter_map(|l| l.split_once(" --> "))
            .map(|(_, b)| b)
            .collect();
        assert!(vtt.contains("\n00:00:00.000 --> "), "{vtt}");
        let end = ends.last().unwrap();
        let secs: f64 = end.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            (secs - n as f64 / fps).abs() < 2e-3,
            "{name}: cues end at {end}, {n} frames at {fps}"
        );
    }
    assert_eq!(total, 120);
}
