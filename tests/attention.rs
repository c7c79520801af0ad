//! The attention signals and the drift alarm, end to end on clips made from the sample media.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{events, expect_error, ffmpeg, media, run, run_config, s, scratch};

/// Frames per second of the made clips.
const FPS: usize = 15;

/// A 448x224 grey canvas with the cat (chelsea.png, 224x224) in its left half, moving to the
/// right half and back at the given seconds: `phases` are (seconds, x) pairs.
pub fn cat_clip(dir: &Path, name: &str, phases: &[(u32, u32)]) -> PathBuf {
    let secs: u32 = phases.iter().map(|p| p.0).sum();
    // x as a function of t: nested ifs over the phases' ends.
    let mut x = String::new();
    let mut t = 0;
    for (i, (d, at)) in phases.iter().enumerate() {
        t += d;
        if i + 1 == phases.len() {
            x.push_str(&at.to_string());
        } else {
            x.push_str(&format!("if(lt(t,{t}),{at},"));
        }
    }
    x.push_str(&")".repeat(phases.len() - 1));
    let out = dir.join(format!("{name}.mp4"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("color=c=0x808080:s=448x224:r={FPS}:d={secs}"),
        "-i",
        &s(&media("chelsea.png")),
        "-filter_complex",
        &format!("[1]scale=224:224[c];[0][c]overlay=x='{x}':y=0,format=yuv420p"),
        "-c:v",
        "libx264",
        &s(&out),
    ]);
    out
}

fn drift_run(dir: &Path, name: &str, clip: &Path, extra: &str) -> (Vec<Value>, String) {
    let ev = dir.join(format!("{name}.jsonl"));
    let _ = std::fs::remove_file(&ev);
    let log = run_config(
        dir,
        name,
        &format!(
            "[[source]]\nname = \"{name}\"\nuri = \"{}\"\nmode = \"file\"\nevents = \"{}\"\nbaseline_frames = 30\ndrift_threshold = 0.3\ndrift_frames = 10\n{extra}",
            s(clip),
            s(&ev)
        ),
    );
    (events(&ev), log)
}

fn seqs(ev: &[Value], key: &str) -> Vec<u64> {
    ev.iter()
        .filter(|e| e[key] == true)
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}

#[test]
fn drift_fires_once_when_the_subject_moves_away_and_clears_when_it_comes_back() {
    let dir = scratch("drift");
    // 4 s left, 4 s right, 6 s left: it moves at frame 60 and back at frame 120.
    let clip = cat_clip(&dir, "away_and_back", &[(4, 0), (4, 224), (6, 0)]);
    let (ev, log) = drift_run(&dir, "cat", &clip, "");
    assert_eq!(ev.len(), 14 * FPS, "one event per frame");
    // Learning: no divergence for the first 30 frames, then one for every frame.
    assert!(ev[..30].iter().all(|e| e["drift"].is_null()), "{}", ev[29]);
    assert!(ev[30..].iter().all(|e| e["drift"].is_f64()), "{}", ev[30]);
    assert!(log.contains("attention baseline learned"), "{log}");
    // At home, the divergence stays near 0 (a still picture: the same map every frame).
    let d = |i: usize| ev[i]["drift"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (30..60).all(|i| d(i) < 0.01),
        "{:?}",
        (30..60).map(d).collect::<Vec<_>>()
    );
    let started = seqs(&ev, "drift_alert");
    assert_eq!(started.len(), 1, "one alarm for one excursion: {started:?}");
    // The smoothed map needs some frames to cross 0.3, then 10 more frames over it.
    let delay = started[0] as i64 - 60;
    assert!((10..=30).contains(&delay), "alarm {delay} frames after the move");
    assert!(d(started[0] as usize) > 0.3);
    assert!(log.contains("attention drifted from its baseline"), "{log}");
    // On from the start until after the return; the clearing frame has an event (every frame
    // does here) and the log says so.
    let on: Vec<u64> = seqs(&ev, "drift_alerting");
    let end = *on.last().unwrap() + 1;
    assert_eq!(on, (started[0]..end).collect::<Vec<_>>());
    assert!(end > 120 + 10 && end < 14 * FPS as u64, "cleared at {end}");
    // Hysteresis: it clears only once the divergence has been under 0.75 x 0.3 for 10 frames,
    // not when it first dips under 0.3.
    let under = (120..ev.len()).find(|&i| d(i) < 0.3).unwrap();
    let deep = (120..ev.len()).find(|&i| d(i) < 0.225).unwrap();
    assert!(under < deep, "{under} {deep}");
    assert_eq!(
        end as usize,
        deep + 9,
        "{:?}",
        (120..ev.len()).map(d).collect::<Vec<_>>()
    );
    assert!(log.contains("attention back at its baseline"), "{log}");
    // Signals on every frame, in range; the still picture's map is the same frame to frame.
    for e in &ev {
        let (h, c) = (
            e["entropy"].as_f64().unwrap(),
            e["concentration"].as_f64().unwrap(),
        );
        assert!((0.0..=1.0).contains(&h) && (0.1..=1.0).contains(&c), "{e}");
    }
    assert!(ev[0]["stability"].is_null(), "no previous frame: {}", ev[0]);
    assert!(ev[1..60].iter().all(|e| e["stability"].as_f64().unwrap() > 0.99));
    // The frame the cat jumps on looks nothing like the one before.
    assert!(ev[60]["stability"].as_f64().unwrap() < 0.5, "{}", ev[60]);
}

