//! Batch explanation, shared by the video pipeline and `explain`: one ORT run for a batch of
//! preprocessed inputs, then the CAM of each item's target class, computed from the outputs while
//! ORT still owns them. `topk:K` targets need K gradients per item: the extra classes run as a
//! second pass over replicated inputs, in batches, with explicit target classes.

use std::time::Duration;

use ndarray::{Array3, Axis};

use crate::cam::{self, Method};
use crate::engine::{BatchView, Engine, EngineError, InputSlot};
use crate::error::{fail, Kind};
use crate::frame::ClassMap;
use crate::model::Model;
use onnx_gradcam::augment::FcHead;

/// Which class(es) to explain for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSpec {
    Top1,
    Class(usize),
    /// The K best classes, one map each.
    TopK(usize),
}

/// What each source explains, changeable while the pipeline runs (MQTT's `target/set`): one
/// atomic per source, read by the batcher for every frame.
pub(crate) struct Targets(Vec<std::sync::atomic::AtomicU64>);

impl Targets {
    pub(crate) fn new(specs: &[TargetSpec]) -> Targets {
        Targets(
            specs
                .iter()
                .map(|t| std::sync::atomic::AtomicU64::new(Self::code(*t)))
                .collect(),
        )
    }

    fn code(t: TargetSpec) -> u64 {
        match t {
            TargetSpec::Top1 => 0,
            TargetSpec::Class(c) => 1 << 32 | (c as u64 & 0xffff_ffff),
            TargetSpec::TopK(k) => 2 << 32 | (k as u64 & 0xffff_ffff),
        }
    }

    /// Source `i`'s target (top-1 for a source it does not know).
    pub(crate) fn get(&self, i: usize) -> TargetSpec {
        let Some(v) = self.0.get(i) else {
            return TargetSpec::Top1;
        };
        let v = v.load(std::sync::atomic::Ordering::Relaxed);
        let n = (v & 0xffff_ffff) as usize;
        match v >> 32 {
            1 => TargetSpec::Class(n),
            2 => TargetSpec::TopK(n),
            _ => TargetSpec::Top1,
        }
    }

    pub(crate) fn set(&self, i: usize, t: TargetSpec) {
        if let Some(v) = self.0.get(i) {
            v.store(Self::code(t), std::sync::atomic::Ordering::Relaxed);
        }
    }
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

#[derive(Debug, Clone, Default)]
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
    /// CPU time of the last call's CAM math, so callers can report it apart from inference.
    pub cam_time: Duration,
    /// Per-item results, reused across calls: once warm, explaining a full batch with
    /// `gradcam` or `cam` allocates nothing.
    outs: Vec<ItemOut>,
    targets: Vec<i64>,
    /// (item, class) pairs of the extra `topk` classes, and their replicated inputs.
    extra: Vec<(usize, usize)>,
    replicated: Vec<f32>,
}

impl Explainer {
    pub fn new(
        engine: Engine,
        method: Method,
        fc: Option<FcHead>,
        batch_size: std::num::NonZeroUsize,
        item_dims: [usize; 3],
    ) -> Self {
        let batch_size = batch_size.get();
        Explainer {
            engine,
            method,
            fc,
            batch_size,
            item_dims,
            cam_time: Duration::ZERO,
            outs: Vec::new(),
            targets: Vec::with_capacity(batch_size),
            extra: Vec::new(),
            replicated: Vec::new(),
        }
    }

    /// Prepares `slots` input slots of `batch_size` items and runs each of them once. ORT's
    /// first run grows its memory arena and prepares kernels (tens of ms), and a binding's first
    /// run touches its buffers; doing it at start-up keeps that off the first frames' latency and
    /// makes an input the session cannot run fail before any output is written.
    pub fn warm_up(&mut self, slots: usize) -> Result<(), EngineError> {
        self.engine.prepare(self.batch_size, self.item_dims, slots)?;
        let specs = vec![TargetSpec::Top1; self.batch_size];
        let mut taken = Vec::new();
        let mut r = Ok(());
        while let Some(slot) = self.engine.take_slot() {
            r = r.and(self.explain_slot(&slot, &specs, false).map(drop));
            taken.push(slot);
        }
        for slot in taken {
            self.engine.put_slot(slot);
        }
        r
    }

