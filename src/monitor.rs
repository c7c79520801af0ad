//! Per-source monitoring, applied in frame order by the inference stage: temporal smoothing of
//! the CAM, the share of attention outside a region of interest with its alert, the attention
//! signals and drift alarm of [`crate::attention`], and the JSON-lines event log (written by
//! [`crate::events`]).
//!
//! Everything here works on the CAM normalized to [0, 1] at feature resolution, sampled
//! bilinearly on a finer grid for the ROI share and the hot-region box, in frame-relative
//! coordinates (0..1), so results do not depend on the frame size.

use std::path::PathBuf;

use ndarray::Array2;
use serde::Serialize;

use crate::attention::{self, Drift, DriftConfig, DriftStep};
use crate::cam;
use crate::config::SourceConfig;
use crate::events::EventLog;
use crate::frame::ClassMap;
use crate::infer::faith::{Faith, Kind};

/// Settings of one source, from `[[source]]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct MonitorConfig {
    /// EMA weight of the previous map, 0 (off) ..< 1.
    pub smoothing: f32,
    /// Polygon in frame-relative coordinates.
    pub roi: Option<Vec<[f32; 2]>>,
    /// Alert when the share of attention outside the ROI exceeds this...
    pub roi_alert_ratio: f32,
    /// ...for this many consecutive frames.
    pub roi_alert_frames: u32,
    /// JSON-lines file.
    pub events: Option<PathBuf>,
    /// Write one event every N explained frames.
    pub events_every: u32,
    /// The hot region is where the normalized CAM is at least this.
    pub hot_threshold: f32,
    pub drift: DriftConfig,
}

impl From<&SourceConfig> for MonitorConfig {
    fn from(s: &SourceConfig) -> Self {
        MonitorConfig {
            smoothing: s.smoothing,
            roi: s.roi.clone(),
            roi_alert_ratio: s.roi_alert_ratio,
            roi_alert_frames: s.roi_alert_frames,
            events: s.events.clone(),
            events_every: s.events_every,
            hot_threshold: s.hot_threshold,
            drift: DriftConfig {
                baseline_frames: s.baseline_frames,
                baseline_file: s.baseline_file.clone(),
                threshold: s.drift_threshold,
                frames: s.drift_frames,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Event<'a> {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    pub source: &'a str,
    pub seq: u64,
    pub pts_ms: f64,
    pub class: usize,
    pub label: &'a str,
    pub prob: f32,
    pub score: f32,
    /// Peak and mass centroid of the CAM, [x, y] in 0..1.
    pub peak: [f32; 2],
    pub centroid: [f32; 2],
    /// Bounding box [x0, y0, x1, y1] of the hot region, 0..1.
    pub hot_bbox: Option<[f32; 4]>,
    /// Share of CAM mass outside the ROI (absent without a ROI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_roi: Option<f32>,
    /// True on the frame that starts an alert.
    pub alert: bool,
    /// An ROI alert is on after this frame (absent without a ROI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerting: Option<bool>,
    #[serde(flatten)]
    pub signals: Signals,
    /// Divergence from the attention baseline (absent without a drift watch, null while the
    /// baseline is learned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Option<f32>>,
    /// True on the frame that starts a drift alarm (absent without a drift watch)...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_alert: Option<bool>,
    /// ...and whether one is on after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_alerting: Option<bool>,
}

/// What one frame's map looks like, from [`crate::attention`]; none for a map without mass (and
/// stability for a source's first frame).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Signals {
    pub entropy: Option<f32>,
    pub concentration: Option<f32>,
    pub stability: Option<f32>,
}

pub(crate) struct Monitor {
    pub name: String,
    cfg: MonitorConfig,
    smoothed: Option<Array2<f32>>,
    /// Normalized map and its upsampled copy, reused from frame to frame.
    cur: Array2<f32>,
    fine: Array2<f32>,
    /// The previous explained frame's normalized map (before smoothing), for stability.
    prev: Option<Array2<f32>>,
    /// Scratch for concentration's selection.
    scratch: Vec<f32>,
    over: u32,
    alerting: bool,
    drift: Option<Drift>,
    /// Probe outcomes whose other half has not come yet: the two probes of a frame may ride
    /// in batches of different sessions, released in either order.
    faith_halves: Vec<Faith>,
    events: Option<EventLog>,
    explained: u64,
}

/// One frame's faithfulness: the explained class's confidence on the frame, and its change on
/// each probe (see [`crate::attention::probes_into`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct FaithRecord {
    pub class: usize,
    pub confidence: f32,
    /// Confidence on the frame times its CAM, minus on the frame (pytorch-grad-cam's
    /// `CamMultImageConfidenceChange`): near 0 or above for a map that kept what mattered.
    pub cam_mult: f32,
    /// Confidence with the hottest tenth deleted, minus on the frame: well below 0 for a map
    /// that found what mattered.
    pub deletion: f32,
}

#[derive(Serialize)]
struct FaithEvent<'a> {
    ts: f64,
    source: &'a str,
    /// The frame measured (its own line came before this one).
    seq: u64,
    pts_ms: f64,
    label: &'a str,
    faithfulness: FaithRecord,
}

