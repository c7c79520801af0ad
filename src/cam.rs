//! CAM methods on one item's activations `A` [C,h,w] and gradients `dA` [C,h,w], with ndarray.
//!
//! Every method is defined as pytorch-grad-cam 1.5 defines it (`get_cam_weights` /
//! `get_cam_image` of each class); [`raw`] is that map, and [`compute`] applies the ReLU that
//! pytorch-grad-cam's `compute_cam_per_layer` applies to all of them:
//!
//! | method | map before ReLU |
//! |---|---|
//! | `gradcam` | `Σ_k a_k A_k`, `a_k = mean_ij dA_k` |
//! | `gradcampp` | `Σ_k a_k A_k`, `a_k = Σ_ij relu(g) α`, `α = g² / (2g² + (Σ_ij A_k) g³ + 1e-6)`, 0 where `g = 0` |
//! | `xgradcam` | `Σ_k a_k A_k`, `a_k = Σ_ij g A / (Σ_ij A_k + 1e-7)` |
//! | `hirescam` | `Σ_k g A` (element-wise) |
//! | `layercam` | `Σ_k relu(g) A` |
//! | `eigencam` | projection of the centred `A` (positions × channels) on its first principal axis |
//! | `eigengradcam` | the same for `g A` |
//! | `cam` | `Σ_k w_ck A_k` with `w_c` the fully-connected row of the class (Zhou et al. 2016); no ReLU |
//!
//! The SVD leaves the sign of the eigen methods' projection free (pytorch-grad-cam keeps
//! whatever LAPACK returns). gradcamd fixes it: the projection is flipped when its most negative
//! value is larger in magnitude than its most positive one, so the strongest response is
//! positive and survives the ReLU (the rule of Seg-Eigen-CAM, Chung & Ying 2025, eq. 13).
//!
//! [`normalize`] is pytorch-grad-cam's `scale_cam_image` without the resize:
//! `(L - min) / (max(L - min) + 1e-7)`.

use ndarray::{Array2, ArrayView1, ArrayView3, ArrayViewMut2, Zip};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    GradCam,
    GradCamPP,
    XGradCam,
    HiResCam,
    LayerCam,
    EigenCam,
    EigenGradCam,
    /// Class activation mapping from the fully-connected weights (GAP + FC heads only).
    Cam,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::GradCam,
        Method::GradCamPP,
        Method::XGradCam,
        Method::HiResCam,
        Method::LayerCam,
        Method::EigenCam,
        Method::EigenGradCam,
        Method::Cam,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::GradCamPP => "gradcampp",
            Method::XGradCam => "xgradcam",
            Method::HiResCam => "hirescam",
            Method::LayerCam => "layercam",
            Method::EigenCam => "eigencam",
            Method::EigenGradCam => "eigengradcam",
            Method::Cam => "cam",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let key: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
            .collect();
        let key = key.replace("++", "pp");
        Method::ALL.into_iter().find(|m| m.name() == key).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            format!("unknown CAM method '{s}' (expected one of {})", names.join(", "))
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The method's map before the final ReLU. `fc_row` is needed by [`Method::Cam`] only.
pub fn raw(
    method: Method,
    a: ArrayView3<f32>,
    da: ArrayView3<f32>,
    fc_row: Option<ArrayView1<f32>>,
) -> Array2<f32> {
    let (h, w) = (a.shape()[1], a.shape()[2]);
    let weighted = |weights: &[f32]| {
        let mut out = Array2::zeros((h, w));
        for (ak, &wk) in a.outer_iter().zip(weights) {
            if wk != 0.0 {
                out.scaled_add(wk, &ak);
            }
        }
        out
    };
    match method {
        Method::GradCam => weighted(&gradcam_weights(da)),
        Method::GradCamPP => {
            let weights: Vec<f32> = a
                .outer_iter()
                .zip(da.outer_iter())
                .map(|(ak, gk)| {
                    let sum_a = ak.sum();
                    gk.iter()
                        .map(|&g| {
                            if g == 0.0 {
                                return 0.0;
                            }
                            let g2 = g * g;
                            let alpha = g2 / (2.0 * g2 + sum_a * g2 * g + 1e-6);
                            g.max(0.0) * alpha
                        })
                        .sum()
                })
                .collect();
            weighted(&weights)
        }
        Method::XGradCam => {
            let weights: Vec<f32> = a
                .outer_iter()
                .zip(da.outer_iter())
                .map(|(ak, gk)| {
                    let denom = ak.sum() + 1e-7;
                    Zip::from(&ak)
                        .and(&gk)
                        .fold(0.0f32, |acc, &x, &g| acc + g * x / denom)
                })
                .collect();
            weighted(&weights)
        }
        Method::HiResCam | Method::LayerCam => {
            let relu_g = method == Method::LayerCam;
            let mut out = Array2::zeros((h, w));
            for (ak, gk) in a.outer_iter().zip(da.outer_iter()) {
                Zip::from(&mut out).and(&ak).and(&gk).for_each(|o, &x, &g| {
                    *o += if relu_g { g.max(0.0) } else { g } * x;
                });
            }
            out
        }
        Method::EigenCam => projection(a.to_owned().view()),
        Method::EigenGradCam => projection((&a * &da).view()),
        Method::Cam => match fc_row {
            Some(row) => cam_fc(a, row),
            None => Array2::zeros((h, w)),
        },
    }
}

