//! The review report (`gradcamd report`) and the WebVTT captions beside recordings, on one run
//! of two sources sharing an events log: the cat that moves out of its ROI and away from its
//! baseline (ROI and drift alerts, sampled faithfulness, recorded), and carphone with an ROI in
//! a corner it never looks at (an ROI alert from the start, not recorded).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::attention::cat_clip;
use crate::util::{browser, events, expect_error, media, probe, raw_frames, run, run_config, s, scratch};

struct Run {
    dir: PathBuf,
    events: PathBuf,
    video: PathBuf,
}

/// The run both tests read, made once.
fn the_run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("report");
        // 4 s left, 4 s right, 6 s left, 15 fps: out of the left-half ROI at frame 60.
        let clip = cat_clip(&dir, "cat_clip", &[(4, 0), (4, 224), (6, 0)]);
        let (events, video) = (dir.join("events.jsonl"), dir.join("cat.mp4"));
        run_config(
            &dir,
            "two",
            &format!(
                r#"[output]
overwrite = true

[[source]]
name = "cat"
uri = "{clip}"
mode = "file"
output = "{video}"
events = "{events}"
roi = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
roi_alert_frames = 5
baseline_frames = 30
drift_frames = 10
faithfulness_every = 15

[[source]]
name = "car"
uri = "{car}"
mode = "file"
events = "{events}"
roi = [[0.0, 0.0], [0.2, 0.0], [0.2, 0.2], [0.0, 0.2]]
roi_alert_frames = 3
"#,
                clip = s(&clip),
                video = s(&video),
                events = s(&events),
                car = s(&media("carphone_pristine.mp4")),
            ),
        );
        Run { dir, events, video }
    })
}

/// The frame lines of `source` (not the faithfulness lines).
fn frames_of(ev: &[Value], source: &str) -> Vec<Value> {
    ev.iter()
        .filter(|e| e["source"] == source && e.get("faithfulness").is_none())
        .cloned()
        .collect()
}

/// A cue: start and end in seconds, and its text.
fn cues(vtt: &str) -> Vec<(f64, f64, String)> {
    let secs = |t: &str| {
        let p: Vec<f64> = t.split(':').map(|x| x.parse().unwrap()).collect();
        p[0] * 3600.0 + p[1] * 60.0 + p[2]
    };
    vtt.split("\n\n")
        .filter_map(|block| {
            let (timing, text) = block.split_once('\n')?;
            let (a, b) = timing.split_once(" --> ")?;
            Some((secs(a), secs(b), text.to_string()))
        })
        .collect()
}

#[test]
fn the_recordings_captions_parse_and_say_each_frames_label_and_alerts() {
    let r = the_run();
    let vtt = r.video.with_extension("vtt");
    let text = std::fs::read_to_string(&vtt).unwrap();
    assert!(text.starts_with("WEBVTT\n"), "{text}");
    // FFmpeg's WebVTT demuxer, an independent parser, reads every cue.
    let o = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=pts_time,duration_time",
            "-of",
            "csv=p=0",
        ])
        .arg(&vtt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let packets: Vec<(f64, f64)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    let cs = cues(&text);
    assert_eq!(packets.len(), cs.len(), "{text}");
    // From 0 to the end of the video's last frame, without a gap or an overlap.
    let (frames, fps, _, _) = probe(&r.video);
    assert_eq!(frames, 14 * 15);
    assert_eq!(packets[0].0, 0.0);
    for w in packets.windows(2) {
        assert!((w[0].0 + w[0].1 - w[1].0).abs() < 1.5e-3, "{w:?}");
    }
    let (last_start, last_len) = *packets.last().unwrap();
    assert!(
        (last_start + last_len - frames as f64 / fps).abs() < 1.5e-3,
        "cues end at {}, the video at {}",
        last_start + last_len,
        frames as f64 / fps
    );
    // Each frame's cue says its label and the alerts the events log has on after it.
    let ev = frames_of(&events(&r.events), "cat");
    assert_eq!(ev.len(), frames as usize);
    let mut saw = [false; 2];
    for e in &ev {
        let t = e["seq"].as_f64().unwrap() / fps + 0.01;
        let (_, _, text) = cs.iter().find(|c| c.0 <= t && t < c.1).unwrap();
        let label = e["label"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{label} 0.")),
            "frame {}: {text:?}",
            e["seq"]
        );
        let (roi, drift) = (e["alerting"] == true, e["drift_alerting"] == true);
        assert_eq!(text.contains("ROI alert"), roi, "frame {}: {text:?}", e["seq"]);
        assert_eq!(
            text.contains("attention drift"),
            drift,
            "frame {}: {text:?}",
            e["seq"]
        );
        saw[0] |= roi;
        saw[1] |= drift;
    }
    assert_eq!(saw, [true, true], "the run has both alerts");
}

