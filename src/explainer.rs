//! Batch explanation, shared by the video pipeline and `explain`: one ORT run for a batch of
//! preprocessed inputs, then the CAM of each item's target class, computed from the outputs while
//! ORT still owns them. `topk:K` targets need K gradients per item: the extra classes run as a
//! second pass over replicated inputs, in batches, with explicit target classes.

use std::time::{Duration, Instant};

use ndarray::{Array2, Array3, ArrayView4, Axis};

use crate::cam::{self, Method};
use crate::engine::{BatchView, Engine, EngineError};
use crate::onnx::augment::FcHead;

/// Which class(es) to explain for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSpec {
    Top1,
    Class(usize),
    /// The K best classes, one map each.
    TopK(usize),
}

impl TargetSpec {
    /// `top1`, `topk:K`, a class index, or a label (any synonym, case-insensitive).
    pub fn parse(
        s: &str,
        class_of: impl Fn(&str) -> Result<usize, String>,
        classes: Option<usize>,
    ) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("top1") {
            return Ok(TargetSpec::Top1);
        }
        if let Some(k) = t.strip_prefix("topk:").or_else(|| t.strip_prefix("top")) {
            if let Ok(k) = k.parse::<usize>() {
                if k == 0 || k > 16 {
                    return Err(format!("\"{s}\": K must be 1..=16"));
                }
                if let Some(n) = classes.filter(|&n| k > n) {
                    return Err(format!("\"{s}\": the model has only {n} classes"));
                }
                return Ok(if k == 1 {
                    TargetSpec::Top1
                } else {
                    TargetSpec::TopK(k)
                });
            }
        }
        let c = class_of(t)?;
        if let Some(n) = classes.filter(|&n| c >= n) {
            return Err(format!("class {c} is out of range: the model has {n} classes"));
        }
        Ok(TargetSpec::Class(c))
    }

    fn first_target(self) -> i64 {
        match self {
            TargetSpec::Class(c) => c as i64,
            _ => -1,
        }
    }
}

/// One class's explanation of one item.
#[derive(Debug, Clone)]
pub struct ClassMap {
    pub class: usize,
    /// Softmax probability of the class.
    pub prob: f32,
    /// Raw score (logit) of the class.
    pub score: f32,
    /// The method's map at feature resolution, before normalization.
    pub cam: Array2<f32>,
}

#[derive(Debug, Clone)]
pub struct ItemOut {
    /// One map per explained class, best first for `topk`.
    pub maps: Vec<ClassMap>,
    /// The five best classes with their softmax probabilities.
    pub top5: Vec<(usize, f32)>,
    /// A and dA of the first map, when asked for.
    pub tensors: Option<(Array3<f32>, Array3<f32>)>,
}

pub struct Explainer {
    pub engine: Engine,
    pub method: Method,
    pub fc: Option<FcHead>,
    pub batch_size: usize,
    /// Shape of one input item, e.g. [3, 224, 224].
    pub item_dims: [usize; 3],
    /// Replicated inputs for the extra classes of `topk`, reused across calls.
    extra: Vec<f32>,
    /// CAM time of the last call, so callers can report it apart from inference.
    pub cam_time: Duration,
}

impl Explainer {
    pub fn new(
        engine: Engine,
        method: Method,
        fc: Option<FcHead>,
        batch_size: usize,
        item_dims: [usize; 3],
    ) -> Self {
        Explainer {
            engine,
            method,
            fc,
            batch_size,
            item_dims,
            extra: Vec::new(),
            cam_time: Duration::ZERO,
        }
    }

    fn item_len(&self) -> usize {
        self.item_dims.iter().product()
    }

