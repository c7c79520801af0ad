//! `gradcamd report`: a review report from events logs, one self-contained HTML file that
//! nothing outside it is needed for (no script, font or image is fetched; thumbnails are inline
//! JPEGs). Per source it draws one timeline, inline SVG: the class score with the label changes,
//! the share of attention outside the ROI, the drift from the attention baseline and the sampled
//! faithfulness, each with the alert intervals shaded; then a table of figures, the alerts with
//! thumbnails of their first frame taken from the explained recording and links to that time in
//! it, and the label changes.
//!
//! The logs of a run of weeks hold tens of millions of lines: they are read as a stream, and each
//! curve keeps at most a few thousand points (the low and the high of each time bucket, so a
//! spike stays visible). Alert intervals and label changes are kept exactly: the monitor writes
//! a line on every frame an alert starts or ends, whatever `events_every`.
//!
//! Time is the source's time since the run's first frame (`pts_ms`), which is also the time in
//! the recording of that run: the file sink keeps the source's timing, repeating a frame across a
//! gap rather than shifting the frames after it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::ReportArgs;
use crate::error::{fail, Kind};

/// Points a curve keeps (see [`Series`]).
const KEEP: usize = 1500;
/// Longest line read; a longer one is counted as bad and skipped.
const MAX_LINE: usize = 1 << 16;
/// Alerts and label changes listed per source; the rest are counted.
const MAX_LISTED: usize = 200;
/// Thumbnail width in pixels.
const THUMB_WIDTH: i32 = 320;

/// One line of an events log, as `crate::monitor` writes it: a frame's line or a faithfulness
/// line. Unknown fields are ignored, missing ones default, so logs of other versions read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Line {
    ts: Option<f64>,
    source: Option<String>,
    seq: Option<u64>,
    pts_ms: Option<f64>,
    label: Option<String>,
    prob: Option<f32>,
    outside_roi: Option<f32>,
    alerting: Option<bool>,
    entropy: Option<f32>,
    concentration: Option<f32>,
    stability: Option<f32>,
    drift: Option<f32>,
    drift_alerting: Option<bool>,
    faithfulness: Option<FaithLine>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FaithLine {
    cam_mult: Option<f32>,
    deletion: Option<f32>,
}

/// A curve of at most about [`KEEP`] points: raw until then, then the low and high of
/// buckets of time whose width doubles whenever the points pass twice that.
#[derive(Debug, Default)]
struct Series {
    /// Bucket width in seconds; 0 while raw.
    width: f64,
    /// (time, low, high).
    points: Vec<[f64; 3]>,
}

impl Series {
    fn add(&mut self, t: f64, v: f64) {
        if !t.is_finite() || !v.is_finite() {
            return;
        }
        if self.width > 0.0 {
            if let Some(p) = self.points.last_mut() {
                if (p[0] / self.width).floor() == (t / self.width).floor() {
                    p[1] = p[1].min(v);
                    p[2] = p[2].max(v);
                    return;
                }
            }
        }
        self.points.push([t, v, v]);
        if self.points.len() > 2 * KEEP {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let (Some(a), Some(b)) = (self.points.first(), self.points.last()) else {
            return;
        };
        self.width = if self.width > 0.0 {
            self.width * 2.0
        } else {
            ((b[0] - a[0]) / KEEP as f64).max(1e-3)
        };
        let w = self.width;
        let mut out: Vec<[f64; 3]> = Vec::with_capacity(KEEP + 1);
        for p in &self.points {
            match out.last_mut() {
                Some(q) if (q[0] / w).floor() == (p[0] / w).floor() => {
                    q[1] = q[1].min(p[1]);
                    q[2] = q[2].max(p[2]);
                }
                _ => out.push(*p),
            }
        }
        self.points = out;
    }

    fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// Running mean, min and max of a figure.
#[derive(Debug, Default, Clone, Copy)]
struct Summary {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if self.n == 0 {
            (self.min, self.max) = (v, v);
        }
        self.n += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlertKind {
    Roi,
    Drift,
}

impl AlertKind {
    fn class(self) -> &'static str {
        match self {
            AlertKind::Roi => "roi",
            AlertKind::Drift => "drift",
        }
    }

    fn words(self) -> &'static str {
        match self {
            AlertKind::Roi => "attention outside the ROI",
            AlertKind::Drift => "attention drift",
        }
    }
}

/// One alert: from the first frame it is on to the first frame it is off (or the run's end).
#[derive(Debug, Clone)]
struct Alert {
    kind: AlertKind,
    t0: f64,
    t1: f64,
    seq: u64,
    /// Still on at the last line of the run.
    open: bool,
    label: String,
    /// Outside-ROI share or divergence on the first frame.
    value: Option<f32>,
    /// The first frame, as an inline JPEG, once taken from the recording.
    thumb: Option<String>,
}

/// One run of one source: its lines from a frame 0 (or the first line) until its frames start
/// again from a lower number (the log is appended to by each run).
#[derive(Debug, Default)]
struct Track {
    name: String,
    /// 1 for the first run of the source in the logs.
    run: usize,
    pts0: Option<f64>,
    /// Milliseconds per frame, from the first two frame lines: where the run's first line is
    /// not its frame 0, its time is that many frames on.
    frame_ms: Option<f64>,
    first_seq: u64,
    last_seq: u64,
    first_ts: f64,
    last_ts: f64,
    /// Time of the last frame line, since the run's first.
    end: f64,
    lines: u64,
    score: Series,
    outside: Series,
    drift: Series,
    cam_mult: Series,
    deletion: Series,
    /// Faithfulness samples as points: (time, cam_mult, deletion); dropped when too many.
    faith_points: Vec<(f64, f32, f32)>,
    stats: HashMap<&'static str, Summary>,
    labels: HashMap<String, u64>,
    label: String,
    /// (time, seq, from, to).
    label_changes: Vec<(f64, u64, String, String)>,
    label_changes_total: u64,
    alerts: Vec<Alert>,
    alerts_total: [u64; 2],
    alert_secs: [f64; 2],
    /// Every alert's interval, (start, end, first seq), per kind (ROI, drift): all of them
    /// are shaded on the timeline, however many are listed. 24 bytes an alert.
    intervals: [Vec<(f64, f64, u64)>; 2],
    roi_on: bool,
    drift_on: bool,
    has_roi: bool,
    has_drift: bool,
}

impl Track {
    fn new(name: &str, run: usize) -> Track {
        Track {
            name: name.to_string(),
            run,
            ..Default::default()
        }
    }