    fn item_len(&self) -> usize {
        self.item_dims.iter().product()
    }

    /// Size of the maps the last call made (feature resolution), once warm.
    pub(crate) fn cam_dims(&self) -> Option<(usize, usize)> {
        self.outs.first()?.maps.first().map(|m| m.cam.dim())
    }

    /// An input slot to fill with up to `batch_size` items (see [`Engine::take_slot`]).
    pub fn take_slot(&mut self) -> Result<InputSlot, EngineError> {
        if self.engine.batch_capacity() == 0 {
            self.engine.prepare(self.batch_size, self.item_dims, 1)?;
        }
        self.engine
            .take_slot()
            .ok_or_else(|| EngineError::Run("every input slot is in use".into()))
    }

    pub(crate) fn put_slot(&mut self, slot: InputSlot) {
        self.engine.put_slot(slot);
    }

    /// Explains the `specs.len()` items in `input` (item after item). `input` holds at most
    /// `batch_size` items; it is copied into an input slot.
    pub fn explain(
        &mut self,
        input: &[f32],
        specs: &[TargetSpec],
        keep_tensors: bool,
    ) -> Result<&mut [ItemOut], EngineError> {
        let len = specs.len() * self.item_len();
        let mut slot = self.take_slot()?;
        let r = match (slot.data_mut().get_mut(..len), input.get(..len)) {
            (Some(dst), Some(src)) => {
                dst.copy_from_slice(src);
                self.explain_slot(&slot, specs, keep_tensors).map(|o| o.len())
            }
            _ => Err(EngineError::Run(format!(
                "a batch of {} items does not fit the input or the batch buffer",
                specs.len()
            ))),
        };
        self.put_slot(slot);
        r.map(|n| &mut self.outs[..n])
    }

    /// Explains the first `specs.len()` items of `slot`.
    /// The first `n` results of the last call (what it returned).
    pub(crate) fn last_outs(&mut self, n: usize) -> &mut [ItemOut] {
        let n = n.min(self.outs.len());
        &mut self.outs[..n]
    }