/// What one frame's observation found.
pub(crate) struct Observation {
    pub outside_roi: Option<f32>,
    /// An alert started on this frame.
    pub alert: bool,
    /// An alert is on after this frame (it started here or earlier and has not ended).
    pub alerting: bool,
    /// The hot region's box, on the frames where an alert starts or ends.
    pub hot_bbox: Option<[f32; 4]>,
    pub signals: Signals,
    /// The drift watch's step (default without one).
    pub drift: DriftStep,
    /// The events log was found failed (disk full, I/O error) on this frame: said once, then
    /// the log is closed and the run ends with the output exit code. Its writer runs on its own
    /// thread, so this comes a frame or more after the line that failed.
    pub events_failed: Option<String>,
    /// The drift baseline, learned on this frame, could not be written to its file.
    pub baseline_failed: Option<String>,
}

/// Probe outcomes kept waiting for their other half.
const MAX_FAITH_HALVES: usize = 16;

/// Samples per feature cell for the ROI share and the hot box.
const UPSAMPLE: usize = 4;

impl Monitor {
    pub(crate) fn new(name: String, cfg: MonitorConfig) -> anyhow::Result<Monitor> {
        let drift = if cfg.drift.baseline_frames > 0 {
            let d = Drift::new(cfg.drift.clone())?;
            match &cfg.drift.baseline_file {
                Some(p) if d.loaded() => {
                    tracing::info!(source = %name, file = %p.display(), "attention baseline loaded")
                }
                Some(p) => attention::check_writable(p).map_err(|e| {
                    crate::error::fail(
                        crate::error::Kind::Output,
                        format!(
                            "cannot write attention baseline {}: {}",
                            p.display(),
                            crate::paths::describe(&e, p)
                        ),
                    )
                })?,
                None => {}
            }
            Some(d)
        } else {
            None
        };
        let events = match &cfg.events {
            Some(p) => Some(EventLog::open(p, &name)?),
            None => None,
        };
        Ok(Monitor {
            name,
            cfg,
            smoothed: None,
            cur: Array2::zeros((0, 0)),
            fine: Array2::zeros((0, 0)),
            prev: None,
            scratch: Vec::new(),
            over: 0,
            alerting: false,
            drift,
            faith_halves: Vec::new(),
            events,
            explained: 0,
        })
    }