    fn time(&self, pts_ms: Option<f64>) -> f64 {
        match (pts_ms, self.pts0) {
            (Some(p), Some(p0)) if p.is_finite() => ((p - p0) / 1e3).max(0.0),
            _ => self.end,
        }
    }

    fn stat(&mut self, key: &'static str, v: Option<f32>) {
        if let Some(v) = v {
            self.stats.entry(key).or_default().add(v as f64);
        }
    }

    fn frame(&mut self, l: &Line) {
        let seq = l.seq.unwrap_or(self.last_seq + 1);
        let ts = l.ts.unwrap_or(f64::NAN);
        if self.lines == 0 {
            self.pts0 = l.pts_ms.filter(|p| p.is_finite());
            self.first_seq = seq;
            self.first_ts = ts;
        } else if self.lines == 1 && seq > self.first_seq {
            let (p0, p1) = (self.pts0.unwrap_or(f64::NAN), l.pts_ms.unwrap_or(f64::NAN));
            self.frame_ms =
                Some((p1 - p0) / (seq - self.first_seq) as f64).filter(|d| d.is_finite() && *d > 0.0);
        }
        let t = self.time(l.pts_ms);
        self.lines += 1;
        self.last_seq = seq;
        self.last_ts = if ts.is_finite() { ts } else { self.last_ts };
        self.end = self.end.max(t);
        let label = l.label.as_deref().unwrap_or("");
        if let Some(p) = l.prob {
            self.score.add(t, p as f64);
        }
        self.stat("score", l.prob);
        if let Some(o) = l.outside_roi {
            self.has_roi = true;
            self.outside.add(t, o as f64);
        }
        self.stat("outside_roi", l.outside_roi);
        self.stat("entropy", l.entropy);
        self.stat("concentration", l.concentration);
        self.stat("stability", l.stability);
        if l.drift_alerting.is_some() {
            self.has_drift = true;
        }
        if let Some(d) = l.drift {
            self.drift.add(t, d as f64);
        }
        self.stat("drift", l.drift);
        if label != self.label {
            if self.lines > 1 {
                self.label_changes_total += 1;
                if self.label_changes.len() < MAX_LISTED {
                    self.label_changes
                        .push((t, seq, self.label.clone(), label.to_string()));
                }
            }
            self.label = label.to_string();
        }
        match self.labels.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                // A log of a model with thousands of classes names at most that many.
                self.labels.insert(label.to_string(), 1);
            }
        }
        let roi = l.alerting.unwrap_or(false);
        let drift = l.drift_alerting.unwrap_or(false);
        self.switch(AlertKind::Roi, roi, t, seq, label, l.outside_roi);
        self.switch(AlertKind::Drift, drift, t, seq, label, l.drift);
    }

    /// An alert of `kind` is `on` after frame `seq` at time `t`.
    fn switch(&mut self, kind: AlertKind, on: bool, t: f64, seq: u64, label: &str, value: Option<f32>) {
        let (was, k) = match kind {
            AlertKind::Roi => (&mut self.roi_on, 0),
            AlertKind::Drift => (&mut self.drift_on, 1),
        };
        if on == *was {
            return;
        }
        *was = on;
        let k: usize = k;
        if on {
            self.alerts_total[k] += 1;
            self.intervals[k].push((t, f64::NAN, seq));
            if self.alerts.len() < MAX_LISTED {
                self.alerts.push(Alert {
                    kind,
                    t0: t,
                    t1: t,
                    seq,
                    open: true,
                    label: label.to_string(),
                    value,
                    thumb: None,
                });
            }
        } else {
            if let Some(iv) = self.intervals[k].last_mut() {
                iv.1 = t;
                self.alert_secs[k] += t - iv.0;
            }
            if let Some(a) = self.alerts.iter_mut().rev().find(|a| a.kind == kind && a.open) {
                a.t1 = t;
                a.open = false;
            }
        }
    }

    fn faith(&mut self, l: &Line, f: &FaithLine) {
        let t = self.time(l.pts_ms);
        let (c, d) = (f.cam_mult, f.deletion);
        if let Some(c) = c {
            self.cam_mult.add(t, c as f64);
        }
        if let Some(d) = d {
            self.deletion.add(t, d as f64);
        }
        self.stat("faith_cam_mult", c);
        self.stat("faith_deletion", d);
        if let (Some(c), Some(d)) = (c, d) {
            if self.faith_points.len() <= 400 {
                self.faith_points.push((t, c, d));
            }
        }
    }

    /// Closes the alerts still on at the end of the run.
    fn finish(&mut self) {
        if let (Some(ms), true) = (self.frame_ms, self.first_seq > 0) {
            let off = self.first_seq as f64 * ms / 1e3;
            let series = [
                &mut self.score,
                &mut self.outside,
                &mut self.drift,
                &mut self.cam_mult,
                &mut self.deletion,
            ];
            for s in series {
                s.points.iter_mut().for_each(|p| p[0] += off);
            }
            for a in &mut self.alerts {
                a.t0 += off;
                a.t1 += off;
            }
            for iv in self.intervals.iter_mut().flatten() {
                iv.0 += off;
                iv.1 += off;
            }
            self.label_changes.iter_mut().for_each(|c| c.0 += off);
            self.faith_points.iter_mut().for_each(|f| f.0 += off);
            self.end += off;
        }
        for a in self.alerts.iter_mut().filter(|a| a.open) {
            a.t1 = self.end.max(a.t0);
        }
        for k in 0..2 {
            if let Some(iv) = self.intervals[k].last_mut().filter(|iv| iv.1.is_nan()) {
                iv.1 = self.end.max(iv.0);
                self.alert_secs[k] += iv.1 - iv.0;
            }
        }
    }

    fn id(&self) -> String {
        if self.run > 1 {
            format!("{} (run {})", self.name, self.run)
        } else {
            self.name.clone()
        }
    }
}

/// What reading the logs found.
struct Logs {
    tracks: Vec<Track>,
    lines: u64,
    bad: u64,
    /// The first bad line: file and line number.
    first_bad: Option<(PathBuf, u64)>,
}

