//! CAM methods on one item's activations `A` [C,h,w] and gradients `dA` [C,h,w], with ndarray.
//!
//! Definitions follow pytorch-grad-cam (`base_cam.py`, `grad_cam.py`):
//! - Grad-CAM: `a_k = mean_ij dA_k(i,j)`, `L = ReLU(sum_k a_k A_k)`;
//! - CAM (Zhou et al. 2016) for GAP + fully-connected heads: `L = sum_k w_ck A_k`, with `w_c` the
//!   FC weight row of the class. The formula has no ReLU; the display normalization below maps
//!   its range to [0, 1] all the same.
//!
//! [`normalize`] is pytorch-grad-cam's `scale_cam_image` without the resize:
//! `(L - min) / (max(L - min) + 1e-7)`.

use ndarray::{Array2, ArrayView1, ArrayView3, ArrayViewMut2, Axis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Gradient-weighted class activation mapping.
    GradCam,
    /// Class activation mapping from the fully-connected weights (GAP + FC heads only).
    Cam,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gradcam" | "grad-cam" => Ok(Method::GradCam),
            "cam" => Ok(Method::Cam),
            other => Err(format!(
                "unknown CAM method '{other}' (expected gradcam or cam)"
            )),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::GradCam => "gradcam",
            Method::Cam => "cam",
        })
    }
}

/// Grad-CAM of one item into `out` [h,w] (no allocation).
pub fn gradcam_into(a: ArrayView3<f32>, da: ArrayView3<f32>, mut out: ArrayViewMut2<f32>) {
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
pub fn cam_fc_into(a: ArrayView3<f32>, w: ArrayView1<f32>, mut out: ArrayViewMut2<f32>) {
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
    let n = a.len().min(b.len()) as f64;
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

/// Mass-weighted centroid (x, y) in [0,1] map coordinates and the peak location.
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

/// The item's own slice of a batch output.
pub fn item<'a>(x: &'a ndarray::ArrayView4<'a, f32>, i: usize) -> ArrayView3<'a, f32> {
    x.index_axis(Axis(0), i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

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
    fn cam_fc_has_no_relu() {
        let a = Array3::from_shape_vec((2, 1, 2), vec![1., -1., 2., 3.]).unwrap();
        let w = array![2.0f32, -1.0];
        assert_eq!(cam_fc(a.view(), w.view()), array![[0., -5.]]);
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
    }

    #[test]
    fn gradcam_equals_cam_for_spatially_constant_gradients() {
        // For GAP + FC heads dA_k = w_ck / (h*w) everywhere: Grad-CAM = ReLU(CAM) / (h*w).
        let a = Array3::from_shape_fn((3, 4, 5), |(k, i, j)| {
            ((k * 7 + i * 3 + j) % 5) as f32 - 1.5
        });
        let w = array![0.3f32, -0.7, 1.1];
        let da = Array3::from_shape_fn((3, 4, 5), |(k, _, _)| w[k] / 20.0);
        let g = gradcam(a.view(), da.view());
        let c = cam_fc(a.view(), w.view()).mapv(|v| v.max(0.0) / 20.0);
        for (x, y) in g.iter().zip(c.iter()) {
            assert!((x - y).abs() < 1e-6, "gradcam {x} vs relu(cam)/hw {y}");
        }
    }
}
