//! `gradcamd compare`: the same preprocessed frames through two execution providers (e.g. CUDA
//! against the CPU), with the Grad-CAM of each frame compared. The GPU check uses it: the
//! frames come from `explain --save-input` on a machine with OpenCV, so the GPU machine needs
//! no decoder.

use ndarray::{ArrayView4, Axis};
use serde::Serialize;

use crate::cam::{self, correlation, Method};
use crate::cli::CompareArgs;
use crate::config::ProviderKind;
use crate::engine::{Engine, EngineOptions, Provider};
use crate::error::{fail, Classified, Kind};

#[derive(Serialize)]
pub(crate) struct Comparison {
    pub frames: usize,
    pub provider: String,
    pub reference: String,
    /// Largest |a - b| between the two raw Grad-CAM maps, relative to the largest |map| value.
    pub cam_max_abs_diff_rel: f64,
    pub cam_min_correlation: f64,
    pub top1_agree: usize,
}

/// Raw Grad-CAM maps and top-1 classes of every item.
fn run(e: &mut Engine, x: ArrayView4<f32>) -> anyhow::Result<(Vec<Vec<f32>>, Vec<i64>)> {
    let n = x.shape()[0];
    e.run_with(x, &vec![-1; n], |b| {
        let maps = (0..n)
            .map(|i| {
                cam::compute(
                    Method::GradCam,
                    b.a.index_axis(Axis(0), i),
                    b.da.index_axis(Axis(0), i),
                    None,
                )
                .iter()
                .copied()
                .collect()
            })
            .collect();
        (maps, b.class.to_vec())
    })
    .classified()
}

pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let model = crate::model::Model::load(&args.model, false)?;
    let (shape, data) = crate::npy::read_f32(&args.input).map_err(|e| fail(Kind::Input, e))?;
    let [n, c, h, w] = shape[..] else {
        return Err(fail(
            Kind::Input,
            format!(
                "{}: expected a [N,C,H,W] batch, got {shape:?}",
                args.input.display()
            ),
        ));
    };
    let x = ArrayView4::from_shape((n, c, h, w), &data).map_err(|e| fail(Kind::Input, e))?;
    let mk = |p: ProviderKind| -> anyhow::Result<Engine> {
        let opts = EngineOptions {
            provider: Provider::new(p, 0),
            ..Default::default()
        };
        Engine::new(&model.graph, &opts).classified()
    };
    let (mut a, mut b) = (mk(args.provider)?, mk(args.reference)?);
    let (pa, pb) = (a.provider_used.clone(), b.provider_used.clone());
    let (ma, ca) = run(&mut a, x)?;
    let (mb, cb) = run(&mut b, x)?;
    let mut worst_r = 1.0f64;
    let mut worst_d = 0.0f64;
    for (p, q) in ma.iter().zip(&mb) {
        let scale = q
            .iter()
            .map(|v| v.abs())
            .fold(0.0f32, f32::max)
            .max(f32::MIN_POSITIVE) as f64;
        let d = p.iter().zip(q).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) as f64 / scale;
        worst_d = worst_d.max(d);
        worst_r = worst_r.min(correlation(p, q));
    }
    let out = Comparison {
        frames: n,
        provider: pa,
        reference: pb,
        cam_max_abs_diff_rel: worst_d,
        cam_min_correlation: worst_r,
        top1_agree: ca.iter().zip(&cb).filter(|(x, y)| x == y).count(),
    };
    let text = serde_json::to_string_pretty(&out)?;
    match &args.json {
        Some(p) => std::fs::write(p, text + "\n")
            .map_err(|e| fail(Kind::Output, format!("cannot write {}: {e}", p.display())))?,
        None => crate::out!("{text}"),
    }
    crate::say!(
        "compare: {n} frames, {} vs {}: CAM max abs diff {:.2e} (relative), min correlation {:.6}, top-1 agree {}/{n}",
        out.provider, out.reference, out.cam_max_abs_diff_rel, out.cam_min_correlation, out.top1_agree
    );
    if worst_r < args.min_correlation {
        return Err(fail(
            Kind::Runtime,
            format!("CAM correlation {worst_r:.6} is below {}", args.min_correlation),
        ));
    }
    Ok(())
}
