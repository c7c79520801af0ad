//! Signals of how and where a model looks, with no extra inference: the spread of each frame's
//! map, its agreement with the previous frame's, and the drift of the (smoothed) attention away
//! from a baseline learned on the source's first frames.
//!
//! All of them read the map as a distribution of mass over its cells: the CAM normalized to
//! [0, 1], divided by its sum. A map without mass (flat before normalization) has no
//! distribution, and gives no signal.

use std::path::{Path, PathBuf};

use ndarray::Array2;

/// Normalized Shannon entropy of the map's mass, in 0..1: 1 when the mass is spread evenly over
/// every cell, 0 when it is all in one. Dividing by `ln n` makes maps of different models
/// (7×7, 14×14) comparable.
pub(crate) fn entropy(m: &Array2<f32>) -> Option<f32> {
    let total: f64 = m.iter().map(|&v| v.max(0.0) as f64).sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let n = m.len();
    if n < 2 {
        return Some(0.0);
    }
    let h: f64 = m
        .iter()
        .map(|&v| {
            let p = v.max(0.0) as f64 / total;
            if p > 0.0 {
                -p * p.ln()
            } else {
                0.0
            }
        })
        .sum();
    Some((h / (n as f64).ln()) as f32)
}

/// Share of the hottest cells that concentration counts: the top tenth.
pub(crate) const HOT_SHARE: f64 = 0.1;

/// Share of the map's mass in its hottest tenth of cells (at least one cell), in 0..1: 0.1 for
/// an even spread, 1 when the top tenth holds all of it.
pub(crate) fn concentration(m: &Array2<f32>) -> Option<f32> {
    concentration_in(m, &mut Vec::new())
}

/// [`concentration`] with a scratch buffer, so that a monitor allocates nothing per frame.
pub(crate) fn concentration_in(m: &Array2<f32>, v: &mut Vec<f32>) -> Option<f32> {
    v.clear();
    v.extend(m.iter().map(|&v| v.max(0.0)));
    let total: f64 = v.iter().map(|&x| x as f64).sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let k = ((v.len() as f64 * HOT_SHARE).ceil() as usize).clamp(1, v.len());
    // The k largest first (in no order), in linear time.
    v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let top: f64 = v[..k].iter().map(|&x| x as f64).sum();
    Some((top / total) as f32)
}

/// Pearson correlation of this frame's map with the previous one of the same source, in -1..1;
/// none for the first, for maps of other sizes, and where either map is flat.
pub(crate) fn stability(cur: &Array2<f32>, prev: &Array2<f32>) -> Option<f32> {
    if cur.dim() != prev.dim() {
        return None;
    }
    let (Some(a), Some(b)) = (cur.as_slice(), prev.as_slice()) else {
        return None;
    };
    let flat = |m: &[f32]| m.iter().all(|&v| v == m[0]);
    if a.is_empty() || flat(a) || flat(b) {
        return None;
    }
    let r = crate::cam::correlation(a, b);
    r.is_finite().then_some(r as f32)
}

/// Share of the input's pixels the deletion probe removes: the hottest tenth of the CAM.
pub(crate) const DELETE_SHARE: f64 = 0.1;

/// The two faithfulness probes of one model input `item` (3 channels, planar or interleaved),
/// from its CAM at input resolution `cam` (normalized to 0..1, as pytorch-grad-cam hands it
/// to its metrics):
/// - `cam_mult`: the item multiplied by the CAM, pytorch-grad-cam's
///   `CamMultImageConfidenceChange` perturbation (`input_tensor * cam`);
/// - `deletion`: the item with its hottest [`DELETE_SHARE`] of pixels (CAM at or above the
///   k-th largest value) set to 0, the dataset mean after normalization: `input_tensor *
///   (1 - mask)`, the same metric with the inverted mask as its CAM.
///
/// `order` is scratch for the selection (no allocation once it has held a CAM).
pub(crate) fn probes_into(
    item: &[f32],
    cam: &[f32],
    interleaved: bool,
    cam_mult: &mut [f32],
    deletion: &mut [f32],
    order: &mut Vec<f32>,
) {
    let n = cam.len();
    if n == 0 || item.len() != 3 * n || cam_mult.len() != item.len() || deletion.len() != item.len() {
        return;
    }
    order.clear();
    order.extend_from_slice(cam);
    let k = ((n as f64 * DELETE_SHARE).ceil() as usize).clamp(1, n);
    order.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let cut = order[k - 1];
    for (i, (&x, (m, d))) in item
        .iter()
        .zip(cam_mult.iter_mut().zip(deletion.iter_mut()))
        .enumerate()
    {
        let c = if interleaved { cam[i / 3] } else { cam[i % n] };
        *m = x * c;
        *d = if c >= cut { 0.0 } else { x };
    }
}