#[test]
fn the_unchanged_clip_looped_raises_no_alarm() {
    let dir = scratch("drift_none");
    let looped = dir.join("carphone2.mp4");
    ffmpeg(&[
        "-stream_loop",
        "1",
        "-i",
        &s(&media("carphone_pristine.mp4")),
        "-c",
        "copy",
        &s(&looped),
    ]);
    let (ev, log) = drift_run(&dir, "car", &looped, "");
    assert_eq!(ev.len(), 240);
    assert!(seqs(&ev, "drift_alerting").is_empty(), "{log}");
    // The person moves; the model keeps looking at the bow tie: well under the threshold.
    let max = ev.iter().filter_map(|e| e["drift"].as_f64()).fold(0.0, f64::max);
    assert!(max > 0.0 && max < 0.15, "max divergence {max}");
}

#[test]
fn a_baseline_saved_by_one_run_is_used_by_the_next() {
    let dir = scratch("drift_file");
    let home = cat_clip(&dir, "home", &[(3, 0)]);
    let moved = cat_clip(&dir, "moved", &[(3, 224)]);
    let file = dir.join("cat.baseline.json");
    let _ = std::fs::remove_file(&file);
    let keep = format!("baseline_file = \"{}\"\n", s(&file));
    let (_, log) = drift_run(&dir, "cat", &home, &keep);
    assert!(log.contains("attention baseline learned and saved"), "{log}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        (saved["source"].as_str(), saved["frames"].as_u64()),
        (Some("cat"), Some(30))
    );
    // The next run starts from it and measures from its first frame: the cat on the right from
    // the start is over the threshold at once, and an alarm on the 10th frame.
    let (ev, log) = drift_run(&dir, "cat", &moved, &keep);
    assert!(log.contains("attention baseline loaded"), "{log}");
    assert!(
        ev.iter().all(|e| e["drift"].as_f64().is_some_and(|d| d > 0.3)),
        "{}",
        ev[0]
    );
    assert_eq!(seqs(&ev, "drift_alert"), [9], "{log}");
    // The file is not written again by a run that loaded it.
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(again, saved);
    // The home clip against it: no alarm.
    let (ev, _) = drift_run(&dir, "cat", &home, &keep);
    assert!(ev.iter().all(|e| e["drift"].as_f64().unwrap() < 0.01));
}