/// In Chromium: one section and one timeline per source, each alert's band where its frames
/// put it, every thumbnail decoded, the alert links, the label changes. `WANT` is set by the
/// test: per source, the alerts' [kind, first seq, start s, end s], and the run's length.
const REPORT_CHECK: &str = r#"(() => {
  const bad = [];
  const secs = document.querySelectorAll('section.source');
  if (secs.length !== Object.keys(WANT).length) bad.push(`sections ${secs.length}`);
  for (const sec of secs) {
    const name = sec.dataset.source, want = WANT[name];
    if (!want) { bad.push(`unexpected source ${name}`); continue; }
    const svgs = sec.querySelectorAll('svg.timeline');
    if (svgs.length !== 1) { bad.push(`${name}: ${svgs.length} timelines`); continue; }
    const svg = svgs[0], x0 = +svg.dataset.x0, x1 = +svg.dataset.x1;
    if (Math.abs(+svg.dataset.t1 - want.end) > 1e-3) bad.push(`${name}: t1 ${svg.dataset.t1} want ${want.end}`);
    const x = (t) => x0 + t / want.end * (x1 - x0);
    const rects = svg.querySelectorAll('rect.alert');
    if (rects.length !== want.alerts.length) bad.push(`${name}: ${rects.length} alert bands, want ${want.alerts.length}`);
    for (const [kind, seq, t0, t1] of want.alerts) {
      const r = svg.querySelector(`rect.alert.${kind}[data-seq="${seq}"]`);
      if (!r) { bad.push(`${name}: no ${kind} band at frame ${seq}`); continue; }
      const b = r.getBBox();
      if (Math.abs(b.x - x(t0)) > 0.5 || Math.abs(b.x + b.width - Math.max(x(t1), x(t0) + 2)) > 0.5)
        bad.push(`${name}: ${kind} band ${b.x}+${b.width}, want ${x(t0)}..${x(t1)}`);
      // Laid out: it spans the bands, in the page.
      const cr = r.getBoundingClientRect();
      if (cr.width < 1.5 || cr.height < 50) bad.push(`${name}: ${kind} band not laid out ${cr.width}x${cr.height}`);
    }
    const thumbs = sec.querySelectorAll('img.thumb');
    if (thumbs.length !== want.thumbs) bad.push(`${name}: ${thumbs.length} thumbnails, want ${want.thumbs}`);
    for (const im of thumbs) if (!(im.complete && im.naturalWidth === 320 && im.naturalHeight === 160)) bad.push(`${name}: thumbnail ${im.alt} ${im.naturalWidth}x${im.naturalHeight}`);
    const links = [...sec.querySelectorAll('a.at')].map((a) => a.getAttribute('href'));
    if (JSON.stringify(links) !== JSON.stringify(want.links)) bad.push(`${name}: links ${links} want ${want.links}`);
    const bands = [...svg.querySelectorAll('g.band')].map((g) => g.dataset.track);
    if (JSON.stringify(bands) !== JSON.stringify(want.bands)) bad.push(`${name}: bands ${bands}`);
  }
  return bad.length ? bad : true;
})()"#;