/// Side of the coarse grid drift is measured on.
pub(crate) const GRID: usize = 8;
/// EMA weight of the previous smoothed map, for drift: a time constant of about ten frames, so
/// that one odd frame does not count, and a subject that stays away does.
pub(crate) const DRIFT_EMA: f64 = 0.9;
/// An alarm ends once the divergence stays under this share of the threshold for
/// `drift_frames` frames (hysteresis: a divergence hovering at the threshold does not flap).
pub(crate) const CLEAR_RATIO: f32 = 0.75;

/// Mass of the map pooled onto a `GRID`×`GRID` grid (each cell's mass to the grid cell holding
/// its centre), as a distribution; none without mass.
#[cfg(test)]
fn pooled(m: &Array2<f32>) -> Option<Vec<f64>> {
    let mut g = Vec::new();
    pool_into(m, &mut g).then_some(g)
}

/// [`pooled`] into `g` (resized to the grid); false without mass.
fn pool_into(m: &Array2<f32>, g: &mut Vec<f64>) -> bool {
    let (h, w) = m.dim();
    g.clear();
    g.resize(GRID * GRID, 0.0);
    for ((i, j), &v) in m.indexed_iter() {
        let gy = ((i as f64 + 0.5) / h as f64 * GRID as f64) as usize;
        let gx = ((j as f64 + 0.5) / w as f64 * GRID as f64) as usize;
        g[gy.min(GRID - 1) * GRID + gx.min(GRID - 1)] += v.max(0.0) as f64;
    }
    let total: f64 = g.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return false;
    }
    g.iter_mut().for_each(|x| *x /= total);
    true
}

/// Jensen–Shannon divergence of two distributions, base 2: 0 for equal ones, 1 for disjoint.
pub(crate) fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let kl_to_mid = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .filter(|(&x, _)| x > 0.0)
            .map(|(&x, &y)| x * (2.0 * x / (x + y)).log2())
            .sum()
    };
    (0.5 * kl_to_mid(p, q) + 0.5 * kl_to_mid(q, p)).clamp(0.0, 1.0)
}

/// A source's drift settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct DriftConfig {
    /// Explained frames the baseline is learned over; 0: no drift watch.
    pub baseline_frames: u32,
    /// Where the baseline is kept: loaded when it exists, written once learned.
    pub baseline_file: Option<PathBuf>,
    pub threshold: f32,
    pub frames: u32,
}

/// What one frame did to the drift watch.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct DriftStep {
    /// Divergence of the smoothed map from the baseline; none while learning.
    pub divergence: Option<f32>,
    /// An alarm started on this frame.
    pub started: bool,
    /// An alarm ended on this frame.
    pub ended: bool,
    /// An alarm is on after this frame.
    pub alerting: bool,
    /// The baseline was completed on this frame.
    pub learned: bool,
}

pub(crate) struct Drift {
    cfg: DriftConfig,
    baseline: Option<Vec<f64>>,
    /// Sum of the distributions seen while learning, and how many.
    sum: Vec<f64>,
    seen: u32,
    /// This frame's pooled map (a buffer kept from frame to frame).
    grid: Vec<f64>,
    smoothed: Option<Vec<f64>>,
    over: u32,
    under: u32,
    alerting: bool,
}

/// The baseline file: a grid of mass shares, and where it came from.
#[derive(serde::Serialize, serde::Deserialize)]
struct BaselineFile {
    gradcamd_baseline: u32,
    source: String,
    grid: [usize; 2],
    frames: u32,
    /// Row-major shares, summing to 1.
    map: Vec<f64>,
}