fn read_logs(paths: &[PathBuf]) -> anyhow::Result<Logs> {
    let mut logs = Logs {
        tracks: Vec::new(),
        lines: 0,
        bad: 0,
        first_bad: None,
    };
    // Index of each source's current track.
    let mut current: HashMap<String, usize> = HashMap::new();
    for path in paths {
        let f = open_log(path)?;
        let mut r = std::io::BufReader::with_capacity(1 << 16, f);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            let got = read_line_capped(&mut r, &mut buf).map_err(|e| {
                fail(
                    Kind::Input,
                    format!("cannot read events log {}: {e}", path.display()),
                )
            })?;
            let Some(whole) = got else { break };
            n += 1;
            let text = buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let line: Option<Line> = whole.then(|| serde_json::from_slice(text).ok()).flatten();
            let Some(line) = line.filter(|l| l.source.is_some()) else {
                logs.bad += 1;
                logs.first_bad.get_or_insert((path.clone(), n));
                continue;
            };
            logs.lines += 1;
            let name = line.source.clone().unwrap_or_default();
            let idx = match current.get(&name) {
                Some(&i) => {
                    let t = &logs.tracks[i];
                    // Frames start again from a lower number: the next run of the source.
                    let restart = line.faithfulness.is_none()
                        && line.seq.is_some_and(|s| t.lines > 0 && s <= t.last_seq);
                    if restart {
                        let run = t.run + 1;
                        logs.tracks.push(Track::new(&name, run));
                        logs.tracks.len() - 1
                    } else {
                        i
                    }
                }
                None => {
                    logs.tracks.push(Track::new(&name, 1));
                    logs.tracks.len() - 1
                }
            };
            current.insert(name, idx);
            let t = &mut logs.tracks[idx];
            match &line.faithfulness {
                Some(f) => t.faith(&line, f),
                None => t.frame(&line),
            }
        }
    }
    logs.tracks.retain(|t| t.lines > 0);
    // By name (line1, line2, ...), each source's runs in order: not by whose line came first.
    logs.tracks
        .sort_by(|a, b| a.name.cmp(&b.name).then(a.run.cmp(&b.run)));
    for t in &mut logs.tracks {
        t.finish();
    }
    Ok(logs)
}

/// Opens an events log, refusing what is not a regular file (a FIFO would block, `/dev/zero`
/// never end).
fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    let bad = |why: String| {
        fail(
            Kind::Input,
            format!("cannot read events log {}: {why}", path.display()),
        )
    };
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let m = f.metadata().map_err(|e| bad(e.to_string()))?;
    if !m.is_file() {
        return Err(bad(
            "it is not a regular file; name the JSON-lines file a source's `events` wrote".into(),
        ));
    }
    Ok(f)
}

/// Reads one line into `buf` (without its newline); `Some(false)` for a line longer than
/// [`MAX_LINE`] (its rest is skipped), `None` at the end.
fn read_line_capped(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut whole = true;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if whole && buf.len() + take <= MAX_LINE {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            whole = false;
            buf.clear();
        }
        r.consume(take + done as usize);
        if done {
            return Ok(Some(whole));
        }
    }
}

/// `--video [SOURCE=]PATH`: which recording belongs to which source.
fn videos_by_source(args: &[String], tracks: &[Track]) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut names: Vec<&str> = tracks.iter().map(|t| t.name.as_str()).collect();
    names.dedup();
    let mut out = HashMap::new();
    for a in args {
        let (name, path) = match a.split_once('=') {
            Some((n, p)) if names.contains(&n) => (n.to_string(), PathBuf::from(p)),
            _ if names.len() == 1 && !Path::new(a).exists() && a.contains('=') => {
                return Err(fail(
                    Kind::Config,
                    format!(
                        "--video {a}: no source '{}' in the events (it has '{}'); write --video PATH or --video {}=PATH",
                        a.split('=').next().unwrap_or(""),
                        names[0],
                        names[0]
                    ),
                ))
            }
            _ if names.len() == 1 => (names[0].to_string(), PathBuf::from(a)),
            _ => {
                return Err(fail(
                    Kind::Config,
                    format!(
                        "--video {a}: the events hold several sources ({}); name the one it recorded: --video SOURCE=PATH",
                        names.join(", ")
                    ),
                ))
            }
        };
        if out.insert(name.clone(), path).is_some() {
            return Err(fail(
                Kind::Config,
                format!("--video names two recordings of source '{name}'; give one"),
            ));
        }
    }
    Ok(out)
}

pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    check_args(args)?;
    let claim = crate::paths::Claim::take(&args.output, args.overwrite).map_err(|e| {
        fail(
            Kind::Output,
            format!(
                "cannot write report {}: {}",
                args.output.display(),
                match e {
                    crate::paths::ClaimError::Exists =>
                        "it exists; pass --overwrite to replace it".to_string(),
                    e => e.to_string(),
                }
            ),
        )
    })?;
    let result = build(args);
    let html = match result {
        Ok(h) => h,
        Err(e) => {
            claim.abandon();
            return Err(e);
        }
    };
    let written = (|| {
        let mut f = claim.file();
        f.set_len(0)?;
        f.write_all(html.as_bytes())?;
        f.sync_data()
    })();
    written.map_err(|e| {
        fail(
            Kind::Output,
            format!(
                "cannot write report {}: {}",
                args.output.display(),
                crate::paths::describe(&e, &args.output)
            ),
        )
    })?;
    crate::say!(
        "wrote {} ({} KiB)",
        args.output.display(),
        html.len().div_ceil(1024)
    );
    Ok(())
}

/// The report must not be one of its inputs, whatever the spelling.
fn check_args(args: &ReportArgs) -> anyhow::Result<()> {
    use crate::paths::{Named, Use};
    let dir = crate::paths::parent(&args.output);
    if !dir.is_dir() {
        return Err(fail(
            Kind::Output,
            format!(
                "cannot write report {}: directory {} does not exist",
                args.output.display(),
                dir.display()
            ),
        ));
    }
    let mut items: Vec<Named> = args
        .events
        .iter()
        .map(|p| Named::new(format!("events log {}", p.display()), p, Use::Input))
        .collect();
    let videos: Vec<PathBuf> = args
        .video
        .iter()
        .map(|v| PathBuf::from(v.split_once('=').map_or(v.as_str(), |(_, p)| p)))
        .collect();
    for (v, p) in args.video.iter().zip(&videos) {
        items.push(Named::new(format!("video {v}"), p, Use::Input));
        if v.contains('=') {
            // `a=b.mp4` may also be a file of that name.
            items.push(Named::new(format!("video {v}"), Path::new(v), Use::Input));
        }
    }
    items.push(Named::new("the report", &args.output, Use::Output));
    crate::paths::check_distinct(&items).map_err(|e| fail(Kind::Config, e))
}