    /// Smooths the first map in place and computes the frame's statistics and event.
    pub(crate) fn observe(
        &mut self,
        seq: u64,
        pts_ms: f64,
        maps: &mut [ClassMap],
        labels: &[String],
    ) -> Observation {
        let Some(m) = maps.first_mut() else {
            return Observation {
                outside_roi: None,
                alert: false,
                alerting: self.alerting,
                hot_bbox: None,
                signals: Signals::default(),
                drift: DriftStep {
                    alerting: self.drift.as_ref().is_some_and(Drift::alerting),
                    ..Default::default()
                },
                events_failed: None,
                baseline_failed: None,
            };
        };
        self.explained += 1;
        let cur = &mut self.cur;
        if cur.dim() == m.cam.dim() {
            cur.assign(&m.cam);
        } else {
            *cur = m.cam.clone();
        }
        cam::normalize(cur.view_mut());
        // The frame's own map, before smoothing: smoothing would make every frame look stable.
        let signals = Signals {
            entropy: attention::entropy(cur),
            concentration: attention::concentration_in(cur, &mut self.scratch),
            stability: self.prev.as_ref().and_then(|p| attention::stability(cur, p)),
        };
        match &mut self.prev {
            Some(p) if p.dim() == cur.dim() => p.assign(cur),
            p => *p = Some(cur.clone()),
        }
        let mut baseline_failed = None;
        let drift = match &mut self.drift {
            Some(d) => {
                let step = d.observe(cur);
                if step.learned {
                    match d.save(&self.name) {
                        Ok(Some(p)) => {
                            tracing::info!(source = %self.name, frames = self.cfg.drift.baseline_frames, file = %p.display(), "attention baseline learned and saved")
                        }
                        Ok(None) => {
                            tracing::info!(source = %self.name, frames = self.cfg.drift.baseline_frames, "attention baseline learned")
                        }
                        Err(e) => baseline_failed = Some(e),
                    }
                }
                if step.started {
                    tracing::warn!(source = %self.name, divergence = step.divergence.unwrap_or(0.0), frames = self.cfg.drift.frames, "attention drifted from its baseline");
                } else if step.ended {
                    tracing::info!(source = %self.name, divergence = step.divergence.unwrap_or(0.0), "attention back at its baseline");
                }
                Some(step)
            }
            None => None,
        };
        let s = self.cfg.smoothing;
        if s > 0.0 {
            match self.smoothed.as_mut().filter(|p| p.dim() == cur.dim()) {
                Some(prev) => {
                    ndarray::Zip::from(&mut *cur)
                        .and(&*prev)
                        .for_each(|c, &p| *c = p * s + *c * (1.0 - s));
                    prev.assign(cur);
                }
                None => self.smoothed = Some(cur.clone()),
            }
            m.cam.assign(cur);
        }
        let was_alerting = self.alerting;
        let every = self.cfg.events_every.max(1) as u64;
        let drift_changed = drift.is_some_and(|d| d.started || d.ended);
        let event_due = drift_changed || self.explained % every == 1 || every == 1;
        if self.cfg.roi.is_none() && !(self.events.is_some() && event_due) {
            // Nothing on the fine grid is asked for: skip the upsampling.
            return Observation {
                outside_roi: None,
                alert: false,
                alerting: false,
                hot_bbox: None,
                signals,
                drift: drift.unwrap_or_default(),
                events_failed: None,
                baseline_failed,
            };
        }
        upsample_into(cur, UPSAMPLE, &mut self.fine);
        let fine = &self.fine;
        let outside = self.cfg.roi.as_ref().map(|poly| outside_share(fine, poly));
        let mut alert = false;
        if let Some(o) = outside {
            if o > self.cfg.roi_alert_ratio {
                self.over += 1;
                if self.over >= self.cfg.roi_alert_frames.max(1) && !self.alerting {
                    self.alerting = true;
                    alert = true;
                    tracing::warn!(source = %self.name, outside_roi = o, frames = self.over, "attention left the region of interest");
                }
            } else {
                self.over = 0;
                self.alerting = false;
            }
        }
        let roi_changed = self.alerting != was_alerting;
        let mut events_failed = None;
        if let Some(log) = &self.events {
            if roi_changed || event_due {
                let label = labels.get(m.class).map_or("", |l| l.as_str());
                let ev = Event {
                    ts: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                    source: &self.name,
                    seq,
                    pts_ms,
                    class: m.class,
                    label,
                    prob: m.prob,
                    score: m.score,
                    peak: peak(fine),
                    centroid: centroid(fine),
                    hot_bbox: hot_bbox(fine, self.cfg.hot_threshold),
                    outside_roi: outside,
                    alert,
                    alerting: outside.map(|_| self.alerting),
                    signals,
                    drift: drift.map(|d| d.divergence),
                    drift_alert: drift.map(|d| d.started),
                    drift_alerting: drift.map(|d| d.alerting),
                };
                if let Ok(line) = serde_json::to_string(&ev) {
                    log.send(seq, line);
                }
            }
            events_failed = log.take_failure();
        }
        if events_failed.is_some() {
            self.events = None;
        }
        Observation {
            outside_roi: outside,
            alert,
            alerting: self.alerting,
            hot_bbox: roi_changed
                .then(|| hot_bbox(fine, self.cfg.hot_threshold))
                .flatten(),
            signals,
            drift: drift.unwrap_or_default(),
            events_failed,
            baseline_failed,
        }
    }

    /// Takes one probe's outcome; once both of a frame's are in, returns its record and writes
    /// it to the events log (a line of its own, after the frame's).
    pub(crate) fn faithfulness(&mut self, f: &Faith, labels: &[String]) -> Option<FaithRecord> {
        let Some(k) = self
            .faith_halves
            .iter()
            .position(|h| h.seq == f.seq && h.kind != f.kind)
        else {
            // A half whose other was lost with a failed batch is dropped once enough newer
            // ones wait.
            if self.faith_halves.len() >= MAX_FAITH_HALVES {
                self.faith_halves.remove(0);
            }
            self.faith_halves.push(*f);
            return None;
        };
        let other = self.faith_halves.remove(k);
        let (m, d) = match f.kind {
            Kind::CamMult => (f.prob, other.prob),
            Kind::Deletion => (other.prob, f.prob),
        };
        let r = FaithRecord {
            class: f.class,
            confidence: f.base,
            cam_mult: m - f.base,
            deletion: d - f.base,
        };
        if let Some(log) = &self.events {
            let ev = FaithEvent {
                ts: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                source: &self.name,
                seq: f.seq,
                pts_ms: f.pts_ms,
                label: labels.get(f.class).map_or("", |l| l.as_str()),
                faithfulness: r,
            };
            if let Ok(line) = serde_json::to_string(&ev) {
                log.send(f.seq, line);
            }
        }
        Some(r)
    }