impl Drift {
    /// The watch for one source; loads the baseline from `baseline_file` when it exists.
    pub(crate) fn new(cfg: DriftConfig) -> anyhow::Result<Drift> {
        let baseline = match &cfg.baseline_file {
            Some(p) if p.exists() => Some(load(p)?),
            _ => None,
        };
        Ok(Drift {
            cfg,
            baseline,
            sum: vec![0.0; GRID * GRID],
            seen: 0,
            grid: Vec::with_capacity(GRID * GRID),
            smoothed: None,
            over: 0,
            under: 0,
            alerting: false,
        })
    }

    pub(crate) fn alerting(&self) -> bool {
        self.alerting
    }

    /// Whether the baseline came from its file (true) or is being learned.
    pub(crate) fn loaded(&self) -> bool {
        self.baseline.is_some() && self.seen == 0
    }

    /// Takes one frame's normalized map: learns, or measures and decides.
    pub(crate) fn observe(&mut self, m: &Array2<f32>) -> DriftStep {
        let mut step = DriftStep {
            alerting: self.alerting,
            ..Default::default()
        };
        if !pool_into(m, &mut self.grid) {
            return step;
        }
        let p = &self.grid;
        let s = match self.smoothed.as_mut() {
            Some(s) => {
                s.iter_mut()
                    .zip(p)
                    .for_each(|(a, &b)| *a = *a * DRIFT_EMA + b * (1.0 - DRIFT_EMA));
                s
            }
            None => self.smoothed.insert(p.clone()),
        };
        let Some(base) = &self.baseline else {
            self.sum.iter_mut().zip(p).for_each(|(a, &b)| *a += b);
            self.seen += 1;
            if self.seen >= self.cfg.baseline_frames.max(1) {
                let n = self.seen as f64;
                self.baseline = Some(self.sum.iter().map(|v| v / n).collect());
                step.learned = true;
            }
            return step;
        };
        let d = jensen_shannon(s, base) as f32;
        step.divergence = Some(d);
        (step.started, step.ended) = self.decide(d);
        step.alerting = self.alerting;
        step
    }

    /// The alarm's state machine on one frame's divergence: (started, ended).
    fn decide(&mut self, d: f32) -> (bool, bool) {
        let need = self.cfg.frames.max(1);
        if d > self.cfg.threshold {
            self.under = 0;
            self.over += 1;
            if !self.alerting && self.over >= need {
                self.alerting = true;
                return (true, false);
            }
        } else if d < self.cfg.threshold * CLEAR_RATIO {
            self.over = 0;
            self.under += 1;
            if self.alerting && self.under >= need {
                self.alerting = false;
                return (false, true);
            }
        } else {
            // Between the two levels: neither builds up.
            self.over = 0;
            self.under = 0;
        }
        (false, false)
    }