#[test]
fn a_bad_baseline_file_or_drift_setting_is_one_line_before_any_frame() {
    let dir = scratch("drift_bad");
    let clip = s(&media("carphone_pristine.mp4"));
    let ev = s(&dir.join("e.jsonl"));
    let cfg = dir.join("bad.toml");
    let check = |extra: &str, code: i32, want: &[&str]| {
        std::fs::write(
            &cfg,
            format!("[[source]]\nuri = \"{clip}\"\nevents = \"{ev}\"\nbaseline_frames = 30\n{extra}"),
        )
        .unwrap();
        expect_error(&run(&["run", "--quiet", "--config", &s(&cfg)]), code, want);
    };
    let garbled = dir.join("garbled.json");
    std::fs::write(&garbled, "{\"gradcamd_baseline\": 1, \"map\": [").unwrap();
    check(
        &format!("baseline_file = \"{}\"", s(&garbled)),
        2,
        &["garbled.json is not a gradcamd attention baseline", "delete it"],
    );
    check(
        "baseline_file = \"/nonexistent-dir/b.json\"",
        6,
        &["cannot write attention baseline /nonexistent-dir/b.json: directory /nonexistent-dir does not exist"],
    );
    check("drift_threshold = 1.5", 2, &["source.drift_threshold = 1.5"]);
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\nuri = \"{clip}\"\nevents = \"{ev}\"\nbaseline_file = \"{}\"\n",
            s(&garbled)
        ),
    )
    .unwrap();
    expect_error(
        &run(&["run", "--quiet", "--config", &s(&cfg)]),
        2,
        &["source.baseline_frames is 0"],
    );
}

#[test]
fn the_roi_is_outlined_in_the_recorded_video_unless_draw_roi_is_off() {
    // carphone is 176x144; the ROI's left edge at x = 0.25 (pixel 44), from y = 0.25 to 0.75.
    let dir = scratch("roi_outline");
    let clip = s(&media("carphone_pristine.mp4"));
    let record = |name: &str, extra: &str| {
        let out = dir.join(format!("{name}.mp4"));
        run_config(
            &dir,
            name,
            &format!(
                "[explain]\nhud = false\n\n[[source]]\nuri = \"{clip}\"\noutput = \"{}\"\nroi = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]\n{extra}",
                s(&out)
            ),
        );
        crate::util::raw_frames(&out, None, "rgb24", 176 * 144 * 3)
    };
    let (on, off) = (record("on", ""), record("off", "draw_roi = false"));
    assert_eq!((on.len(), off.len()), (120, 120));
    let px = |f: &[u8], x: usize, y: usize| -> [i32; 3] {
        let i = (y * 176 + x) * 3;
        [f[i] as i32, f[i + 1] as i32, f[i + 2] as i32]
    };
    // The outline is yellow (RGB 255, 255, 0), through H.264's 4:2:0: on the left edge of every
    // frame, red and green high and blue low, where the frame without it is not yellow.
    let yellow = |p: [i32; 3]| p[0] > 180 && p[1] > 180 && p[2] < 100;
    for (k, (a, b)) in on.iter().zip(&off).enumerate() {
        let on_edge = (48..96).filter(|&y| yellow(px(a, 44, y))).count();
        let off_edge = (48..96).filter(|&y| yellow(px(b, 44, y))).count();
        assert!(
            on_edge >= 40 && off_edge <= 4,
            "frame {k}: {on_edge} vs {off_edge} of 48 yellow"
        );
        // Well inside the ROI, the two videos are the same picture, up to the encoder's noise:
        // the mean difference over a 16x16 block.
        let d: i32 = (64..80)
            .flat_map(|y| (80..96).map(move |x| (x, y)))
            .map(|(x, y)| {
                (0..3)
                    .map(|c| (px(a, x, y)[c] - px(b, x, y)[c]).abs())
                    .sum::<i32>()
            })
            .sum();
        assert!(
            d < 16 * 16 * 3 * 4,
            "frame {k}: mean difference {}",
            d as f64 / 768.0
        );
    }
}

/// pytorch-grad-cam's metrics on the stills (tools/make_faithfulness_fixtures.py).
fn faith_fixture() -> Vec<Value> {
    let doc = crate::util::read_json(&crate::util::fixture("faithfulness_default.json"));
    doc["cases"].as_array().cloned().unwrap_or_default()
}