fn build(args: &ReportArgs) -> anyhow::Result<String> {
    let mut logs = read_logs(&args.events)?;
    let names: Vec<String> = args.events.iter().map(|p| p.display().to_string()).collect();
    if logs.tracks.is_empty() {
        return Err(fail(
            Kind::Input,
            format!(
                "no gradcamd event line in {}{}; name the file a source's `events` setting wrote",
                names.join(", "),
                match &logs.first_bad {
                    Some((p, n)) => format!(" (line {n} of {} is not one)", p.display()),
                    None => " (it is empty)".into(),
                }
            ),
        ));
    }
    if let Some((p, n)) = &logs.first_bad {
        tracing::warn!(
            "{} line(s) of the events are not gradcamd event lines and were skipped; the first is line {n} of {}",
            logs.bad,
            p.display()
        );
    }
    let videos = videos_by_source(&args.video, &logs.tracks)?;
    let report_dir = crate::paths::parent(&args.output).to_path_buf();
    let mut links: HashMap<String, String> = HashMap::new();
    for (name, path) in &videos {
        links.insert(name.clone(), href_to(&report_dir, path));
        // The recording is of the source's last run in the logs (a file is rewritten per run).
        if let Some(t) = logs.tracks.iter_mut().rev().find(|t| &t.name == name) {
            thumbnails(t, path, args.max_thumbnails)?;
        }
    }
    Ok(render(&logs, &names, &links, &videos))
}

#[cfg(feature = "video")]
fn thumbnails(t: &mut Track, video: &Path, max: usize) -> anyhow::Result<()> {
    use opencv::core::{Mat, Size, Vector};
    use opencv::prelude::*;
    use opencv::videoio::{VideoCapture, CAP_ANY, CAP_PROP_FPS};
    let bad = |why: String| {
        fail(
            Kind::Input,
            format!("cannot read video {}: {why}", video.display()),
        )
    };
    if !video.is_file() {
        return Err(bad(if video.exists() {
            "it is not a regular file".into()
        } else {
            "no such file".into()
        }));
    }
    let mut cap = VideoCapture::from_file(video, CAP_ANY).map_err(|e| bad(e.to_string()))?;
    if !cap.is_opened().unwrap_or(false) {
        return Err(bad("OpenCV cannot open it as a video".into()));
    }
    let fps = cap.get(CAP_PROP_FPS).unwrap_or(0.0);
    if !(fps.is_finite() && fps > 0.0) {
        return Err(bad("it reports no frame rate".into()));
    }
    // Frame index of each wanted alert, in order.
    let mut wanted: Vec<(u64, usize)> = t
        .alerts
        .iter()
        .enumerate()
        .take(max)
        .map(|(i, a)| ((a.t0 * fps).round() as u64, i))
        .collect();
    wanted.sort_unstable();
    let mut frame = Mat::default();
    let mut small = Mat::default();
    let mut at = 0u64;
    let mut read_any = false;
    for (idx, i) in wanted {
        while at <= idx {
            if !cap.grab().unwrap_or(false) {
                break;
            }
            read_any = true;
            at += 1;
        }
        if at != idx + 1 {
            tracing::warn!(
                video = %video.display(),
                frames = at,
                "the recording ends before an alert of source '{}' (frame {idx}); is it the recording of this run?",
                t.name
            );
            break;
        }
        if !cap.retrieve(&mut frame, 0).unwrap_or(false) || frame.empty() {
            continue;
        }
        let (w, h) = (frame.cols(), frame.rows());
        let size = Size::new(THUMB_WIDTH.min(w), (h * THUMB_WIDTH.min(w) / w.max(1)).max(1));
        let encoded =
            opencv::imgproc::resize(&frame, &mut small, size, 0.0, 0.0, opencv::imgproc::INTER_AREA)
                .and_then(|()| {
                    let mut jpg = Vector::<u8>::new();
                    let params = Vector::from_slice(&[opencv::imgcodecs::IMWRITE_JPEG_QUALITY, 82]);
                    opencv::imgcodecs::imencode(".jpg", &small, &mut jpg, &params)?;
                    Ok(jpg.to_vec())
                });
        if let (Ok(jpg), Some(a)) = (encoded, t.alerts.get_mut(i)) {
            a.thumb = Some(base64(&jpg));
        }
    }
    if !read_any && !t.alerts.is_empty() {
        return Err(bad("no frame decodes".into()));
    }
    Ok(())
}

#[cfg(not(feature = "video"))]
fn thumbnails(_: &mut Track, video: &Path, _: usize) -> anyhow::Result<()> {
    Err(fail(
        Kind::Config,
        format!(
            "--video {}: this gradcamd was built without the `video` feature (OpenCV), which reads recordings",
            video.display()
        ),
    ))
}

/// Standard base64 with padding (RFC 4648), for inline images.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A link from the report's directory to `target`: relative when they share a root, so the
/// pair can be moved together; percent-encoded.
fn href_to(from_dir: &Path, target: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).ok();
    let rel = match (abs(from_dir), abs(target)) {
        (Some(d), Some(t)) => {
            let (dc, tc): (Vec<_>, Vec<_>) = (d.components().collect(), t.components().collect());
            let common = dc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
            let mut p = PathBuf::new();
            for _ in common..dc.len() {
                p.push("..");
            }
            for c in &tc[common..] {
                p.push(c);
            }
            p
        }
        _ => target.to_path_buf(),
    };
    let mut out = String::new();
    for b in rel.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// `m:ss.s` or `h:mm:ss`.
fn clock(secs: f64, tenths: bool) -> String {
    let s = secs.max(0.0);
    let whole = s.floor() as u64;
    let (h, m, sec) = (whole / 3600, whole / 60 % 60, whole % 60);
    let frac = if tenths {
        format!(".{}", ((s - s.floor()) * 10.0).floor() as u64 % 10)
    } else {
        String::new()
    };
    if h > 0 {
        format!("{h}:{m:02}:{sec:02}{frac}")
    } else {
        format!("{m}:{sec:02}{frac}")
    }
}

fn fig(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

// The timeline's geometry, in SVG user units (= CSS px).
const SVG_W: f64 = 1100.0;
const PLOT_X0: f64 = 120.0;
const PLOT_X1: f64 = 1080.0;
const TRACK_H: f64 = 64.0;
const TRACK_GAP: f64 = 16.0;
const TOP: f64 = 18.0;
const AXIS_H: f64 = 26.0;

struct Axis {
    t1: f64,
}

impl Axis {
    fn x(&self, t: f64) -> f64 {
        PLOT_X0 + (t / self.t1).clamp(0.0, 1.0) * (PLOT_X1 - PLOT_X0)
    }
}

/// One horizontal band of the timeline.
struct Band {
    key: &'static str,
    title: &'static str,
    lo: f64,
    hi: f64,
    y0: f64,
}

impl Band {
    fn y(&self, v: f64) -> f64 {
        self.y0 + TRACK_H - ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0) * TRACK_H
    }
}