/// The method's map as pytorch-grad-cam hands it to normalization: ReLU of [`raw`] (plain CAM
/// keeps its sign, as the original formula has no ReLU).
pub fn compute(
    method: Method,
    a: ArrayView3<f32>,
    da: ArrayView3<f32>,
    fc_row: Option<ArrayView1<f32>>,
) -> Array2<f32> {
    let mut m = raw(method, a, da, fc_row);
    if method != Method::Cam {
        m.mapv_inplace(|v| v.max(0.0));
    }
    m
}

/// [`compute`] into `out`, reusing its buffer when the shape agrees: Grad-CAM and CAM then
/// allocate nothing; the other methods compute into a new map.
pub(crate) fn compute_into(
    method: Method,
    a: ArrayView3<f32>,
    da: ArrayView3<f32>,
    fc_row: Option<ArrayView1<f32>>,
    out: &mut Array2<f32>,
) {
    let dims = (a.shape()[1], a.shape()[2]);
    match (method, fc_row) {
        (Method::GradCam, _) | (Method::Cam, Some(_)) => {
            if out.dim() != dims {
                *out = Array2::zeros(dims);
            }
            match fc_row {
                Some(w) if method == Method::Cam => cam_fc_into(a, w, out.view_mut()),
                _ => gradcam_into(a, da, out.view_mut()),
            }
        }
        _ => *out = compute(method, a, da, fc_row),
    }
}

