//! The HTTP server with real clients: page, MJPEG streams, status, metrics, and the page in
//! headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use opencv::prelude::*;

use crate::util::{media, s, scratch, start_with_http, wait_status, Kid};

/// A config with two sample clips played as live sources (real time, looping).
fn two_live_sources(dir: &Path, sources: [(&str, &str); 2]) -> PathBuf {
    let cfg = dir.join("live2.toml");
    let text: String = sources
        .iter()
        .map(|(name, clip)| {
            format!(
                "[[source]]\nname = \"{name}\"\nuri = \"{}\"\nmode = \"live\"\n\n",
                s(&media(clip))
            )
        })
        .collect();
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Mean of a JPEG's top two rows.
pub(crate) fn hud_band(jpeg: &[u8]) -> f64 {
    let img = opencv::imgcodecs::imdecode(
        &opencv::core::Vector::from_slice(jpeg),
        opencv::imgcodecs::IMREAD_COLOR,
    )
    .unwrap();
    let top = opencv::core::Mat::roi(&img, opencv::core::Rect::new(0, 0, img.cols(), 2)).unwrap();
    opencv::core::mean_def(&top).unwrap().0[..3].iter().sum::<f64>() / 3.0
}

/// Reads one multipart JPEG part from an MJPEG stream.
fn read_part(r: &mut impl std::io::BufRead) -> Vec<u8> {
    let mut len = None;
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("Content-Length: ") {
            len = Some(v.parse::<usize>().unwrap());
        }
        if l.is_empty() && len.is_some() {
            break;
        }
    }
    let mut buf = vec![0u8; len.unwrap()];
    r.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn http_serves_page_streams_metrics_and_health() {
    let cfg = two_live_sources(
        &scratch("http"),
        [("bikes", "bikes.mp4"), ("car", "carphone_pristine.mp4")],
    );
    let (mut child, addr, _log) =
        start_with_http(&["run", "--quiet", "--config", &s(&cfg), "--http", "127.0.0.1:0"]);
    let base = format!("http://{addr}");
    let get = |p: &str| ureq::get(&format!("{base}{p}")).call().map_err(Box::new);

    // Wait for both sources to have produced frames.
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = serde_json::from_str(&get("/status.json").unwrap().into_string().unwrap()).unwrap();
        if status
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["processed"].as_u64().unwrap_or(0) > 5)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        status
            .as_array()
            .is_some_and(|a| a.iter().all(|s| s["processed"].as_u64().unwrap_or(0) > 5)),
        "no frames from both sources within 10 s: {status}"
    );
    let names: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bikes", "car"]);
    assert_eq!(status[1]["label"], "bow tie", "{status}");

    let h = get("/healthz").unwrap();
    assert_eq!((h.status(), h.into_string().unwrap().as_str()), (200, "ok\n"));
    let page = get("/").unwrap().into_string().unwrap();
    assert!(
        page.contains("/stream/bikes") && page.contains("/stream/car"),
        "{page}"
    );

    let m = get("/metrics").unwrap().into_string().unwrap();
    for name in [
        "gradcamd_frames_processed_total{source=\"car\"}",
        "gradcamd_frames_dropped_total{source=\"bikes\"}",
        "gradcamd_source_reconnects_total{source=\"car\"}",
        "gradcamd_source_up{source=\"bikes\"} 1",
        "gradcamd_latency_seconds_bucket{le=\"+Inf\"}",
        "gradcamd_inference_batch_size",
        "gradcamd_attention_outside_roi_ratio{source=\"car\"}",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
    // Their values: read after the status above, so at least what it said; nothing went down.
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no value for {name}:\n{m}"))
    };
    for (i, src) in ["bikes", "car"].iter().enumerate() {
        let seen = status[i]["processed"].as_u64().unwrap() as f64;
        let done = value(&format!("gradcamd_frames_processed_total{{source=\"{src}\"}}"));
        assert!(
            done >= seen,
            "{src}: {done} processed in /metrics, {seen} in the status before"
        );
        assert_eq!(value(&format!("gradcamd_source_up{{source=\"{src}\"}}")), 1.0);
        assert_eq!(
            value(&format!("gradcamd_source_reconnects_total{{source=\"{src}\"}}")),
            0.0
        );
    }
    // Every latency observation falls in the +Inf bucket: its count is the total count.
    let inf = value("gradcamd_latency_seconds_bucket{le=\"+Inf\"}");
    assert!(
        inf >= 10.0 && inf == value("gradcamd_latency_seconds_count"),
        "{m}"
    );

    // The MJPEG stream: decodable JPEGs that change from frame to frame.
    let resp = get("/stream/car").unwrap();
    assert!(
        resp.content_type().starts_with("multipart/x-mixed-replace"),
        "{}",
        resp.content_type()
    );
    let mut r = std::io::BufReader::new(resp.into_reader());
    let a = read_part(&mut r);
    let mut b = read_part(&mut r);
    for _ in 0..10 {
        if b != a {
            break;
        }
        b = read_part(&mut r);
    }
    assert_ne!(a, b, "the stream repeats one frame");
    let img = opencv::imgcodecs::imdecode(
        &opencv::core::Vector::from_slice(&b),
        opencv::imgcodecs::IMREAD_COLOR,
    )
    .unwrap();
    assert_eq!((img.cols(), img.rows()), (176, 144));
    // Every frame served is drawn (frames nobody watches are not), the first one included:
    // the HUD's black band on top (the clip's own top rows average 126-133).
    for (k, part) in [a, b, read_part(&mut r), read_part(&mut r)].iter().enumerate() {
        assert!(hud_band(part) < 20.0, "part {k}: top rows {}", hud_band(part));
    }
    let snap = get("/snapshot/car.jpg").unwrap();
    let mut jpeg = Vec::new();
    std::io::Read::read_to_end(&mut snap.into_reader(), &mut jpeg).unwrap();
    assert!(hud_band(&jpeg) < 20.0, "snapshot: top rows {}", hud_band(&jpeg));
    assert_eq!(
        get("/stream/nope")
            .unwrap_err()
            .into_response()
            .map(|r| r.status()),
        Some(404)
    );

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Returns true, or the image boxes before and after each caption text (JSON).
const CAPTIONS_DO_NOT_MOVE_STREAMS: &str = r#"(() => {
  const boxes = () => JSON.stringify(Array.from(document.querySelectorAll('img'),
    e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }));
  const spans = Array.from(document.querySelectorAll('figcaption span'));
  const kept = spans.map(s => s.textContent);
  const seen = [boxes()];
  for (const text of ['mountain bike, all-terrain bike, off-roader 0.99 · 29.9 fps', 'stream lost', '']) {
    spans.forEach(s => { s.textContent = text; });
    seen.push(boxes());
  }
  spans.forEach((s, i) => { s.textContent = kept[i]; });
  return spans.length > 0 && seen.every(b => b === seen[0]) ? true : seen;
})()"#;