    /// Explains the `specs.len()` items in `input` (item after item). `input` holds at most
    /// `batch_size` items.
    pub fn explain(
        &mut self,
        input: &[f32],
        specs: &[TargetSpec],
        keep_tensors: bool,
    ) -> Result<Vec<ItemOut>, EngineError> {
        let n = specs.len();
        let len = self.item_len();
        let [c, h, w] = self.item_dims;
        let view = ArrayView4::from_shape((n, c, h, w), &input[..n * len])
            .map_err(|e| EngineError::Run(format!("input buffer: {e}")))?;
        let targets: Vec<i64> = specs.iter().map(|s| s.first_target()).collect();
        let (method, fc) = (self.method, self.fc.as_ref());
        let mut cam_time = Duration::ZERO;
        let (mut outs, extra) = self.engine.run_with(view, &targets, |b| {
            let t = Instant::now();
            let mut outs = Vec::with_capacity(n);
            let mut extra: Vec<(usize, usize)> = Vec::new();
            for (i, spec) in specs.iter().enumerate() {
                let row = b.logits.index_axis(Axis(0), i);
                let ranked = ranked(
                    row.iter().copied(),
                    match spec {
                        TargetSpec::TopK(k) => (*k).max(5),
                        _ => 5,
                    },
                );
                if let TargetSpec::TopK(k) = spec {
                    extra.extend(ranked.iter().skip(1).take(k - 1).map(|&(cl, _)| (i, cl)));
                }
                let class = b.class[i].max(0) as usize;
                let tensors = keep_tensors.then(|| {
                    (
                        b.a.index_axis(Axis(0), i).to_owned(),
                        b.da.index_axis(Axis(0), i).to_owned(),
                    )
                });
                outs.push(ItemOut {
                    maps: vec![class_map(&b, i, class, method, fc)],
                    top5: ranked.into_iter().take(5).collect(),
                    tensors,
                });
            }
            cam_time += t.elapsed();
            (outs, extra)
        })?;

        // topk: the other classes, on replicated inputs with explicit targets.
        for chunk in extra.chunks(self.batch_size.max(1)) {
            let m = chunk.len();
            self.extra.resize(m * len, 0.0);
            for (j, &(i, _)) in chunk.iter().enumerate() {
                self.extra[j * len..(j + 1) * len].copy_from_slice(&input[i * len..(i + 1) * len]);
            }
            let view = ArrayView4::from_shape((m, c, h, w), &self.extra[..m * len])
                .map_err(|e| EngineError::Run(format!("input buffer: {e}")))?;
            let targets: Vec<i64> = chunk.iter().map(|&(_, cl)| cl as i64).collect();
            let maps = self.engine.run_with(view, &targets, |b| {
                let t = Instant::now();
                let maps: Vec<ClassMap> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, &(_, cl))| class_map(&b, j, cl, method, fc))
                    .collect();
                cam_time += t.elapsed();
                maps
            })?;
            for (&(i, _), map) in chunk.iter().zip(maps) {
                outs[i].maps.push(map);
            }
        }
        self.cam_time = cam_time;
        Ok(outs)
    }
}

fn class_map(b: &BatchView, i: usize, class: usize, method: Method, fc: Option<&FcHead>) -> ClassMap {
    let row = b.logits.index_axis(Axis(0), i);
    let a = b.a.index_axis(Axis(0), i);
    let cam = match (&b.cam, method) {
        // The in-graph map is Grad-CAM, already after its ReLU.
        (Some(c), Method::GradCam) => c.index_axis(Axis(0), i).to_owned(),
        _ => {
            let fc_row = fc.and_then(|fc| {
                fc.weights
                    .get(class * fc.channels..(class + 1) * fc.channels)
                    .map(ndarray::ArrayView1::from)
            });
            cam::compute(method, a, b.da.index_axis(Axis(0), i), fc_row)
        }
    };
    ClassMap {
        class,
        prob: softmax_at(class, row.iter().copied()),
        score: row.get(class).copied().unwrap_or(f32::NAN),
        cam,
    }
}

/// The `k` best classes with their softmax probabilities, best first.
fn ranked(logits: impl Iterator<Item = f32> + Clone, k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<(usize, f32)> = logits.clone().enumerate().collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    idx.truncate(k);
    idx.sort_by(|a, b| b.1.total_cmp(&a.1));
    idx.into_iter()
        .map(|(i, _)| (i, softmax_at(i, logits.clone())))
        .collect()
}

/// Softmax probability of `class`, computed stably.
pub fn softmax_at(class: usize, logits: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    let mut at = 0.0f64;
    for (i, v) in logits.enumerate() {
        let e = ((v - max) as f64).exp();
        sum += e;
        if i == class {
            at = e;
        }
    }
    (at / sum) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(s: &str) -> Result<usize, String> {
        match s {
            "cat" => Ok(3),
            _ => Err(format!("unknown class label \"{s}\"")),
        }
    }

    #[test]
    fn target_specs() {
        assert_eq!(
            TargetSpec::parse("top1", class_of, Some(10)),
            Ok(TargetSpec::Top1)
        );
        assert_eq!(
            TargetSpec::parse("topk:3", class_of, Some(10)),
            Ok(TargetSpec::TopK(3))
        );
        assert_eq!(
            TargetSpec::parse("7", |s| s.parse().map_err(|_| String::new()), Some(10)),
            Ok(TargetSpec::Class(7))
        );
        assert_eq!(
            TargetSpec::parse("cat", class_of, Some(10)),
            Ok(TargetSpec::Class(3))
        );
        assert!(TargetSpec::parse("topk:0", class_of, Some(10)).is_err());
        assert!(TargetSpec::parse("topk:11", class_of, Some(10))
            .unwrap_err()
            .contains("only 10"));
        assert!(TargetSpec::parse("dog", class_of, Some(10))
            .unwrap_err()
            .contains("dog"));
    }

    #[test]
    fn ranking_and_softmax() {
        let l = [1.0f32, 3.0, 2.0, 0.5];
        let r = ranked(l.iter().copied(), 3);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        let total: f32 = (0..4).map(|i| softmax_at(i, l.iter().copied())).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(r[0].1 > r[1].1 && r[1].1 > r[2].1);
    }
}