/// The alerts of a source as the events log has them: [kind, first seq, start s, end s], in the
/// order they start (an alert ends on the first frame it is off, or at the last frame).
fn alerts(ev: &[Value]) -> (Vec<(String, u64, f64, f64)>, f64) {
    let pts0 = ev[0]["pts_ms"].as_f64().unwrap();
    let t = |e: &Value| (e["pts_ms"].as_f64().unwrap() - pts0) / 1e3;
    let end = t(ev.last().unwrap());
    let mut out: Vec<(String, u64, f64, f64)> = Vec::new();
    for (kind, key) in [("roi", "alerting"), ("drift", "drift_alerting")] {
        let mut on: Option<(u64, f64)> = None;
        for e in ev {
            match (on, e[key] == true) {
                (None, true) => on = Some((e["seq"].as_u64().unwrap(), t(e))),
                (Some((seq, t0)), false) => {
                    out.push((kind.into(), seq, t0, t(e)));
                    on = None;
                }
                _ => {}
            }
        }
        if let Some((seq, t0)) = on {
            out.push((kind.into(), seq, t0, end));
        }
    }
    out.sort_by(|a, b| a.2.total_cmp(&b.2));
    (out, end)
}

#[test]
fn the_report_has_a_timeline_per_source_with_its_alerts_and_thumbnails_in_chromium() {
    let r = the_run();
    let dir = scratch("report_html");
    let html = dir.join("review.html");
    let o = run(&[
        "report",
        &s(&r.events),
        "--video",
        &format!("cat={}", s(&r.video)),
        "-o",
        &s(&html),
    ]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let ev = events(&r.events);
    let mut want = serde_json::Map::new();
    let mut cat_alerts = Vec::new();
    for name in ["cat", "car"] {
        let fr = frames_of(&ev, name);
        let (al, end) = alerts(&fr);
        assert!(!al.is_empty(), "{name} has alerts");
        let recorded = name == "cat";
        // Links go from the report's directory to the recording, at each alert's start.
        let rel = format!("../{}/cat.mp4", r.dir.file_name().unwrap().to_string_lossy());
        let links: Vec<String> = if recorded {
            al.iter().map(|a| format!("{rel}#t={:.3}", a.2)).collect()
        } else {
            vec![]
        };
        let mut bands = vec!["score", "outside_roi"];
        if recorded {
            bands.extend(["drift", "faithfulness"]);
            cat_alerts = al.clone();
        }
        want.insert(
            name.into(),
            serde_json::json!({
                "end": end,
                "alerts": al.iter().map(|a| serde_json::json!([a.0, a.1, a.2, a.3])).collect::<Vec<_>>(),
                "thumbs": if recorded { al.len() } else { 0 },
                "links": links,
                "bands": bands,
            }),
        );
    }
    // The cat: an ROI alert and a drift alert, each once.
    let kinds: Vec<&str> = cat_alerts.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(kinds, ["roi", "drift"], "{cat_alerts:?}");
    let check = format!(
        "(() => {{ const WANT = {}; return {REPORT_CHECK}; }})()",
        Value::Object(want)
    );
    let url = format!("file://{}", s(&html));
    let (ok, out) = browser(
        &url,
        &dir.join("shots"),
        "img.thumb",
        &[("BROWSER_CHECK_STATIC", "1"), ("BROWSER_CHECK_EVAL", &check)],
    );
    assert!(ok, "{out}");
    // The screenshot was taken, and shows the page (not a blank): many colours.
    let shot = dir.join("shots/shot1.png");
    let px = raw_frames(&shot, Some("scale=320:200"), "gray", 320 * 200);
    assert_eq!(px.len(), 1, "{}", shot.display());
    let distinct = px[0].iter().collect::<std::collections::HashSet<_>>().len();
    assert!(distinct > 20, "screenshot has {distinct} grey levels");
    // Self-contained: no address another machine would be asked for.
    let text = std::fs::read_to_string(&html).unwrap();
    for bad in ["http://", "https://", "src=\"//", "<script"] {
        assert!(!text.contains(bad), "the report holds {bad:?}");
    }
    // Each thumbnail is its alert's first frame of the recording: closer to it than to the
    // frame before the cat moved (an independent decode of both, ffmpeg).
    let thumbs: Vec<&str> = text
        .split("src=\"data:image/jpeg;base64,")
        .skip(1)
        .map(|t| t.split('"').next().unwrap())
        .collect();
    assert_eq!(thumbs.len(), 2);
    let video = raw_frames(&r.video, Some("scale=320:160"), "gray", 320 * 160);
    for (b64, a) in thumbs.iter().zip(&cat_alerts) {
        let jpg = dir.join(format!("thumb{}.jpg", a.1));
        std::fs::write(&jpg, decode_base64(b64)).unwrap();
        let img = &raw_frames(&jpg, None, "gray", 320 * 160)[0];
        let diff = |f: &[u8]| {
            img.iter()
                .zip(f)
                .map(|(&p, &q)| (p as f64 - q as f64).abs())
                .sum::<f64>()
                / img.len() as f64
        };
        let (own, first) = (diff(&video[a.1 as usize]), diff(&video[0]));
        assert!(
            own < 6.0 && first > 3.0 * own,
            "alert at frame {}: {own} vs {first} to frame 0",
            a.1
        );
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk.iter().take_while(|&&c| c != b'=').count();
        let mut v = 0u32;
        for (i, &c) in chunk.iter().take(n).enumerate() {
            v |= (val(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&v.to_be_bytes()[1..n]);
    }
    out
}

#[test]
fn bad_report_inputs_are_one_line_each() {
    let dir = scratch("report_bad");
    let ev = dir.join("ev.jsonl");
    std::fs::write(
        &ev,
        "{\"ts\":1,\"source\":\"a\",\"seq\":0,\"pts_ms\":0,\"label\":\"x\",\"prob\":0.5}\n{\"ts\":1,\"source\":\"b\",\"seq\":0,\"pts_ms\":0,\"label\":\"x\",\"prob\":0.5}\n",
    )
    .unwrap();
    let out = s(&dir.join("r.html"));
    let o = run(&["report", &s(&dir.join("missing.jsonl")), "-o", &out]);
    expect_error(&o, 5, &["missing.jsonl", "events log"]);
    let o = run(&["report", "/dev/zero", "-o", &out]);
    expect_error(&o, 5, &["/dev/zero", "not a regular file"]);
    let junk = dir.join("junk.jsonl");
    std::fs::write(&junk, "hello\n[1,2]\n").unwrap();
    let o = run(&["report", &s(&junk), "-o", &out]);
    expect_error(&o, 5, &["junk.jsonl", "no gradcamd event line", "line 1"]);
    let o = run(&["report", &s(&ev), "--video", "x.mp4", "-o", &out]);
    expect_error(&o, 2, &["several sources", "a, b", "SOURCE=PATH"]);
    let o = run(&[
        "report",
        &s(&ev),
        "--video",
        &format!("a={}", s(&dir.join("none.mp4"))),
        "-o",
        &out,
    ]);
    expect_error(&o, 5, &["none.mp4", "no such file"]);
    let o = run(&["report", &s(&ev), "-o", &s(&dir.join("no/dir/r.html"))]);
    expect_error(&o, 6, &["no/dir", "does not exist"]);
    let o = run(&["report", &s(&ev), "-o", &s(&ev)]);
    expect_error(&o, 2, &["the report", "ev.jsonl"]);
    // None of those left a report behind; a good one is written once, then kept without
    // --overwrite.
    assert!(!Path::new(&out).exists());
    assert!(run(&["report", &s(&ev), "-o", &out]).status.success());
    let o = run(&["report", &s(&ev), "-o", &out]);
    expect_error(&o, 6, &["r.html", "exists", "--overwrite"]);
    assert!(run(&["report", &s(&ev), "-o", &out, "--overwrite"])
        .status
        .success());
}