fn polyline(out: &mut String, s: &Series, ax: &Axis, band: &Band, class: &str) {
    // A gap (a stream that was down, a stretch without lines) breaks the line.
    let gap = (4.0 * s.width).max(5.0);
    let mut prev: Option<f64> = None;
    let mut pts = String::new();
    let flush = |out: &mut String, pts: &mut String| {
        if !pts.is_empty() {
            let _ = write!(out, "<polyline class=\"{class}\" points=\"{}\"/>", pts.trim_end());
            pts.clear();
        }
    };
    for p in &s.points {
        if prev.is_some_and(|t| p[0] - t > gap) {
            flush(out, &mut pts);
        }
        prev = Some(p[0]);
        let x = ax.x(p[0]);
        let _ = write!(pts, "{x:.1},{:.1} ", band.y(p[1]));
        if p[2] != p[1] {
            let _ = write!(pts, "{x:.1},{:.1} ", band.y(p[2]));
        }
    }
    flush(out, &mut pts);
}

fn timeline(out: &mut String, t: &Track) {
    let ax = Axis {
        t1: if t.end > 0.0 { t.end } else { 1.0 },
    };
    let mut bands: Vec<Band> = Vec::new();
    let mut y = TOP;
    let mut band = |key, title, lo, hi| {
        bands.push(Band {
            key,
            title,
            lo,
            hi,
            y0: y,
        });
        y += TRACK_H + TRACK_GAP;
    };
    band("score", "score", 0.0, 1.0);
    if t.has_roi {
        band("outside_roi", "outside ROI", 0.0, 1.0);
    }
    if t.has_drift {
        band("drift", "drift", 0.0, 1.0);
    }
    if !t.cam_mult.is_empty() || !t.deletion.is_empty() {
        band("faithfulness", "faithfulness", -1.0, 1.0);
    }
    let plot_bottom = y - TRACK_GAP;
    let height = plot_bottom + AXIS_H;
    let _ = write!(
        out,
        "<svg class=\"timeline\" data-source=\"{}\" data-t0=\"0\" data-t1=\"{:.3}\" data-x0=\"{PLOT_X0}\" data-x1=\"{PLOT_X1}\" viewBox=\"0 0 {SVG_W} {height}\" width=\"{SVG_W}\" height=\"{height}\" role=\"img\" aria-label=\"timeline of {}\">",
        esc(&t.id()),
        ax.t1,
        esc(&t.id())
    );
    // Bands' frames and scales first, the alerts over them, the curves on top.
    for b in &bands {
        let _ = write!(
            out,
            "<g class=\"band\" data-track=\"{}\"><rect class=\"frame\" x=\"{PLOT_X0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{TRACK_H}\"/><text class=\"name\" x=\"{:.1}\" y=\"{:.1}\">{}</text><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\">{}</text><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            b.key,
            b.y0,
            PLOT_X1 - PLOT_X0,
            PLOT_X0 - 42.0,
            b.y0 + TRACK_H / 2.0 + 4.0,
            b.title,
            PLOT_X0 - 6.0,
            b.y0 + 9.0,
            b.hi,
            PLOT_X0 - 6.0,
            b.y0 + TRACK_H,
            b.lo
        );
        if b.lo < 0.0 {
            let _ = write!(
                out,
                "<line class=\"zero\" x1=\"{PLOT_X0}\" x2=\"{PLOT_X1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
                b.y(0.0),
                b.y(0.0)
            );
        }
        out.push_str("</g>");
    }
    for (kind, ivs) in [AlertKind::Roi, AlertKind::Drift].into_iter().zip(&t.intervals) {
        // Alerts closer than a pixel are one band (a run of weeks may hold thousands).
        let mut i = 0;
        while i < ivs.len() {
            let (t0, mut t1, seq) = ivs[i];
            let mut j = i + 1;
            while j < ivs.len() && ax.x(ivs[j].0) <= ax.x(t1).max(ax.x(t0) + 2.0) + 1.0 {
                t1 = t1.max(ivs[j].1);
                j += 1;
            }
            let (x0, x1) = (ax.x(t0), ax.x(t1));
            let count = j - i;
            let title = if count > 1 {
                format!(
                    "{count} alerts ({}) {}–{}",
                    kind.words(),
                    clock(t0, true),
                    clock(t1, true)
                )
            } else {
                format!("{} {}–{}", kind.words(), clock(t0, true), clock(t1, true))
            };
            let _ = write!(
                out,
                "<rect class=\"alert {}\" data-t0=\"{t0:.3}\" data-t1=\"{t1:.3}\" data-seq=\"{seq}\" data-count=\"{count}\" x=\"{x0:.2}\" y=\"{TOP}\" width=\"{:.2}\" height=\"{:.1}\"><title>{title}</title></rect>",
                kind.class(),
                (x1 - x0).max(2.0),
                plot_bottom - TOP,
            );
            i = j;
        }
    }
    for b in &bands {
        match b.key {
            "score" => {
                polyline(out, &t.score, &ax, b, "score");
                let mut last_x = f64::NEG_INFINITY;
                for (time, seq, _, to) in &t.label_changes {
                    let x = ax.x(*time);
                    let _ = write!(
                        out,
                        "<line class=\"label-change\" data-t=\"{time:.3}\" data-seq=\"{seq}\" x1=\"{x:.2}\" x2=\"{x:.2}\" y1=\"{:.1}\" y2=\"{:.1}\"><title>{} → {}</title></line>",
                        b.y0,
                        b.y0 + TRACK_H,
                        clock(*time, true),
                        esc(to)
                    );
                    // Names only where they do not overlap the previous one.
                    if x - last_x > 90.0 {
                        let name: String = to.chars().take(16).collect();
                        let _ = write!(
                            out,
                            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                            x + 2.0,
                            b.y0 - 3.0,
                            esc(&name)
                        );
                        last_x = x;
                    }
                }
            }
            "outside_roi" => polyline(out, &t.outside, &ax, b, "outside"),
            "drift" => polyline(out, &t.drift, &ax, b, "drift"),
            _ => {
                polyline(out, &t.cam_mult, &ax, b, "cam-mult");
                polyline(out, &t.deletion, &ax, b, "deletion");
                if t.faith_points.len() <= 400 {
                    for (time, c, d) in &t.faith_points {
                        let x = ax.x(*time);
                        let _ = write!(
                            out,
                            "<circle class=\"cam-mult\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"2.5\"/><circle class=\"deletion\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"2.5\"/>",
                            b.y(*c as f64),
                            b.y(*d as f64)
                        );
                    }
                }
            }
        }
    }
    // The time axis: a tick every 1, 2 or 5 x 10^k seconds, about 10 of them.
    let step = tick_step(ax.t1);
    let mut k = 0.0;
    while k * step <= ax.t1 + 1e-9 {
        let tt = k * step;
        let x = ax.x(tt);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{plot_bottom:.1}\"/><text class=\"time\" x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
            plot_bottom + 16.0,
            clock(tt, step < 1.0)
        );
        k += 1.0;
    }
    out.push_str("</svg>");
}