    pub(crate) fn explain_slot(
        &mut self,
        slot: &InputSlot,
        specs: &[TargetSpec],
        keep_tensors: bool,
    ) -> Result<&mut [ItemOut], EngineError> {
        let n = specs.len();
        let len = self.item_len();
        if n > self.batch_size {
            return Err(EngineError::Run(format!(
                "{n} items exceed the batch size {}",
                self.batch_size
            )));
        }
        let Explainer {
            engine,
            method,
            fc,
            outs,
            targets,
            extra,
            ..
        } = self;
        let (method, fc) = (*method, fc.as_ref());
        // Only Grad-CAM can come whole from a server's in-graph map; the other methods and
        // saved tensors need A and dA.
        engine.want_tensors(keep_tensors || method != Method::GradCam);
        targets.clear();
        targets.extend(specs.iter().map(|s| s.first_target()));
        if outs.len() < n {
            outs.resize_with(n, ItemOut::default);
        }
        extra.clear();
        let mut cam_time = Duration::ZERO;
        engine.run_slot(slot, n, targets, |b| {
            let t = crate::cpu::Span::start();
            for (i, spec) in specs.iter().enumerate() {
                let out = &mut outs[i];
                let row = b.logits.index_axis(Axis(0), i);
                let soft = Softmax::of(row.iter().copied());
                let k = match spec {
                    TargetSpec::TopK(k) => (*k).max(5),
                    _ => 5,
                };
                top_k_into(row.iter().copied(), k, &soft, &mut out.top5);
                if let TargetSpec::TopK(k) = spec {
                    extra.extend(out.top5.iter().skip(1).take(k - 1).map(|&(cl, _)| (i, cl)));
                }
                out.top5.truncate(5);
                let class = b.class.get(i).map_or(0, |&c| c.max(0) as usize);
                out.tensors = keep_tensors.then(|| {
                    (
                        b.a.index_axis(Axis(0), i).to_owned(),
                        b.da.index_axis(Axis(0), i).to_owned(),
                    )
                });
                out.maps.truncate(1);
                if out.maps.is_empty() {
                    out.maps.push(ClassMap::empty());
                }
                class_map_into(&b, i, class, method, fc, &soft, &mut out.maps[0]);
            }
            cam_time += t.elapsed();
        })?;

        // topk: the other classes, on replicated inputs with explicit targets (an ordinary
        // run: `topk` is not the allocation-free path).
        let extra = std::mem::take(&mut self.extra);
        let [c, h, w] = self.item_dims;
        for chunk in extra.chunks(self.batch_size) {
            let m = chunk.len();
            self.replicated.resize(m * len, 0.0);
            let src = slot.data();
            for (j, &(i, _)) in chunk.iter().enumerate() {
                self.replicated[j * len..(j + 1) * len].copy_from_slice(&src[i * len..(i + 1) * len]);
            }
            self.targets.clear();
            self.targets.extend(chunk.iter().map(|&(_, cl)| cl as i64));
            let outs = &mut self.outs;
            let view = ndarray::ArrayView4::from_shape((m, c, h, w), &self.replicated[..])
                .map_err(|e| EngineError::Run(format!("input buffer: {e}")))?;
            self.engine.run_with(view, &self.targets, |b| {
                let t = crate::cpu::Span::start();
                for (j, &(i, cl)) in chunk.iter().enumerate() {
                    let row = b.logits.index_axis(Axis(0), j);
                    let soft = Softmax::of(row.iter().copied());
                    let mut m = ClassMap::empty();
                    class_map_into(&b, j, cl, method, fc, &soft, &mut m);
                    outs[i].maps.push(m);
                }
                cam_time += t.elapsed();
            })?;
        }
        self.extra = extra;
        self.cam_time = cam_time;
        Ok(&mut self.outs[..n])
    }
}

fn class_map_into(
    b: &BatchView,
    i: usize,
    class: usize,
    method: Method,
    fc: Option<&FcHead>,
    soft: &Softmax,
    dst: &mut ClassMap,
) {
    let row = b.logits.index_axis(Axis(0), i);
    dst.class = class;
    dst.score = row.get(class).copied().unwrap_or(f32::NAN);
    dst.prob = soft.prob(dst.score);
    match (&b.cam, method) {
        // The in-graph map is Grad-CAM, already after its ReLU.
        (Some(c), Method::GradCam) => {
            let c = c.index_axis(Axis(0), i);
            if dst.cam.dim() == c.dim() {
                dst.cam.assign(&c);
            } else {
                dst.cam = c.to_owned();
            }
        }
        _ => {
            let fc_row = fc.and_then(|fc| {
                fc.weights
                    .get(class * fc.channels..(class + 1) * fc.channels)
                    .map(ndarray::ArrayView1::from)
            });
            let (a, da) = (b.a.index_axis(Axis(0), i), b.da.index_axis(Axis(0), i));
            cam::compute_into(method, a, da, fc_row, &mut dst.cam);
        }
    }
}

/// Softmax of one row of logits, computed stably once (max, then the sum of exponentials) so
/// that each probability after costs one exponential.
struct Softmax {
    max: f32,
    sum: f64,
}

impl Softmax {
    fn of(logits: impl Iterator<Item = f32> + Clone) -> Softmax {
        let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
        let sum = logits.map(|v| ((v - max) as f64).exp()).sum();
        Softmax { max, sum }
    }

    fn prob(&self, logit: f32) -> f32 {
        (((logit - self.max) as f64).exp() / self.sum) as f32
    }
}

/// The `k` best classes with their softmax probabilities, best first, into `out` (which keeps
/// its capacity: no allocation once it has held `k` entries).
fn top_k_into(logits: impl Iterator<Item = f32>, k: usize, soft: &Softmax, out: &mut Vec<(usize, f32)>) {
    out.clear();
    if k == 0 {
        return;
    }
    out.reserve(k);
    for (i, v) in logits.enumerate() {
        if out.len() == k {
            match out.last() {
                Some(&(_, worst)) if v.total_cmp(&worst).is_gt() => {
                    out.pop();
                }
                _ => continue,
            }
        }
        // Insert after every entry at least as large: ties keep the lower class first.
        let at = out.partition_point(|&(_, x)| x.total_cmp(&v).is_ge());
        out.insert(at, (i, v));
    }
    for e in out.iter_mut() {
        e.1 = soft.prob(e.1);
    }
}