    /// Writes the baseline to its file (through a temporary file and a rename, so a crash
    /// never leaves half a baseline to be loaded on the next start).
    pub(crate) fn save(&self, source: &str) -> Result<Option<&Path>, String> {
        let (Some(path), Some(map)) = (&self.cfg.baseline_file, &self.baseline) else {
            return Ok(None);
        };
        let body = serde_json::to_string(&BaselineFile {
            gradcamd_baseline: 1,
            source: source.to_string(),
            grid: [GRID, GRID],
            frames: self.seen,
            map: map.clone(),
        })
        .map_err(|e| e.to_string())?;
        let tmp = tmp_path(path);
        std::fs::write(&tmp, body + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!(
                    "cannot write attention baseline {}: {e}; check the path and the space left",
                    path.display()
                )
            })?;
        Ok(Some(path))
    }
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Fails unless a baseline file can later be written at `p` (checked at start, so a bad path is
/// found before the frames it takes to learn).
pub(crate) fn check_writable(p: &Path) -> std::io::Result<()> {
    let tmp = tmp_path(p);
    std::fs::write(&tmp, b"")?;
    std::fs::remove_file(&tmp)
}

fn load(p: &Path) -> anyhow::Result<Vec<f64>> {
    use crate::error::{fail, Kind};
    let text = crate::paths::read_text(p, "attention baseline").map_err(|e| {
        fail(
            Kind::Config,
            format!("cannot read attention baseline {}: {e}", p.display()),
        )
    })?;
    let bad = |why: String| {
        fail(
            Kind::Config,
            format!(
                "{} is not a gradcamd attention baseline ({why}); delete it to learn a new one",
                p.display()
            ),
        )
    };
    let b: BaselineFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if b.grid != [GRID, GRID] || b.map.len() != GRID * GRID {
        return Err(bad(format!(
            "a {}x{} grid of {} values, where this version uses {GRID}x{GRID}",
            b.grid[0],
            b.grid[1],
            b.map.len()
        )));
    }
    let sum: f64 = b.map.iter().sum();
    if b.map.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || (sum - 1.0).abs() > 1e-6 {
        return Err(bad(format!(
            "its map must hold shares >= 0 that sum to 1, and sums to {sum}"
        )));
    }
    Ok(b.map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn entropy_is_one_for_an_even_spread_and_zero_for_one_cell() {
        assert!((entropy(&Array2::from_elem((7, 7), 0.3)).unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(entropy(&array![[0.0f32, 0.0], [0.0, 1.0]]), Some(0.0));
        // Half the mass in each of two of four cells: ln 2 / ln 4.
        let e = entropy(&array![[1.0f32, 1.0], [0.0, 0.0]]).unwrap();
        assert!((e - 0.5).abs() < 1e-6, "{e}");
        // p = (1, 2, 3, 4) / 10, worked out: -Σ p ln p = 1.279854, / ln 4 = 0.923227.
        let e = entropy(&array![[1.0f32, 2.0], [3.0, 4.0]]).unwrap();
        assert!((e - 0.923_227).abs() < 1e-5, "{e}");
        assert_eq!(entropy(&Array2::zeros((3, 3))), None);
    }

    #[test]
    fn concentration_is_the_mass_in_the_hottest_tenth_of_cells() {
        // 49 cells: the top five.
        let mut m = Array2::from_elem((7, 7), 1.0f32);
        assert!((concentration(&m).unwrap() - 5.0 / 49.0).abs() < 1e-6);
        for (k, v) in [9.0, 8.0, 7.0, 6.0, 5.0, 4.0].into_iter().enumerate() {
            m[[k, k]] = v;
        }
        // Top five: 9 + 8 + 7 + 6 + 5 = 35 of 39 + 43 ones = 82.
        let c = concentration(&m).unwrap();
        assert!((c - 35.0 / 82.0).abs() < 1e-6, "{c}");
        // Four cells: the top one (a tenth rounds up to one cell).
        assert_eq!(concentration(&array![[0.0f32, 1.0], [1.0, 2.0]]), Some(0.5));
        assert_eq!(concentration(&Array2::zeros((2, 2))), None);
    }

    #[test]
    fn stability_is_the_correlation_with_the_previous_map() {
        let a = array![[0.0f32, 1.0], [2.0, 3.0]];
        assert!((stability(&a, &(&a * 2.0 + 1.0)).unwrap() - 1.0).abs() < 1e-6);
        assert!((stability(&a, &a.mapv(|v| 3.0 - v)).unwrap() + 1.0).abs() < 1e-6);
        assert_eq!(stability(&a, &Array2::zeros((2, 2))), None);
        assert_eq!(stability(&a, &array![[0.0f32, 1.0, 2.0]]), None);
    }

    #[test]
    fn jensen_shannon_is_zero_for_equal_and_one_for_disjoint_distributions() {
        let p = [0.5, 0.5, 0.0, 0.0];
        assert_eq!(jensen_shannon(&p, &p), 0.0);
        assert!((jensen_shannon(&p, &[0.0, 0.0, 0.5, 0.5]) - 1.0).abs() < 1e-12);
        // (1, 0) against (1/2, 1/2): mid (3/4, 1/4); KL(p‖m) = log2(4/3),
        // KL(q‖m) = ½ log2(2/3) + ½ log2(2); JS = half their sum = 0.311278.
        let js = jensen_shannon(&[1.0, 0.0], &[0.5, 0.5]);
        assert!((js - 0.311_278).abs() < 1e-6, "{js}");
    }

    #[test]
    fn pooling_sends_each_cell_to_the_grid_cell_of_its_centre() {
        // 16 x 16 onto 8 x 8: 2 x 2 blocks; one hot cell in the bottom-right block.
        let mut m = Array2::zeros((16, 16));
        m[[15, 14]] = 2.0f32;
        m[[0, 0]] = 2.0;
        let g = pooled(&m).unwrap();
        assert_eq!((g[0], g[GRID * GRID - 1]), (0.5, 0.5));
        // 7 x 7 onto 8 x 8: cell 3's centre, 3.5 / 7, falls on grid cell 4.
        let mut m = Array2::zeros((7, 7));
        m[[3, 3]] = 1.0f32;
        let g = pooled(&m).unwrap();
        assert_eq!(g[4 * GRID + 4], 1.0);
        assert_eq!(pooled(&Array2::zeros((7, 7))), None);
    }

    #[test]
    fn probes_multiply_by_the_cam_and_delete_the_hottest_tenth_in_either_layout() {
        // A 4 x 5 CAM (20 pixels: the top tenth is 2) with distinct values, and an item whose
        // value names its channel and pixel.
        let cam: Vec<f32> = (0..20).map(|i| ((i * 7) % 20) as f32 / 19.0).collect();
        let planar: Vec<f32> = (0..60).map(|i| 1.0 + i as f32).collect();
        let (mut m, mut d, mut order) = (vec![0.0; 60], vec![0.0; 60], Vec::new());
        probes_into(&planar, &cam, false, &mut m, &mut d, &mut order);
        // The two hottest pixels: values 19/19 and 18/19, at 7i % 20 = 19 and 18: i = 17, 14.
        for c in 0..3 {
            for (p, &v) in cam.iter().enumerate() {
                let i = c * 20 + p;
                assert_eq!(m[i], planar[i] * v);
                assert_eq!(
                    d[i],
                    if p == 17 || p == 14 { 0.0 } else { planar[i] },
                    "pixel {p}"
                );
            }
        }
        // Interleaved: pixel p's channels at 3p..3p+3.
        let (mut m2, mut d2) = (vec![0.0; 60], vec![0.0; 60]);
        probes_into(&planar, &cam, true, &mut m2, &mut d2, &mut order);
        for (p, &v) in cam.iter().enumerate() {
            for c in 0..3 {
                let i = 3 * p + c;
                assert_eq!(m2[i], planar[i] * v);
                assert_eq!(d2[i], if p == 17 || p == 14 { 0.0 } else { planar[i] });
            }
        }
        // Ties at the cut are deleted together: a flat CAM deletes everything.
        probes_into(&planar, &[0.5; 20], false, &mut m, &mut d, &mut order);
        assert!(d.iter().all(|&v| v == 0.0));
    }

    fn blob(at: (usize, usize)) -> Array2<f32> {
        let mut m = Array2::from_elem((7, 7), 0.01f32);
        m[at] = 1.0;
        m
    }

    #[test]
    fn drift_learns_then_fires_once_and_clears_with_hysteresis() {
        let cfg = DriftConfig {
            baseline_frames: 5,
            baseline_file: None,
            threshold: 0.3,
            frames: 3,
        };
        let mut d = Drift::new(cfg).unwrap();
        let steps: Vec<DriftStep> = (0..5).map(|_| d.observe(&blob((1, 1)))).collect();
        assert!(steps.iter().all(|s| s.divergence.is_none() && !s.alerting));
        assert_eq!(steps.iter().filter(|s| s.learned).count(), 1);
        assert!(steps[4].learned);
        // At the baseline: zero divergence.
        assert_eq!(d.observe(&blob((1, 1))).divergence, Some(0.0));
        // The subject moves away: the smoothed map leaves the baseline over some frames, and
        // the alarm starts once it has stayed over the threshold for 3 of them.
        let away: Vec<DriftStep> = (0..40).map(|_| d.observe(&blob((5, 5)))).collect();
        let first_over = away.iter().position(|s| s.divergence.unwrap() > 0.3).unwrap();
        let start = away.iter().position(|s| s.started).unwrap();
        assert_eq!(start, first_over + 2, "{away:?}");
        assert_eq!(away.iter().filter(|s| s.started).count(), 1);
        assert!(away[start..].iter().all(|s| s.alerting && !s.ended));
        // Back home: the alarm ends after 3 frames under 0.75 x 0.3, not when it first dips
        // under 0.3.
        let back: Vec<DriftStep> = (0..60).map(|_| d.observe(&blob((1, 1)))).collect();
        let under = back
            .iter()
            .position(|s| s.divergence.unwrap() < 0.3 * CLEAR_RATIO)
            .unwrap();
        let end = back.iter().position(|s| s.ended).unwrap();
        assert!(back.iter().position(|s| s.divergence.unwrap() < 0.3).unwrap() < under);
        assert_eq!(end, under + 2);
        assert!(back[..end].iter().all(|s| s.alerting));
        assert!(back[end..].iter().all(|s| !s.alerting));
    }

    #[test]
    fn a_divergence_between_the_levels_neither_fires_nor_clears() {
        let cfg = DriftConfig {
            baseline_frames: 1,
            baseline_file: None,
            threshold: 0.5,
            frames: 2,
        };
        let mut d = Drift::new(cfg).unwrap();
        let run =
            |d: &mut Drift, ds: &[f32]| -> Vec<(bool, bool)> { ds.iter().map(|&v| d.decide(v)).collect() };
        let no = (false, false);
        // Over, between (0.375..0.5), over: the run of frames over is broken.
        assert_eq!(run(&mut d, &[0.6, 0.45, 0.6]), [no, no, no]);
        assert_eq!(d.decide(0.6), (true, false));
        // On, between for a long time: it stays on; the first of two frames under 0.375 does
        // not end it, the second does.
        assert_eq!(run(&mut d, &[0.4; 20]), [no; 20]);
        assert!(d.alerting);
        assert_eq!(run(&mut d, &[0.3, 0.45, 0.3]), [no, no, no]);
        assert_eq!(d.decide(0.3), (false, true));
        assert!(!d.alerting);
        // At the threshold exactly is not over it.
        assert_eq!(run(&mut d, &[0.5, 0.5, 0.5]), [no, no, no]);
    }

    #[test]
    fn a_baseline_survives_a_restart_through_its_file_and_a_bad_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("gradcamd-drift-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cam1.baseline.json");
        let _ = std::fs::remove_file(&file);
        let cfg = DriftConfig {
            baseline_frames: 2,
            baseline_file: Some(file.clone()),
            threshold: 0.3,
            frames: 1,
        };
        check_writable(&file).unwrap();
        assert!(!file.exists() && !tmp_path(&file).exists());
        let mut d = Drift::new(cfg.clone()).unwrap();
        assert!(!d.loaded());
        d.observe(&blob((2, 2)));
        assert!(d.observe(&blob((2, 2))).learned);
        assert_eq!(d.save("cam1").unwrap(), Some(file.as_path()));
        // A restart loads it, and measures from its first frame.
        let mut again = Drift::new(cfg.clone()).unwrap();
        assert!(again.loaded());
        assert_eq!(again.observe(&blob((2, 2))).divergence, Some(0.0));
        let far = again.observe(&blob((6, 6))).divergence.unwrap();
        assert!(far > 0.0, "{far}");
        for (text, why) in [
            ("{", "EOF"),
            (
                r#"{"gradcamd_baseline":1,"source":"a","grid":[4,4],"frames":3,"map":[1.0]}"#,
                "a 4x4 grid of 1 values",
            ),
            (
                r#"{"gradcamd_baseline":1,"source":"a","grid":[8,8],"frames":3,"map":[0.5]}"#,
                "a 8x8 grid of 1 values",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = Drift::new(cfg.clone()).err().unwrap().to_string();
            assert!(
                e.contains(why) && e.contains("delete it to learn a new one"),
                "{e}"
            );
        }
        let mut map = vec![0.0; 64];
        map[3] = 2.0;
        std::fs::write(
            &file,
            serde_json::json!({"gradcamd_baseline": 1, "source": "a", "grid": [8, 8], "frames": 3, "map": map}).to_string(),
        )
        .unwrap();
        let e = Drift::new(cfg).err().unwrap().to_string();
        assert!(e.contains("sums to 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