/// About ten ticks over `span` seconds: 1, 2 or 5 × 10^k under a minute, then the clock's own
/// steps (a minute, 5, 15, 30, an hour, 2, 3, 6, 12, a day, …).
fn tick_step(span: f64) -> f64 {
    let raw = span / 10.0;
    if raw <= 30.0 {
        let mag = 10f64.powf(raw.log10().floor());
        return [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag)
            .max(0.1);
    }
    const CLOCK: [f64; 12] = [
        60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0,
    ];
    CLOCK
        .iter()
        .copied()
        .find(|s| *s >= raw)
        .unwrap_or_else(|| (raw / 86400.0).ceil() * 86400.0)
}

fn facts(out: &mut String, t: &Track) {
    let s = |k: &str| t.stats.get(k).copied().unwrap_or_default();
    let mut labels: Vec<(&String, &u64)> = t.labels.iter().collect();
    labels.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = labels
        .iter()
        .take(5)
        .map(|(l, n)| {
            format!(
                "{} {:.0}%",
                esc(if l.is_empty() { "(none)" } else { l }),
                100.0 * **n as f64 / t.lines.max(1) as f64
            )
        })
        .collect();
    let frames = t.last_seq.saturating_sub(t.first_seq) + 1;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "run",
            format!(
                "{} → {}",
                crate::clock::utc_string(t.first_ts),
                crate::clock::utc_string(t.last_ts)
            ),
        ),
        (
            "source time",
            format!("{} (frames {}–{})", clock(t.end, true), t.first_seq, t.last_seq),
        ),
        ("event lines", format!("{} for {frames} frames", t.lines)),
        ("labels", top.join(", ")),
        (
            "score",
            format!(
                "mean {}, min {}",
                fig(s("score").mean(), 3),
                fig((s("score").n > 0).then_some(s("score").min), 3)
            ),
        ),
    ];
    if t.has_roi {
        let o = s("outside_roi");
        rows.push((
            "outside ROI",
            format!(
                "mean {}, max {}",
                fig(o.mean(), 3),
                fig((o.n > 0).then_some(o.max), 3)
            ),
        ));
        rows.push((
            "ROI alerts",
            format!("{}, {} in all", t.alerts_total[0], clock(t.alert_secs[0], true)),
        ));
    }
    if t.has_drift {
        let d = s("drift");
        rows.push((
            "drift",
            format!(
                "mean {}, max {}",
                fig(d.mean(), 3),
                fig((d.n > 0).then_some(d.max), 3)
            ),
        ));
        rows.push((
            "drift alerts",
            format!("{}, {} in all", t.alerts_total[1], clock(t.alert_secs[1], true)),
        ));
    }
    let (c, d) = (s("faith_cam_mult"), s("faith_deletion"));
    if c.n > 0 || d.n > 0 {
        rows.push((
            "faithfulness",
            format!(
                "{} samples; confidence change on the frame × CAM: mean {}; with its hottest tenth deleted: mean {}",
                c.n.max(d.n),
                fig(c.mean(), 3),
                fig(d.mean(), 3)
            ),
        ));
    }
    rows.push((
        "attention",
        format!(
            "entropy {}, concentration {}, stability {} (means)",
            fig(s("entropy").mean(), 3),
            fig(s("concentration").mean(), 3),
            fig(s("stability").mean(), 3)
        ),
    ));
    rows.push(("label changes", t.label_changes_total.to_string()));
    out.push_str("<table class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    out.push_str("</table>");
}

fn alerts_list(out: &mut String, t: &Track, link: Option<&str>) {
    let total = t.alerts_total[0] + t.alerts_total[1];
    let _ = write!(out, "<h3>Alerts ({total})</h3>");
    if t.alerts.is_empty() {
        out.push_str("<p class=\"none\">No alert.</p>");
        return;
    }
    if link.is_none() {
        out.push_str("<p class=\"hint\">Give the explained recording (<code>--video</code>) to see each alert's first frame and to link to it.</p>");
    }
    out.push_str("<ol class=\"alerts\">");
    for a in &t.alerts {
        let when = format!("{}–{}", clock(a.t0, true), clock(a.t1, true));
        let _ = write!(
            out,
            "<li class=\"alert {}\" data-t0=\"{:.3}\" data-seq=\"{}\">",
            a.kind.class(),
            a.t0,
            a.seq
        );
        if let Some(thumb) = &a.thumb {
            let _ = write!(
                out,
                "<img class=\"thumb\" alt=\"frame {} of {}\" src=\"data:image/jpeg;base64,{thumb}\">",
                a.seq,
                esc(&t.name)
            );
        }
        let _ = write!(out, "<div><b>{}</b> ", a.kind.words());
        match link {
            Some(h) => {
                let _ = write!(out, "<a class=\"at\" href=\"{h}#t={:.3}\">{when}</a>", a.t0);
            }
            None => out.push_str(&when),
        }
        let value = a.value.map_or(String::new(), |v| match a.kind {
            AlertKind::Roi => format!(", {:.0}% outside the ROI", 100.0 * v),
            AlertKind::Drift => format!(", divergence {v:.3}"),
        });
        let _ = write!(
            out,
            "<br>frame {}, {}{value}{}</div></li>",
            a.seq,
            esc(if a.label.is_empty() {
                "(not explained)"
            } else {
                &a.label
            }),
            if a.open { "; still on at the end" } else { "" }
        );
    }
    out.push_str("</ol>");
    let listed = t.alerts.len() as u64;
    if total > listed {
        let _ = write!(
            out,
            "<p class=\"hint\">and {} more, not listed.</p>",
            total - listed
        );
    }
}

fn label_changes(out: &mut String, t: &Track) {
    let _ = write!(out, "<h3>Label changes ({})</h3>", t.label_changes_total);
    if t.label_changes.is_empty() {
        return;
    }
    out.push_str("<table class=\"labels\"><tr><th>time</th><th>frame</th><th>from</th><th>to</th></tr>");
    for (time, seq, from, to) in &t.label_changes {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{seq}</td><td>{}</td><td>{}</td></tr>",
            clock(*time, true),
            esc(from),
            esc(to)
        );
    }
    out.push_str("</table>");
    let listed = t.label_changes.len() as u64;
    if t.label_changes_total > listed {
        let _ = write!(
            out,
            "<p class=\"hint\">and {} more, not listed.</p>",
            t.label_changes_total - listed
        );
    }
}