    /// Writes the events still queued and closes the log: its failure, if one is not yet
    /// reported by [`Monitor::observe`].
    pub(crate) fn close_log(&mut self) -> Option<String> {
        self.events.take().and_then(EventLog::close)
    }
}

/// Bilinear upsampling by `k`, sampling at cell centres (as OpenCV's INTER_LINEAR does).
#[cfg(test)]
fn upsample(m: &Array2<f32>, k: usize) -> Array2<f32> {
    let mut out = Array2::zeros((0, 0));
    upsample_into(m, k, &mut out);
    out
}

/// Bilinear upsampling by `k` into `out`, sampling at cell centres (as OpenCV's INTER_LINEAR
/// does), reusing its buffer when the size agrees.
pub(crate) fn upsample_into(m: &Array2<f32>, k: usize, out: &mut Array2<f32>) {
    let (h, w) = m.dim();
    let (hh, ww) = (h * k, w * k);
    if out.dim() != (hh, ww) {
        *out = Array2::zeros((hh, ww));
    }
    if h == 0 || w == 0 {
        return;
    }
    out.indexed_iter_mut().for_each(|((i, j), o)| {
        let y = ((i as f32 + 0.5) / k as f32 - 0.5).clamp(0.0, (h - 1) as f32);
        let x = ((j as f32 + 0.5) / k as f32 - 0.5).clamp(0.0, (w - 1) as f32);
        let (y0, x0) = (y.floor() as usize, x.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
        let (fy, fx) = (y - y0 as f32, x - x0 as f32);
        let top = m[[y0, x0]] * (1.0 - fx) + m[[y0, x1]] * fx;
        let bot = m[[y1, x0]] * (1.0 - fx) + m[[y1, x1]] * fx;
        *o = top * (1.0 - fy) + bot * fy;
    });
}

/// Even-odd rule point-in-polygon, frame-relative coordinates.
pub(crate) fn inside(poly: &[[f32; 2]], x: f32, y: f32) -> bool {
    let mut c = false;
    let n = poly.len();
    for i in 0..n {
        let [xi, yi] = poly[i];
        let [xj, yj] = poly[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            c = !c;
        }
    }
    c
}

/// Share of the map's mass whose sample centre lies outside the polygon.
pub(crate) fn outside_share(m: &Array2<f32>, poly: &[[f32; 2]]) -> f32 {
    let (h, w) = m.dim();
    let (mut total, mut out) = (0f64, 0f64);
    for ((i, j), &v) in m.indexed_iter() {
        let v = v.max(0.0) as f64;
        total += v;
        if !inside(poly, (j as f32 + 0.5) / w as f32, (i as f32 + 0.5) / h as f32) {
            out += v;
        }
    }
    if total > 0.0 {
        (out / total) as f32
    } else {
        0.0
    }
}

fn peak(m: &Array2<f32>) -> [f32; 2] {
    let (h, w) = m.dim();
    let (i, j) = cam::peak(m);
    [(j as f32 + 0.5) / w as f32, (i as f32 + 0.5) / h as f32]
}

fn centroid(m: &Array2<f32>) -> [f32; 2] {
    let (h, w) = m.dim();
    let (mut s, mut sx, mut sy) = (0f64, 0f64, 0f64);
    for ((i, j), &v) in m.indexed_iter() {
        let v = v.max(0.0) as f64;
        s += v;
        sx += v * (j as f64 + 0.5) / w as f64;
        sy += v * (i as f64 + 0.5) / h as f64;
    }
    if s > 0.0 {
        [(sx / s) as f32, (sy / s) as f32]
    } else {
        [0.5, 0.5]
    }
}

fn hot_bbox(m: &Array2<f32>, t: f32) -> Option<[f32; 4]> {
    let (h, w) = m.dim();
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for ((i, j), &v) in m.indexed_iter() {
        if v >= t {
            x0 = x0.min(j);
            y0 = y0.min(i);
            x1 = x1.max(j);
            y1 = y1.max(i);
        }
    }
    (x0 != usize::MAX).then(|| {
        [
            x0 as f32 / w as f32,
            y0 as f32 / h as f32,
            (x1 + 1) as f32 / w as f32,
            (y1 + 1) as f32 / h as f32,
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn polygon_and_outside_share() {
        let left_half = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]];
        assert!(inside(&left_half, 0.25, 0.5));
        assert!(!inside(&left_half, 0.75, 0.5));
        // all mass in the right column of a 2x2 map
        let m = array![[0.0f32, 1.0], [0.0, 3.0]];
        assert!((outside_share(&m, &left_half) - 1.0).abs() < 1e-6);
        let m = array![[1.0f32, 1.0], [1.0, 1.0]];
        assert!((outside_share(&m, &left_half) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn upsampling_keeps_values_and_box_and_centroid_follow_the_mass() {
        let m = array![[0.0f32, 0.0], [0.0, 1.0]];
        let u = upsample(&m, 4);
        assert_eq!(u.dim(), (8, 8));
        assert_eq!(u[[7, 7]], 1.0);
        assert_eq!(u[[0, 0]], 0.0);
        // u[i][j] = p[i] p[j] with p = [0, 0, 1/8, 3/8, 5/8, 7/8, 1, 1] (worked out by hand):
        // at least 0.5 from (4, 5), (5, 4) on; the centroid of p is 23.25 / 32 on each axis.
        assert_eq!(hot_bbox(&u, 0.5), Some([0.5, 0.5, 1.0, 1.0]));
        let c = centroid(&u);
        assert!(
            (c[0] - 23.25 / 32.0).abs() < 1e-6 && (c[1] - 23.25 / 32.0).abs() < 1e-6,
            "{c:?}"
        );
    }

    #[test]
    fn alert_fires_once_after_n_frames_outside() {
        let cfg = MonitorConfig {
            roi: Some(vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]),
            roi_alert_ratio: 0.5,
            roi_alert_frames: 3,
            ..Default::default()
        };
        let mut mon = Monitor::new("t".into(), cfg).unwrap();
        let right = ClassMap {
            class: 0,
            prob: 1.0,
            score: 1.0,
            cam: array![[0.0f32, 1.0], [0.0, 1.0]],
        };
        let left = ClassMap {
            class: 0,
            prob: 1.0,
            score: 1.0,
            cam: array![[1.0f32, 0.0], [1.0, 0.0]],
        };
        let alerts: Vec<bool> = (0..6)
            .map(|i| {
                let mut maps = vec![if i < 5 { right.clone() } else { left.clone() }];
                mon.observe(i, 0.0, &mut maps, &[]).alert
            })
            .collect();
        assert_eq!(alerts, [false, false, true, false, false, false]);
    }

    fn map(cam: Array2<f32>) -> ClassMap {
        ClassMap {
            class: 1,
            prob: 0.25,
            score: 3.5,
            cam,
        }
    }

    /// (m - min) / (max - min), in f64: the normalization written out.
    fn normalized(m: &Array2<f32>) -> Array2<f64> {
        let min = m.iter().fold(f32::INFINITY, |a, &b| a.min(b)) as f64;
        let max = m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        m.mapv(|v| (v as f64 - min) / (max - min))
    }

    fn max_diff(a: &Array2<f32>, b: &Array2<f64>) -> f64 {
        assert_eq!(a.dim(), b.dim());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y).abs())
            .fold(0.0, f64::max)
    }

    const LEFT_HALF: [[f32; 2]; 4] = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]];

    #[test]
    fn smoothing_is_a_moving_average_of_the_normalized_maps() {
        let cfg = MonitorConfig {
            smoothing: 0.75,
            ..Default::default()
        };
        let mut mon = Monitor::new("t".into(), cfg).unwrap();
        let frames = [
            array![[0.0f32, 2.0], [4.0, 8.0]],
            array![[8.0f32, 4.0], [2.0, 0.0]],
            array![[1.0f32, 1.0], [3.0, 1.0]],
        ];
        let mut want = normalized(&frames[0]);
        for (i, f) in frames.iter().enumerate() {
            if i > 0 {
                want = &want * 0.75 + normalized(f) * 0.25;
            }
            let mut maps = vec![map(f.clone())];
            mon.observe(i as u64, 0.0, &mut maps, &[]);
            // normalize divides by max + 1e-7.
            let d = max_diff(&maps[0].cam, &want);
            assert!(d < 1e-6, "frame {i}: {:?} vs {want:?}", maps[0].cam);
        }
        // A map of another size starts the average again.
        let f = array![[0.0f32, 1.0, 3.0]];
        let mut maps = vec![map(f.clone())];
        mon.observe(3, 0.0, &mut maps, &[]);
        assert!(
            max_diff(&maps[0].cam, &normalized(&f)) < 1e-6,
            "{:?}",
            maps[0].cam
        );
    }

    #[test]
    fn signals_are_of_each_frames_own_map_not_the_smoothed_one() {
        let cfg = MonitorConfig {
            smoothing: 0.75,
            ..Default::default()
        };
        let mut mon = Monitor::new("t".into(), cfg).unwrap();
        let a = array![[0.0f32, 1.0], [0.0, 1.0]];
        let b = array![[1.0f32, 0.0], [1.0, 0.0]];
        let mut maps = vec![map(a.clone())];
        let first = mon.observe(0, 0.0, &mut maps, &[]).signals;
        // Two cells of four hold the mass: entropy ln 2 / ln 4; the top tenth (one cell) half.
        assert_eq!(first.stability, None);
        assert!((first.entropy.unwrap() - 0.5).abs() < 1e-6, "{first:?}");
        assert!((first.concentration.unwrap() - 0.5).abs() < 1e-6, "{first:?}");
        // The mirror image: its own map correlates -1 with the previous one, though the
        // smoothed map handed on is still mostly the first.
        let mut maps = vec![map(b)];
        let second = mon.observe(1, 0.0, &mut maps, &[]).signals;
        assert!((second.stability.unwrap() + 1.0).abs() < 1e-6, "{second:?}");
        assert!(maps[0].cam[[0, 1]] > 0.7, "{:?}", maps[0].cam);
        assert!((second.entropy.unwrap() - 0.5).abs() < 1e-6, "{second:?}");
        // A flat map has no distribution: no signals, and the next frame has no stability.
        let mut maps = vec![map(Array2::from_elem((2, 2), 3.0))];
        assert_eq!(mon.observe(2, 0.0, &mut maps, &[]).signals, Signals::default());
        let mut maps = vec![map(a)];
        assert_eq!(mon.observe(3, 0.0, &mut maps, &[]).signals.stability, None);
    }

    #[test]
    fn a_frames_two_probe_outcomes_pair_up_in_any_order_and_interleaved() {
        let mut mon = Monitor::new("t".into(), MonitorConfig::default()).unwrap();
        let f = |seq: u64, kind: Kind, prob: f32| Faith {
            source: 0,
            seq,
            pts_ms: 0.0,
            class: 3,
            base: 0.5,
            kind,
            prob,
        };
        // Frame 5's deletion first, then frame 10's cam-mult, then frame 5's cam-mult: a
        // record for frame 5 with each change from its own probe.
        assert_eq!(mon.faithfulness(&f(5, Kind::Deletion, 0.125), &[]), None);
        assert_eq!(mon.faithfulness(&f(10, Kind::CamMult, 0.25), &[]), None);
        let r = mon.faithfulness(&f(5, Kind::CamMult, 0.75), &[]).unwrap();
        assert_eq!(
            (r.class, r.confidence, r.cam_mult, r.deletion),
            (3, 0.5, 0.25, -0.375)
        );
        let r = mon.faithfulness(&f(10, Kind::Deletion, 0.5), &[]).unwrap();
        assert_eq!((r.cam_mult, r.deletion), (-0.25, 0.0));
        // Two halves of the same kind never pair.
        assert_eq!(mon.faithfulness(&f(20, Kind::CamMult, 0.5), &[]), None);
        assert_eq!(mon.faithfulness(&f(20, Kind::CamMult, 0.5), &[]), None);
        // Halves that never find their other are dropped past the bound.
        for seq in 100..100 + MAX_FAITH_HALVES as u64 * 2 {
            mon.faithfulness(&f(seq, Kind::CamMult, 0.5), &[]);
        }
        assert_eq!(mon.faith_halves.len(), MAX_FAITH_HALVES);
    }

    #[test]
    fn a_drift_alarm_starting_or_ending_writes_an_event_line_whatever_events_every() {
        let path = std::env::temp_dir().join(format!("gradcamd-drift-ev-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cfg = MonitorConfig {
            events: Some(path.clone()),
            events_every: 1000,
            drift: DriftConfig {
                baseline_frames: 1,
                baseline_file: None,
                threshold: 0.3,
                frames: 1,
            },
            ..Default::default()
        };
        let mut mon = Monitor::new("cam1".into(), cfg).unwrap();
        let home = array![[1.0f32, 0.0], [0.0, 0.0]];
        let away = array![[0.0f32, 0.0], [0.0, 1.0]];
        // Frame 0 learns (and is the every-1000th line); the map jumps away on 1..=39 and back
        // on 40..: the smoothed map crosses 0.3 on the way out, and 0.225 on the way back.
        for seq in 0..80u64 {
            let m = if (1..40).contains(&seq) { &away } else { &home };
            mon.observe(seq, 0.0, &mut [map(m.clone())], &[]);
        }
        drop(mon);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let ev: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(ev.len(), 3, "{text}");
        assert_eq!(
            (ev[1]["drift_alert"].as_bool(), ev[1]["drift_alerting"].as_bool()),
            (Some(true), Some(true))
        );
        assert_eq!(
            (ev[2]["drift_alert"].as_bool(), ev[2]["drift_alerting"].as_bool()),
            (Some(false), Some(false))
        );
        assert!(
            ev[1]["seq"].as_u64() < Some(40) && ev[2]["seq"].as_u64() > Some(40),
            "{text}"
        );
    }

    #[test]
    fn without_smoothing_the_map_is_handed_on_as_computed() {
        let cfg = MonitorConfig {
            roi: Some(LEFT_HALF.to_vec()),
            roi_alert_ratio: 0.5,
            ..Default::default()
        };
        let mut mon = Monitor::new("t".into(), cfg).unwrap();
        let f = array![[0.0f32, 2.0], [4.0, 8.0]];
        let mut maps = vec![map(f.clone())];
        mon.observe(0, 0.0, &mut maps, &[]);
        assert_eq!(maps[0].cam, f);
    }

    #[test]
    fn an_alert_needs_more_than_the_ratio_outside() {
        let cfg = MonitorConfig {
            roi: Some(LEFT_HALF.to_vec()),
            roi_alert_ratio: 0.5,
            roi_alert_frames: 1,
            ..Default::default()
        };
        let mut mon = Monitor::new("t".into(), cfg).unwrap();
        // Constant along x: exactly half the mass on each side.
        let mut maps = vec![map(array![[1.0f32, 1.0], [0.0, 0.0]])];
        let o = mon.observe(0, 0.0, &mut maps, &[]);
        assert_eq!((o.outside_roi, o.alert), (Some(0.5), false));
        let mut maps = vec![map(array![[1.0f32, 1.0], [0.0, 0.01]])];
        let o = mon.observe(1, 0.0, &mut maps, &[]);
        assert!(o.outside_roi > Some(0.5) && o.alert, "{:?}", o.outside_roi);
        // A flat map normalizes to zeros: no mass anywhere, none outside.
        let mut maps = vec![map(array![[2.0f32, 2.0], [2.0, 2.0]])];
        let o = mon.observe(2, 0.0, &mut maps, &[]);
        assert_eq!((o.outside_roi, o.alert), (Some(0.0), false));
    }

    #[test]
    fn a_failed_events_log_is_reported_once_even_after_the_last_frame() {
        let cfg = MonitorConfig {
            events: Some(PathBuf::from("/dev/full")),
            events_every: 1,
            ..Default::default()
        };
        let mut mon = Monitor::new("cam1".into(), cfg).unwrap();
        let mut maps = vec![map(array![[0.0f32, 1.0], [0.0, 1.0]])];
        let o = mon.observe(0, 0.0, &mut maps, &[]);
        // The writer thread usually fails after observe has looked (it has just been handed the
        // line): then only closing the log finds the failure. Either way it is said once.
        let said: Vec<String> = [o.events_failed, mon.close_log()].into_iter().flatten().collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("/dev/full") && said[0].contains("before frame 0"),
            "{said:?}"
        );
    }

    #[test]
    fn events_every_nth_explained_frame_and_on_each_alert_with_the_maps_statistics() {
        let path = std::env::temp_dir().join(format!("gradcamd-monitor-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cfg = MonitorConfig {
            roi: Some(LEFT_HALF.to_vec()),
            roi_alert_ratio: 0.5,
            roi_alert_frames: 2,
            events: Some(path.clone()),
            events_every: 3,
            hot_threshold: 0.5,
            ..Default::default()
        };
        let mut mon = Monitor::new("cam1".into(), cfg).unwrap();
        let labels = ["a".to_string(), "bee".to_string()];
        for seq in 0..7 {
            // All mass to the right: outside the ROI on every frame; the alert starts on the
            // second (seq 1), between the every-3rd events of seq 0, 3, 6.
            let mut maps = vec![map(array![[0.0f32, 1.0], [0.0, 1.0]])];
            mon.observe(seq, seq as f64 * 40.0, &mut maps, &labels);
        }
        drop(mon);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let ev: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        let alerts: Vec<bool> = ev.iter().map(|e| e["alert"].as_bool().unwrap()).collect();
        assert_eq!(seqs, [0, 1, 3, 6]);
        assert_eq!(alerts, [false, true, false, false]);
        // The 2x2 map [[0,1],[0,1]] sampled 4x at cell centres: each row is
        // [0, 0, 1/8, 3/8, 5/8, 7/8, 1, 1] (worked out by hand).
        let e = &ev[2];
        assert_eq!(
            (e["source"].as_str(), e["pts_ms"].as_f64()),
            (Some("cam1"), Some(120.0))
        );
        assert_eq!((e["class"].as_u64(), e["label"].as_str()), (Some(1), Some("bee")));
        assert_eq!((e["prob"].as_f64(), e["score"].as_f64()), (Some(0.25), Some(3.5)));
        let f = |k: &str| -> Vec<f64> {
            e[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        // First maximum in row order: column 6 of row 0.
        assert_eq!(f("peak"), [6.5 / 8.0, 0.5 / 8.0]);
        // x: sum v (j + 0.5) / 8 over sum v = 23.25 / 8 / 4.
        let c = f("centroid");
        assert!(
            (c[0] - 23.25 / 32.0).abs() < 1e-6 && (c[1] - 0.5).abs() < 1e-6,
            "{c:?}"
        );
        // v >= 0.5 from column 4 on.
        assert_eq!(f("hot_bbox"), [0.5, 0.0, 1.0, 1.0]);
        // Outside the left half: (5 + 7 + 8 + 8) / (1 + 3 + 5 + 7 + 8 + 8) = 0.875.
        assert!((e["outside_roi"].as_f64().unwrap() - 0.875).abs() < 1e-6, "{e}");
        let ts = e["ts"].as_f64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(ts <= now && ts > now - 600.0, "{ts} vs {now}");
    }

    #[cfg(feature = "video")]
    #[test]
    fn upsampling_matches_opencv_inter_linear() {
        use opencv::core::{Mat, Size};
        use opencv::imgproc;
        use opencv::prelude::*;
        let m = Array2::from_shape_fn((3, 5), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 10.0);
        let u = upsample(&m, 4);
        let src = Mat::new_rows_cols_with_data(3, 5, m.as_slice().unwrap()).unwrap();
        let mut cv = Mat::default();
        imgproc::resize(&src, &mut cv, Size::new(20, 12), 0.0, 0.0, imgproc::INTER_LINEAR).unwrap();
        let cv: &[f32] = cv.data_typed::<f32>().unwrap();
        let d = u.iter().zip(cv).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // Measured 7.5e-9 (float rounding of the weights).
        assert_eq!(u.dim(), (12, 20));
        assert!(d < 1e-7, "max difference {d}");
    }

    #[cfg(feature = "video")]
    #[test]
    fn point_in_polygon_agrees_with_opencv_on_a_concave_polygon() {
        use opencv::core::{Point2f, Vector};
        // A concave "M"-like outline and a 32 x 32 grid of sample centres, some of them level
        // with the vertices (where the crossing rule's half-open comparisons matter).
        let r = |k: f32| (k + 0.5) / 32.0;
        let poly = [
            [0.1, r(3.0)],
            [0.5, r(14.0)],
            [0.9, r(3.0)],
            [0.8, r(28.0)],
            [0.5, r(19.0)],
            [0.2, r(28.0)],
        ];
        let contour: Vector<Point2f> = poly.iter().map(|&[x, y]| Point2f::new(x, y)).collect();
        let (mut inn, mut out, mut edge) = (0, 0, 0);
        for i in 0..32 {
            for j in 0..32 {
                let (x, y) = (r(j as f32), r(i as f32));
                let cv = opencv::imgproc::point_polygon_test(&contour, Point2f::new(x, y), false).unwrap();
                if cv == 0.0 {
                    edge += 1;
                    continue;
                }
                assert_eq!(inside(&poly, x, y), cv > 0.0, "({x}, {y})");
                if cv > 0.0 {
                    inn += 1
                } else {
                    out += 1
                }
            }
        }
        assert!(
            inn > 200 && out > 200 && edge < 8,
            "{inn} in, {out} out, {edge} on an edge"
        );
    }

    #[test]
    fn a_map_without_mass_has_its_centroid_in_the_middle_and_no_hot_box() {
        let z = Array2::<f32>::zeros((8, 8));
        assert_eq!(centroid(&z), [0.5, 0.5]);
        assert_eq!(hot_bbox(&z, 0.5), None);
        assert_eq!(peak(&z), [0.0625, 0.0625]);
    }
}