/// Projection of the centred positions × channels matrix of `x` [C,h,w] on its first right
/// singular vector (pytorch-grad-cam's `get_2d_projection`), with the sign rule above.
///
/// Computed through the positions × positions Gram matrix, whose top eigenvector `u` gives the
/// projection `σ₁ u`; power iteration in f64 on that small matrix.
pub(crate) fn projection(x: ArrayView3<f32>) -> Array2<f32> {
    let (c, h, w) = x.dim();
    let n = h * w;
    // m[p, k]: position p, channel k, centred over positions; NaN -> 0 as the reference does.
    let mut m = vec![0f64; n * c];
    for (k, xk) in x.outer_iter().enumerate() {
        let vals: Vec<f64> = xk
            .iter()
            .map(|&v| if v.is_nan() { 0.0 } else { v as f64 })
            .collect();
        let mean = vals.iter().sum::<f64>() / n as f64;
        for (p, v) in vals.into_iter().enumerate() {
            m[p * c + k] = v - mean;
        }
    }
    let mut g = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            let d: f64 = m[i * c..(i + 1) * c]
                .iter()
                .zip(&m[j * c..(j + 1) * c])
                .map(|(a, b)| a * b)
                .sum();
            g[i * n + j] = d;
            g[j * n + i] = d;
        }
    }
    let (u, _) = top_eigenvector(&g, n);
    let lambda: f64 = (0..n)
        .map(|i| u[i] * (0..n).map(|j| g[i * n + j] * u[j]).sum::<f64>())
        .sum();
    let sigma = lambda.max(0.0).sqrt();
    let mut proj: Vec<f64> = u.iter().map(|v| v * sigma).collect();
    let (lo, hi) = proj.iter().fold((0f64, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
    if -lo > hi {
        proj.iter_mut().for_each(|v| *v = -*v);
    }
    Array2::from_shape_vec((h, w), proj.into_iter().map(|v| v as f32).collect())
        .unwrap_or_else(|_| Array2::zeros((h, w)))
}

/// Unit eigenvector of the largest eigenvalue of the symmetric PSD matrix `g` (n × n), and the
/// iterations it took (it stops once an iteration moves no entry by 1e-12 or more).
fn top_eigenvector(g: &[f64], n: usize) -> (Vec<f64>, usize) {
    // A start with a component along every direction, deterministic.
    let mut v: Vec<f64> = (0..n)
        .map(|i| 1.0 + (i as f64 * 0.618_033_988_75).fract())
        .collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nv = norm(&v);
    v.iter_mut().for_each(|x| *x /= nv);
    for it in 1..=2000 {
        let mut next: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| g[i * n + j] * v[j]).sum())
            .collect();
        let nn = norm(&next);
        if nn == 0.0 {
            return (v, it);
        }
        next.iter_mut().for_each(|x| *x /= nn);
        let delta: f64 = next
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        v = next;
        if delta < 1e-12 {
            return (v, it);
        }
    }
    (v, 2000)
}

/// Grad-CAM of one item into `out` [h,w] (no allocation).
pub(crate) fn gradcam_into(a: ArrayView3<f32>, da: ArrayView3<f32>, mut out: ArrayViewMut2<f32>) {
    out.fill(0.0);
    let hw = (da.shape()[1] * da.shape()[2]) as f32;
    for (ak, dak) in a.outer_iter().zip(da.outer_iter()) {
        let w = dak.sum() / hw;
        if w != 0.0 {
            out.scaled_add(w, &ak);
        }
    }
    out.mapv_inplace(|v| v.max(0.0));
}

pub fn gradcam(a: ArrayView3<f32>, da: ArrayView3<f32>) -> Array2<f32> {
    let mut out = Array2::zeros((a.shape()[1], a.shape()[2]));
    gradcam_into(a, da, out.view_mut());
    out
}

/// Grad-CAM channel weights `a_k`, the spatial mean of `dA` per channel.
pub fn gradcam_weights(da: ArrayView3<f32>) -> Vec<f32> {
    let hw = (da.shape()[1] * da.shape()[2]) as f32;
    da.outer_iter().map(|d| d.sum() / hw).collect()
}

/// Plain CAM: `sum_k w_k A_k` with `w` the FC row of the class.
pub(crate) fn cam_fc_into(a: ArrayView3<f32>, w: ArrayView1<f32>, mut out: ArrayViewMut2<f32>) {
    out.fill(0.0);
    for (ak, &wk) in a.outer_iter().zip(w.iter()) {
        out.scaled_add(wk, &ak);
    }
}

pub fn cam_fc(a: ArrayView3<f32>, w: ArrayView1<f32>) -> Array2<f32> {
    let mut out = Array2::zeros((a.shape()[1], a.shape()[2]));
    cam_fc_into(a, w, out.view_mut());
    out
}