const STYLE: &str = "body{font:14px/1.4 sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.5em;margin:0 0 .2em}h2{margin:1.6em 0 .4em;border-bottom:1px solid #ccc}\
h3{font-size:1.05em;margin:1em 0 .4em}table{border-collapse:collapse}\
td,th{padding:.15em .7em;text-align:left;vertical-align:top;border-bottom:1px solid #e4e4e4}\
table.facts th{font-weight:600;white-space:nowrap;color:#555}.hint,.none,.meta{color:#666}\
svg.timeline{display:block;background:#fff;border:1px solid #ddd;margin:.6em 0}\
svg .frame{fill:#f6f6f6;stroke:#ccc}svg .name{font:12px sans-serif;fill:#333;text-anchor:middle}\
svg .tick{font:10px sans-serif;fill:#888;text-anchor:end}svg .time{font:10px sans-serif;fill:#666;text-anchor:middle}\
svg .grid{stroke:#eee}svg .zero{stroke:#bbb;stroke-dasharray:3 3}\
svg polyline{fill:none;stroke-width:1.3}svg .score{stroke:#1f5fbf}svg .outside{stroke:#e07b00}\
svg polyline.drift{stroke:#7a3fbf}svg .cam-mult{stroke:#1a9c55}svg .deletion{stroke:#c0392b}\
svg circle.cam-mult{fill:#1a9c55}svg circle.deletion{fill:#c0392b}\
svg rect.alert.roi{fill:rgba(230,60,40,.16)}svg rect.alert.drift{fill:rgba(120,60,220,.16)}\
svg .label-change{stroke:#999;stroke-dasharray:2 2}svg .label{font:10px sans-serif;fill:#555}\
ol.alerts{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.8em}\
ol.alerts li{background:#fff;border:1px solid #ddd;border-left:4px solid #e63c28;padding:.4em;width:330px}\
ol.alerts li.drift{border-left-color:#783cdc}ol.alerts img{display:block;width:320px;margin-bottom:.3em}\
.key span{display:inline-block;margin-right:1.2em}.key i{display:inline-block;width:1.6em;height:.7em;margin-right:.3em;vertical-align:middle}";