#[test]
fn faithfulness_on_the_stills_matches_pytorch_grad_cams_metrics() {
    let cases = faith_fixture();
    assert_eq!(cases.len(), 4);
    let images: Vec<String> = cases
        .iter()
        .map(|c| s(&crate::util::root().join(c["image"].as_str().unwrap())))
        .collect();
    let mut args = vec!["explain", "--faithfulness", "--json", "-"];
    args.extend(images.iter().map(String::as_str));
    let o = run(&args);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let got: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let mut worst = 0f64;
    for (c, g) in cases.iter().zip(&got) {
        assert_eq!(g["target"]["index"], c["class"], "{}", c["image"]);
        let f = &g["faithfulness"];
        let get = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        for (ours, theirs) in [
            ("confidence", "confidence"),
            ("cam_mult", "cam_mult"),
            ("deletion", "deletion"),
        ] {
            let d = (get(f, ours) - get(c, theirs)).abs();
            worst = worst.max(d);
            assert!(
                d < 1e-4,
                "{} {ours}: {} vs pytorch-grad-cam {}",
                c["image"],
                f[ours],
                c[theirs]
            );
        }
        // DropInConfidence and IncreaseInConfidence are the CamMult change, clipped and
        // thresholded.
        let change = get(f, "cam_mult");
        assert!((change.min(0.0).abs() - get(c, "drop_in_confidence")).abs() < 1e-4);
        assert_eq!(
            f64::from(u8::from(change > 0.0)),
            get(c, "increase_in_confidence")
        );
    }
    eprintln!("faithfulness vs pytorch-grad-cam: max abs difference {worst:.2e}");
}

/// `frames` copies of a still as a lossless video (PNG frames in Matroska): every frame
/// decodes to the still's exact pixels.
fn still_clip(dir: &Path, still: &Path, frames: u32) -> PathBuf {
    let out = dir.join("still.mkv");
    ffmpeg(&[
        "-loop",
        "1",
        "-i",
        &s(still),
        "-frames:v",
        &frames.to_string(),
        "-r",
        "15",
        "-c:v",
        "png",
        &s(&out),
    ]);
    out
}

fn faith_lines(ev: &[Value]) -> Vec<&Value> {
    ev.iter().filter(|e| e.get("faithfulness").is_some()).collect()
}

#[test]
fn sampled_faithfulness_in_the_pipeline_is_the_stills_in_any_batch_shape() {
    // Chelsea as a 48-frame video, every 5th frame measured: 10 samples, each the still's
    // figures, whether the probes ride in the frames' batches (batch 8, which the long timeout
    // fills: there the last batch is full and the probes of its sampled frame run after it,
    // checked by hand with RUST_LOG=gradcamd=debug), run in a batch of their own (batch 1), or
    // share batches across two sessions.
    let dir = scratch("faith_pipeline");
    let case = faith_fixture()
        .into_iter()
        .find(|c| c["image"].as_str().is_some_and(|p| p.ends_with("chelsea.png")))
        .unwrap();
    let clip = still_clip(&dir, &media("chelsea.png"), 48);
    for (batch, workers) in [(8, 1), (1, 1), (4, 2)] {
        let name = format!("b{batch}w{workers}");
        let ev = dir.join(format!("{name}.jsonl"));
        let log = run_config(
            &dir,
            &name,
            &format!(
                "[pipeline]\nbatch_size = {batch}\ninference_workers = {workers}\nbatch_timeout_ms = 5000\n\n[[source]]\nname = \"cat\"\nuri = \"{}\"\nevents = \"{}\"\nfaithfulness_every = 5\n",
                s(&clip),
                s(&ev)
            ),
        );
        let ev = events(&ev);
        let frames = ev.iter().filter(|e| e.get("class").is_some()).count();
        assert_eq!(frames, 48, "{name}: {log}");
        let faith = faith_lines(&ev);
        let mut seqs: Vec<u64> = faith.iter().filter_map(|e| e["seq"].as_u64()).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..48).step_by(5).collect::<Vec<u64>>(),
            "{name}: every 5th frame, each once"
        );
        for e in faith {
            let f = &e["faithfulness"];
            assert_eq!(
                (f["class"].as_u64(), e["label"].as_str()),
                (case["class"].as_u64(), Some("Egyptian cat"))
            );
            for k in ["confidence", "cam_mult", "deletion"] {
                let d = (f[k].as_f64().unwrap() - case[k].as_f64().unwrap()).abs();
                assert!(d < 1e-4, "{name} frame {}: {k} {} vs {}", e["seq"], f[k], case[k]);
            }
        }
    }
}