/// Min-max normalization to [0, 1], in place, as pytorch-grad-cam does it.
pub fn normalize(mut m: ArrayViewMut2<f32>) {
    let min = m.iter().copied().fold(f32::INFINITY, f32::min);
    m.mapv_inplace(|v| v - min);
    let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = 1.0 / (max + 1e-7);
    m.mapv_inplace(|v| v * s);
}

/// Pearson correlation of two equally shaped maps, used to compare against references.
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    // Maps of different sizes are not comparable: NaN fails every threshold (it once compared
    // the common prefix, silently).
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa.sqrt() * sbb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Location (row, col) of the maximum.
pub fn peak(m: &Array2<f32>) -> (usize, usize) {
    let mut best = (0, 0);
    let mut bv = f32::NEG_INFINITY;
    for ((i, j), &v) in m.indexed_iter() {
        if v > bv {
            bv = v;
            best = (i, j);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    #[test]
    fn method_names_parse_as_users_write_them() {
        // Config files and flags spell methods the way papers and pytorch-grad-cam do.
        for (s, m) in [
            ("gradcam", Method::GradCam),
            ("Grad-CAM", Method::GradCam),
            ("Grad-CAM++", Method::GradCamPP),
            ("gradcampp", Method::GradCamPP),
            ("XGradCAM", Method::XGradCam),
            ("HiResCAM", Method::HiResCam),
            ("layer_cam", Method::LayerCam),
            ("EigenCAM", Method::EigenCam),
            ("Eigen-Grad-CAM", Method::EigenGradCam),
            ("CAM", Method::Cam),
        ] {
            assert_eq!(s.parse::<Method>(), Ok(m), "{s}");
        }
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
        }
        let e = "scorecam".parse::<Method>().unwrap_err();
        assert!(e.contains("scorecam") && e.contains("gradcampp"), "{e}");
    }

    #[test]
    fn correlation_of_known_pairs() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        assert!((correlation(&a, &a) - 1.0).abs() < 1e-12);
        assert!((correlation(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Scale and offset do not matter; by hand: x = [1,2,3,4], y = [1,3,2,4] gives 0.8.
        assert!((correlation(&a, &[10.0, 50.0, 30.0, 70.0]) - 0.8).abs() < 1e-12);
        // Unequal lengths (a prefix that matches) and empty maps are not comparable.
        assert!(correlation(&a, &[1.0, 2.0, 3.0]).is_nan());
        assert!(correlation(&[], &[]).is_nan());
    }

    #[test]
    fn gradcam_is_relu_of_weighted_sum() {
        // two channels, 2x2; weights are the mean of dA: 1.0 and -0.5
        let a = Array3::from_shape_vec((2, 2, 2), vec![1., 2., 3., 4., 2., 2., 2., 10.]).unwrap();
        let da = Array3::from_shape_vec((2, 2, 2), vec![1., 1., 1., 1., 0., -1., -1., 0.]).unwrap();
        let cam = gradcam(a.view(), da.view());
        // 1*A0 - 0.5*A1 = [0, 1, 2, -1] -> relu
        assert_eq!(cam, array![[0., 1.], [2., 0.]]);
    }

    #[test]
    fn peak_is_the_first_maximum_in_row_order() {
        assert_eq!(peak(&array![[0.1f32, 0.2, 0.0], [0.3, 0.9, 0.5]]), (1, 1));
        assert_eq!(peak(&array![[-3.0f32, -1.0], [-2.0, -5.0]]), (0, 1));
        // Ties go to the first in row order, as numpy.argmax does.
        assert_eq!(peak(&array![[0.0f32, 0.7], [0.7, 0.1]]), (0, 1));
    }

    #[test]
    fn cam_fc_has_no_relu() {
        let a = Array3::from_shape_vec((2, 1, 2), vec![1., -1., 2., 3.]).unwrap();
        let w = array![2.0f32, -1.0];
        assert_eq!(cam_fc(a.view(), w.view()), array![[0., -5.]]);
        // compute_into takes the FC row for CAM, not the gradients (zero here).
        let mut out = Array2::zeros((1, 2));
        compute_into(
            Method::Cam,
            a.view(),
            Array3::zeros((2, 1, 2)).view(),
            Some(w.view()),
            &mut out,
        );
        assert_eq!(out, array![[0., -5.]]);
    }

    #[test]
    fn compute_into_reuses_the_buffer_for_gradcam_and_cam() {
        // The per-frame path allocates nothing for the two methods users run live.
        let a = Array3::from_shape_vec((2, 1, 2), vec![1., 2., 3., 4.]).unwrap();
        let da = Array3::from_shape_vec((2, 1, 2), vec![1., 1., 0., 0.]).unwrap();
        let w = array![1.0f32, 0.0];
        let mut out = Array2::zeros((1, 2));
        let ptr = out.as_ptr();
        compute_into(Method::GradCam, a.view(), da.view(), None, &mut out);
        assert_eq!((out.as_ptr(), &out), (ptr, &array![[1., 2.]]));
        compute_into(Method::Cam, a.view(), da.view(), Some(w.view()), &mut out);
        assert_eq!((out.as_ptr(), &out), (ptr, &array![[1., 2.]]));
        // The other methods hand back their own map.
        compute_into(Method::HiResCam, a.view(), da.view(), None, &mut out);
        assert_eq!(out, array![[1., 2.]]);
    }

    #[test]
    fn normalize_matches_pytorch_grad_cam() {
        let mut m = array![[2.0f32, 4.0], [6.0, 10.0]];
        normalize(m.view_mut());
        let want = [0.0, 0.25, 0.5, 1.0];
        for (g, w) in m.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "got {g}, want {w}");
        }
        // a constant map must not divide by zero
        let mut z = Array2::<f32>::from_elem((2, 2), 3.0);
        normalize(z.view_mut());
        assert!(z.iter().all(|&v| v == 0.0));
        // A range as small as the epsilon: pytorch-grad-cam's (x - min) / (range + 1e-7).
        let mut t = array![[1.0f32, 1.0 + 1.0 / 8_388_608.0]];
        let r = t[[0, 1]] - t[[0, 0]];
        normalize(t.view_mut());
        assert!((t[[0, 1]] - r / (r + 1e-7)).abs() < 1e-6, "{t}");
    }

    #[test]
    fn gradcam_equals_cam_for_spatially_constant_gradients() {
        // For GAP + FC heads dA_k = w_ck / (h*w) everywhere: Grad-CAM = ReLU(CAM) / (h*w).
        let a = Array3::from_shape_fn((3, 4, 5), |(k, i, j)| ((k * 7 + i * 3 + j) % 5) as f32 - 1.5);
        let w = array![0.3f32, -0.7, 1.1];
        let da = Array3::from_shape_fn((3, 4, 5), |(k, _, _)| w[k] / 20.0);
        let g = gradcam(a.view(), da.view());
        let c = cam_fc(a.view(), w.view()).mapv(|v| v.max(0.0) / 20.0);
        for (x, y) in g.iter().zip(c.iter()) {
            assert!((x - y).abs() < 1e-6, "gradcam {x} vs relu(cam)/hw {y}");
        }
    }

    #[test]
    fn elementwise_methods() {
        // one position each: A = [2, 3], g = [-1, 0.5] over 2 channels of 1x1
        let a = Array3::from_shape_vec((2, 1, 1), vec![2.0, 3.0]).unwrap();
        let g = Array3::from_shape_vec((2, 1, 1), vec![-1.0, 0.5]).unwrap();
        assert_eq!(
            raw(Method::HiResCam, a.view(), g.view(), None),
            array![[-2.0 + 1.5]]
        );
        assert_eq!(raw(Method::LayerCam, a.view(), g.view(), None), array![[1.5]]);
        assert_eq!(
            compute(Method::HiResCam, a.view(), g.view(), None),
            array![[0.0]],
            "ReLU"
        );
        // XGrad-CAM: a_k = g*A / (A + 1e-7) ~ g here, so the map ~ sum_k g_k A_k
        let x = raw(Method::XGradCam, a.view(), g.view(), None)[[0, 0]];
        assert!((x - (-0.5)).abs() < 1e-5, "{x}");
        // Where a channel sums to zero the 1e-7 alone is the denominator, and its sign is
        // pytorch-grad-cam's (+): A = [1, -1], g = [1, 0] gives a_k = 1 / 1e-7.
        let a = Array3::from_shape_vec((1, 1, 2), vec![1.0, -1.0]).unwrap();
        let g = Array3::from_shape_vec((1, 1, 2), vec![1.0, 0.0]).unwrap();
        let x = raw(Method::XGradCam, a.view(), g.view(), None);
        assert!(
            (x[[0, 0]] / 1e7 - 1.0).abs() < 1e-6 && (x[[0, 1]] / 1e7 + 1.0).abs() < 1e-6,
            "{x}"
        );
    }

    #[test]
    fn gradcam_plus_plus_weights() {
        // one channel, two positions: A = [1, 3] (sum 4), g = [0.5, 0]
        // alpha = g^2 / (2 g^2 + 4 g^3 + 1e-6) = 0.25 / (0.5 + 0.5 + 1e-6); g = 0 gives 0
        let a = Array3::from_shape_vec((1, 1, 2), vec![1.0, 3.0]).unwrap();
        let g = Array3::from_shape_vec((1, 1, 2), vec![0.5, 0.0]).unwrap();
        let w = 0.5 * 0.25 / (1.0 + 1e-6);
        let got = raw(Method::GradCamPP, a.view(), g.view(), None);
        assert!(
            (got[[0, 0]] - w).abs() < 1e-7 && (got[[0, 1]] - 3.0 * w).abs() < 1e-6,
            "{got}"
        );
    }

    #[test]
    fn eigen_projection_of_a_rank_one_map_has_its_shape_and_positive_peak() {
        // Every channel is a multiple of one spatial pattern f: the first principal axis is f.
        let f = [0.0f32, 1.0, 6.0, 2.0, -1.0, 3.0];
        let scale = [1.0f32, -2.0, 0.5];
        let a = Array3::from_shape_fn((3, 2, 3), |(k, i, j)| scale[k] * f[i * 3 + j]);
        let p = projection(a.view());
        let fc: Vec<f32> = {
            let m = f.iter().sum::<f32>() / 6.0;
            f.iter().map(|v| v - m).collect()
        };
        let r = correlation(p.as_slice().unwrap(), &fc);
        assert!(r > 0.999999, "correlation with the pattern {r}: {p}");
        let (lo, hi) = p.iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(
            hi >= -lo,
            "sign rule: the strongest response must be positive: {p}"
        );
        // Flipping the input flips nothing: the sign is fixed by the rule, not by the data's sign.
        let p2 = projection((-&a).view());
        assert!(max_diff(&p, &p2) < 1e-4, "{p} vs {p2}");
    }

    #[test]
    fn power_iteration_finds_the_top_eigenvector_and_stops_when_it_has() {
        // Eigenvalues 4 and 1 along (1, 1) and (1, -1): the error shrinks 4x an iteration, so
        // 1e-12 is reached in 20 (measured); a check that never fires would run all 2000.
        let g = [2.5, 1.5, 1.5, 2.5];
        let (v, it) = top_eigenvector(&g, 2);
        let s = std::f64::consts::FRAC_1_SQRT_2;
        assert!((v[0] - s).abs() < 1e-12 && (v[1] - s).abs() < 1e-12, "{v:?}");
        assert!((10..=40).contains(&it), "{it} iterations");
    }

    fn max_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