#[test]
fn the_page_plays_both_streams_in_headless_chromium() {
    let dir = scratch("chromium");
    let cfg = two_live_sources(&dir, [("car", "carphone_pristine.mp4"), ("bikes", "bikes.mp4")]);
    let (mut daemon, addr, _log) =
        start_with_http(&["run", "--quiet", "--config", &s(&cfg), "--http", "127.0.0.1:0"]);
    wait_status(&format!("http://{addr}"), 30, |s| {
        s["processed"].as_u64().unwrap_or(0) > 5
    });
    // Before the shots, the page's captions get a long text and then "stream lost": no stream
    // image may move. (A label longer than a small stream once widened its card and moved the
    // next stream.)
    let out = browser_check(
        &mut daemon,
        &addr,
        &dir,
        &[("BROWSER_CHECK_EVAL", CAPTIONS_DO_NOT_MOVE_STREAMS)],
    );
    assert!(out.contains("2 image(s)"), "{out}");
}

/// scripts/browser_check.sh on the daemon's page (Chromium over the DevTools protocol: the page
/// loads, and two screenshots INTERVAL s apart differ inside every stream image), with `env`;
/// then the daemon is stopped. Fails the test unless the check passed; returns what it said.
fn browser_check(daemon: &mut Kid, addr: &str, dir: &Path, env: &[(&str, &str)]) -> String {
    let (ok, out) = crate::util::browser(&format!("http://{addr}/"), &dir.join("shots"), "img", env);
    Command::new("kill")
        .args(["-INT", &daemon.id().to_string()])
        .status()
        .unwrap();
    daemon.wait().unwrap();
    assert!(ok, "{out}");
    out
}

/// Before the screenshots: the first source's score sparkline has a point, and the alert line
/// says the ROI alert is on (the ROI is a corner the model never looks at).
const SPARKLINE_BEFORE: &str = r#"(() => {
  const p = document.querySelector('#g0 polyline.score');
  const a = document.getElementById('a0');
  window.__spark = p ? p.getAttribute('points') : '';
  const n = window.__spark.split(' ').filter(Boolean).length;
  return n >= 1 && a && a.textContent.includes('ROI alert') ? true : {points: window.__spark, alert: a && a.textContent};
})()"#;

/// After them (2 s later): more points, and the line has changed.
const SPARKLINE_AFTER: &str = r#"(() => {
  const p = document.querySelector('#g0 polyline.score').getAttribute('points');
  const n = (v) => v.split(' ').filter(Boolean).length;
  return n(p) > n(window.__spark) && p !== window.__spark ? true : {before: window.__spark, after: p};
})()"#;

#[test]
fn the_page_draws_each_sources_sparklines_and_alert_state_in_chromium() {
    let dir = scratch("sparklines");
    let cfg = dir.join("live.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\nname = \"car\"\nuri = \"{}\"\nmode = \"live\"\nroi = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.3], [0.0, 0.3]]\nroi_alert_frames = 3\n",
            s(&media("carphone_pristine.mp4"))
        ),
    )
    .unwrap();
    let (mut daemon, addr, _log) =
        start_with_http(&["run", "--quiet", "--config", &s(&cfg), "--http", "127.0.0.1:0"]);
    let st = wait_status(&format!("http://{addr}"), 30, |s| s["alert"] == true);
    assert!(st["outside_roi"].as_f64().is_some_and(|o| o > 0.5), "{st}");
    browser_check(
        &mut daemon,
        &addr,
        &dir,
        &[
            ("BROWSER_CHECK_EVAL", SPARKLINE_BEFORE),
            ("BROWSER_CHECK_AFTER", SPARKLINE_AFTER),
            ("INTERVAL", "2.5"),
        ],
    );
}