fn render(
    logs: &Logs,
    inputs: &[String],
    links: &HashMap<String, String>,
    videos: &HashMap<String, PathBuf>,
) -> String {
    let mut out = String::new();
    let n = logs.tracks.len();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><meta name=\"generator\" content=\"gradcamd {}\"><title>gradcamd report: {}</title><style>{STYLE}</style></head><body>",
        env!("CARGO_PKG_VERSION"),
        esc(&logs
            .tracks
            .iter()
            .map(|t| t.id())
            .collect::<Vec<_>>()
            .join(", "))
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = write!(
        out,
        "<h1>Where the model looked: review report</h1><p class=\"meta\">{} event lines of {} run(s) from {}; written {} by gradcamd {}.{}</p>",
        logs.lines,
        n,
        esc(&inputs.join(", ")),
        crate::clock::utc_string(now),
        env!("CARGO_PKG_VERSION"),
        if logs.bad > 0 {
            format!(" {} line(s) that are not gradcamd events were skipped.", logs.bad)
        } else {
            String::new()
        }
    );
    out.push_str("<p class=\"key\"><span><i style=\"background:#1f5fbf\"></i>score</span><span><i style=\"background:#e07b00\"></i>share of attention outside the ROI</span><span><i style=\"background:#7a3fbf\"></i>drift (Jensen–Shannon divergence from the baseline)</span><span><i style=\"background:#1a9c55\"></i>confidence change on frame × CAM</span><span><i style=\"background:#c0392b\"></i>… with the CAM's hottest tenth deleted</span><span><i style=\"background:rgba(230,60,40,.3)\"></i>ROI alert</span><span><i style=\"background:rgba(120,60,220,.3)\"></i>drift alert</span></p>");
    // The summary: one row per source run.
    out.push_str("<table class=\"summary\"><tr><th>source</th><th>started</th><th>source time</th><th>frames</th><th>main label</th><th>mean score</th><th>ROI alerts</th><th>drift alerts</th><th>faithfulness (deletion)</th></tr>");
    for (i, t) in logs.tracks.iter().enumerate() {
        let main = t
            .labels
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map_or("", |(l, _)| l.as_str());
        let s = |k: &str| t.stats.get(k).and_then(|s| s.mean());
        let _ = write!(
            out,
            "<tr><td><a href=\"#source-{i}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.id()),
            crate::clock::utc_string(t.first_ts),
            clock(t.end, true),
            t.last_seq.saturating_sub(t.first_seq) + 1,
            esc(main),
            fig(s("score"), 3),
            if t.has_roi { t.alerts_total[0].to_string() } else { "–".into() },
            if t.has_drift { t.alerts_total[1].to_string() } else { "–".into() },
            fig(s("faith_deletion"), 3)
        );
    }
    out.push_str("</table>");
    for (i, t) in logs.tracks.iter().enumerate() {
        let last_run = logs.tracks[i + 1..].iter().all(|u| u.name != t.name);
        let link = links.get(&t.name).filter(|_| last_run).map(String::as_str);
        let _ = write!(
            out,
            "<section class=\"source\" id=\"source-{i}\" data-source=\"{}\" data-run=\"{}\"><h2>{}</h2>",
            esc(&t.name),
            t.run,
            esc(&t.id())
        );
        if let (Some(v), Some(h)) = (videos.get(&t.name).filter(|_| last_run), link) {
            let _ = write!(
                out,
                "<p class=\"meta\">Recording: <a href=\"{h}\">{}</a> (the links below open it at the alert's time)</p>",
                esc(&v.display().to_string())
            );
        }
        timeline(&mut out, t);
        facts(&mut out, t);
        alerts_list(&mut out, t, link);
        label_changes(&mut out, t);
        out.push_str("</section>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (i, o) in cases {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn a_series_keeps_few_points_and_every_extreme() {
        let mut s = Series::default();
        for i in 0..100_000 {
            let v = if i == 77_777 { 5.0 } else { (i % 10) as f64 / 10.0 };
            s.add(i as f64 * 0.01, v);
        }
        assert!(
            s.points.len() <= 2 * KEEP && s.points.len() >= KEEP / 2,
            "{}",
            s.points.len()
        );
        let max = s.points.iter().map(|p| p[2]).fold(f64::MIN, f64::max);
        let min = s.points.iter().map(|p| p[1]).fold(f64::MAX, f64::min);
        assert_eq!((min, max), (0.0, 5.0));
        // In time order, and spanning the whole run.
        assert!(s.points.windows(2).all(|w| w[0][0] < w[1][0]));
        assert_eq!(s.points[0][0], 0.0);
        assert!(s.points.last().unwrap()[0] > 999.0 - 2.0 * s.width);
    }

    fn lines(text: &str) -> Vec<(Option<bool>, String)> {
        let mut r = std::io::BufReader::with_capacity(7, text.as_bytes());
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(whole) = read_line_capped(&mut r, &mut buf).unwrap() {
            out.push((Some(whole), String::from_utf8_lossy(&buf).into_owned()));
        }
        out
    }

    #[test]
    fn lines_are_read_whole_or_skipped_when_too_long() {
        let long = "x".repeat(MAX_LINE + 1);
        let text = format!("ab\n{long}\ncd\nlast");
        let got = lines(&text);
        assert_eq!(
            got,
            [
                (Some(true), "ab".to_string()),
                (Some(false), String::new()),
                (Some(true), "cd".to_string()),
                (Some(true), "last".to_string())
            ]
        );
    }

    fn track_of(text: &str) -> Vec<Track> {
        let dir = crate::paths::private_temp_dir("report-test").unwrap();
        let p = dir.join("e.jsonl");
        std::fs::write(&p, text).unwrap();
        let logs = read_logs(&[p]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        logs.tracks
    }

    fn ev(seq: u64, label: &str, alerting: bool) -> String {
        format!(
            "{{\"ts\":1795670520.0,\"source\":\"cam\",\"seq\":{seq},\"pts_ms\":{},\"label\":\"{label}\",\"prob\":0.5,\"outside_roi\":0.7,\"alerting\":{alerting}}}\n",
            1000.0 + seq as f64 * 100.0
        )
    }

    #[test]
    fn alerts_and_label_changes_are_exact_and_runs_split() {
        let mut text = String::new();
        for s in 0..10 {
            text += &ev(s, if s < 4 { "cat" } else { "dog" }, (3..6).contains(&s));
        }
        text += "{\"ts\":1,\"source\":\"cam\",\"seq\":5,\"pts_ms\":1500,\"label\":\"dog\",\"faithfulness\":{\"class\":1,\"confidence\":0.5,\"cam_mult\":-0.2,\"deletion\":-0.4}}\n";
        text += "not json\n";
        // A second run: frames from 0 again, alert on at its end.
        text += &ev(0, "cat", false);
        text += &ev(1, "cat", true);
        let t = track_of(&text);
        assert_eq!(t.len(), 2);
        let a = &t[0];
        assert_eq!((a.lines, a.run, a.end), (10, 1, 0.9));
        assert_eq!(a.alerts.len(), 1);
        let al = &a.alerts[0];
        assert_eq!((al.seq, al.open), (3, false));
        assert!((al.t0 - 0.3).abs() < 1e-9 && (al.t1 - 0.6).abs() < 1e-9, "{al:?}");
        assert_eq!(a.label_changes.len(), 1);
        assert_eq!(a.label_changes[0].1, 4);
        assert_eq!(a.faith_points, [(0.5, -0.2, -0.4)]);
        let b = &t[1];
        assert_eq!((b.run, b.lines, b.id()), (2, 2, "cam (run 2)".to_string()));
        assert!(b.alerts[0].open && b.alerts[0].t1 == 0.1);
    }

    #[test]
    fn a_run_whose_first_line_is_not_frame_0_keeps_the_recordings_time() {
        // Frames 0..9 were not explained (a camera still connecting): the recording starts
        // with them, so frame 10 is at 1 s (100 ms a frame), and so is its alert.
        let text: String = (10..14).map(|s| ev(s, "cat", s >= 12)).collect();
        let t = &track_of(&text)[0];
        assert_eq!(t.frame_ms, Some(100.0));
        assert!((t.score.points[0][0] - 1.0).abs() < 1e-9, "{:?}", t.score.points);
        assert!((t.alerts[0].t0 - 1.2).abs() < 1e-9 && (t.end - 1.3).abs() < 1e-9);
    }

    #[test]
    fn every_alert_is_shaded_however_many_and_those_closer_than_a_pixel_share_a_band() {
        // 500 one-frame alerts 0.2 s apart, then, after a long quiet stretch, one more.
        let mut text = String::new();
        for s in 0..1000u64 {
            text += &ev(s, "cat", s % 2 == 1);
        }
        for s in 1000..3000u64 {
            text += &ev(s, "cat", s == 2900);
        }
        let logs = Logs {
            tracks: track_of(&text),
            lines: 3000,
            bad: 0,
            first_bad: None,
        };
        let t = &logs.tracks[0];
        assert_eq!((t.alerts_total[0], t.alerts.len()), (501, MAX_LISTED));
        let html = render(&logs, &["e.jsonl".into()], &HashMap::new(), &HashMap::new());
        let counts: Vec<u64> = html
            .split("data-count=\"")
            .skip(1)
            .map(|r| r.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts, [500, 1], "{counts:?}");
        assert!(html.contains("and 301 more, not listed."));
        // The time shaded: 501 frames of 0.1 s.
        assert!((t.alert_secs[0] - 50.1).abs() < 1e-6, "{}", t.alert_secs[0]);
    }

    #[test]
    fn html_escapes_what_the_logs_say() {
        let t = track_of(&ev(0, "<script>alert(1)</script>", false));
        let logs = Logs {
            tracks: t,
            lines: 1,
            bad: 0,
            first_bad: None,
        };
        let html = render(&logs, &["e.jsonl".into()], &HashMap::new(), &HashMap::new());
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn links_are_relative_and_encoded() {
        let dir = crate::paths::private_temp_dir("report-link").unwrap();
        std::fs::create_dir_all(dir.join("r")).unwrap();
        std::fs::write(dir.join("my video#1.mp4"), b"x").unwrap();
        assert_eq!(
            href_to(&dir.join("r"), &dir.join("my video#1.mp4")),
            "../my%20video%231.mp4"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ticks_fall_on_round_times() {
        assert_eq!(tick_step(14.0), 2.0);
        assert_eq!(tick_step(3.9), 0.5);
        assert_eq!(tick_step(62_509.0), 7200.0);
        assert_eq!(tick_step(14.0 * 86400.0), 2.0 * 86400.0);
    }

    #[test]
    fn clock_reads_like_a_player() {
        assert_eq!(clock(65.25, true), "1:05.2");
        assert_eq!(clock(3725.0, false), "1:02:05");
    }
}