/// The `k` best classes with their softmax probabilities, best first.
/// Parses a target (`top1`, `topk:K`, a class index or a label) against the model's labels.
pub(crate) fn resolve_target(model: &Model, target: &str) -> anyhow::Result<TargetSpec> {
    TargetSpec::parse(target, |t| model.sidecar.class_of(t), model.num_classes())
        .map_err(|e| fail(Kind::Config, format!("target: {e}")))
}

/// Fails unless `method` can run on this model.
pub(crate) fn check_method(model: &Model, method: Method) -> anyhow::Result<()> {
    if method == Method::Cam && model.graph.fc.is_none() {
        let head: Vec<&str> = model.graph.head.iter().map(|(op, _)| op.as_str()).collect();
        return Err(fail(
            Kind::Unsupported,
            format!(
                "method \"cam\" needs a global-average-pool + fully-connected head, and {} has {}; use method = \"gradcam\"",
                model.path.display(),
                head.join(" → ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
fn ranked(logits: impl Iterator<Item = f32> + Clone, k: usize) -> Vec<(usize, f32)> {
    let mut out = Vec::new();
    top_k_into(logits.clone(), k, &Softmax::of(logits), &mut out);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn targets_hold_each_sources_spec_and_change_one_at_a_time() {
        let t = Targets::new(&[TargetSpec::Top1, TargetSpec::TopK(3)]);
        assert_eq!(
            (t.get(0), t.get(1), t.get(7)),
            (TargetSpec::Top1, TargetSpec::TopK(3), TargetSpec::Top1)
        );
        t.set(0, TargetSpec::Class(281));
        assert_eq!(
            (t.get(0), t.get(1)),
            (TargetSpec::Class(281), TargetSpec::TopK(3))
        );
        t.set(0, TargetSpec::Class(0));
        assert_eq!(t.get(0), TargetSpec::Class(0));
        t.set(0, TargetSpec::Top1);
        t.set(7, TargetSpec::Class(1));
        assert_eq!(t.get(0), TargetSpec::Top1);
    }

    use super::*;

    /// Softmax probability of `class`, computed independently of [`Softmax`].
    fn softmax_at(class: usize, logits: impl Iterator<Item = f32> + Clone) -> f32 {
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
        // The bounds, on both sides: K up to 16 and up to the class count, indexes below it.
        let index = |s: &str| s.parse().map_err(|_| String::new());
        assert_eq!(
            TargetSpec::parse("topk:16", class_of, Some(1000)),
            Ok(TargetSpec::TopK(16))
        );
        assert!(TargetSpec::parse("topk:17", class_of, Some(1000)).is_err());
        assert_eq!(
            TargetSpec::parse("topk:10", class_of, Some(10)),
            Ok(TargetSpec::TopK(10))
        );
        assert_eq!(
            TargetSpec::parse("topk:1", class_of, Some(10)),
            Ok(TargetSpec::Top1)
        );
        assert_eq!(TargetSpec::parse("9", index, Some(10)), Ok(TargetSpec::Class(9)));
        assert!(TargetSpec::parse("10", index, Some(10)).is_err());
    }

    #[test]
    fn ranking_and_softmax() {
        let l = [1.0f32, 3.0, 2.0, 0.5];
        let r = ranked(l.iter().copied(), 3);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        let total: f32 = (0..4).map(|i| softmax_at(i, l.iter().copied())).sum();
        assert!((total - 1.0).abs() < 1e-6);
        for &(c, p) in &r {
            assert!((p - softmax_at(c, l.iter().copied())).abs() < 1e-7, "class {c}");
        }
        assert!(r[0].1 > r[1].1 && r[1].1 > r[2].1);
    }
}
