//! Backward (vector-Jacobian product) rules, one per ONNX op that sits between a CNN's last
//! feature map and its logits. Each rule gets the gradient of the node's first output and emits
//! ONNX nodes that compute the gradient of each input that depends on the target tensor.
//!
//! Conventions follow torch autograd at kinks (ReLU'(0) = 0, strict inequalities for Clip,
//! HardSwish' = x/3 + 1/2 on [-3, 3]) so that results match pytorch-grad-cam exactly. Shapes are
//! never assumed: anything that depends on the batch size is computed with `Shape`/`Size`.
//!
//! To add an op: add its name to [`SUPPORTED`], write the rule in [`backward`], and add a tiny
//! model for it to `tools/make_tiny_models.py` so the test suite checks it against autograd.

use std::collections::HashSet;

use super::builder::{Attr, Builder};
use super::model::{attr_f, attr_i, attr_ints, OnnxModel};
use super::proto::NodeProto;
use super::OnnxError;

/// Ops with a backward rule, as listed in errors and in `gradcamd inspect`.
pub(crate) const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "Div",
    "Dropout",
    "Erf",
    "Exp",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

pub fn is_supported(op: &str) -> bool {
    SUPPORTED.iter().any(|s| s.split('(').next() == Some(op))
}

pub(crate) struct Ctx<'a> {
    pub m: &'a OnnxModel,
    pub b: &'a mut Builder,
    /// Tensors whose value depends on the target tensor (the ones that get gradients).
    pub diff: &'a HashSet<String>,
}

impl Ctx<'_> {
    pub(crate) fn rank(&self, t: &str, node: usize) -> Result<usize, OnnxError> {
        self.m.rank(t).ok_or_else(|| OnnxError::Unsupported {
            op: self.m.node(node).op_type.clone(),
            node: self.m.node(node).name.clone(),
            why: format!(
                "the rank of tensor '{t}' is unknown (no value_info); run onnx shape inference on the model"
            ),
        })
    }

    /// Refuses node `ni` when an input after its first depends on the target tensor (a weight,
    /// a shape, pads...): its rule gives the first input's gradient only. `why` says which.
    pub(crate) fn only_first(&self, ni: usize, n: &NodeProto, why: &str) -> Result<(), OnnxError> {
        if n.input.iter().skip(1).any(|i| self.diff.contains(i)) {
            Err(self.unsupported(ni, why))
        } else {
            Ok(())
        }
    }

    pub(crate) fn unsupported(&self, node: usize, why: impl Into<String>) -> OnnxError {
        let n = self.m.node(node);
        OnnxError::Unsupported {
            op: n.op_type.clone(),
            node: n.name.clone(),
            why: why.into(),
        }
    }

    /// Sums `g` down to the shape of `x`, undoing numpy broadcasting: first over the leading
    /// axes `x` lacks, then over every axis where `x` has size 1. The size-1 axes are found at
    /// run time (`Shape` → `Equal 1` → `NonZero`), so a symbolic batch dimension works.
    fn unbroadcast(&mut self, g: &str, x: &str, node: usize) -> Result<String, OnnxError> {
        // `g` always has the rank of the node's output, whose shape is the broadcast one.
        let rg = self.rank(&self.m.node(node).output[0], node)?;
        let rx = self.rank(x, node)?;
        let mut g = g.to_string();
        if rg > rx {
            let lead: Vec<i64> = (0..(rg - rx) as i64).collect();
            g = self.b.reduce("ReduceSum", &g, &lead, false);
        }
        if rx == 0 {
            return Ok(g);
        }
        let shape = self.b.op("Shape", &[x], vec![]);
        let one = self.b.ints(&[1]);
        let is_one = self.b.op("Equal", &[&shape, &one], vec![]);
        let nz = self.b.op("NonZero", &[&is_one], vec![]);
        let flat = self.b.ints(&[-1]);
        let axes = self.b.op("Reshape", &[&nz, &flat], vec![]);
        Ok(self.b.op(
            "ReduceSum",
            &[&g, &axes],
            vec![("keepdims", Attr::I(1)), ("noop_with_empty_axes", Attr::I(1))],
        ))
    }

    /// A possibly negative axis attribute, checked against the rank.
    pub(crate) fn axis(&self, axis: i64, rank: i64, node: usize) -> Result<i64, OnnxError> {
        let a = if axis < 0 { axis.saturating_add(rank) } else { axis };
        if (0..rank).contains(&a) {
            Ok(a)
        } else {
            Err(self.unsupported(node, format!("axis {axis} is out of range for rank {rank}")))
        }
    }

    fn reshape_like(&mut self, g: &str, x: &str) -> String {
        let s = self.b.op("Shape", &[x], vec![]);
        self.b.op("Reshape", &[g, &s], vec![])
    }

    fn mask(&mut self, cond: &str, g: &str) -> String {
        let zero = self.b.scalar(0.0);
        self.b.op("Where", &[cond, g, &zero], vec![])
    }
}

/// Emits the backward of node `ni` given `g`, the gradient of its first output. Returns the
/// gradient of each differentiable input as `(input index, tensor name)`.
pub(crate) fn backward(cx: &mut Ctx, ni: usize, g: &str) -> Result<Vec<(usize, String)>, OnnxError> {
    let n = cx.m.node(ni).clone();
    // Corrupt or hand-made graphs can lack required inputs; index only after this check.
    let arity = match n.op_type.as_str() {
        "BatchNormalization" => 5,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Gemm" | "MatMul" | "LayerNormalization" | "Gather"
        | "Conv" => 2,
        _ => 1,
    };
    if n.input.len() < arity || n.input[..arity].iter().any(String::is_empty) || n.output.is_empty() {
        return Err(cx.unsupported(
            ni,
            format!(
                "the node has {} inputs; {} needs {arity}",
                n.input.len(),
                n.op_type
            ),
        ));
    }
    let x = n.input[0].clone();
    let y = n.output[0].clone();
    let d = |i: usize| n.input.get(i).is_some_and(|s| cx.diff.contains(s));
    if !n.domain.is_empty() && n.domain != "ai.onnx" {
        return Err(cx.unsupported(ni, format!("custom domain '{}'", n.domain)));
    }
    let only_x = |cx: &Ctx, what: &str| -> Result<(), OnnxError> {
        cx.only_first(ni, &n, &format!("the gradient would have to flow into {what}"))
    };

    let grads = match n.op_type.as_str() {
        "Identity" | "Dropout" => vec![(0, g.to_string())],
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            only_x(cx, "the shape input")?;
            vec![(0, cx.reshape_like(g, &x))]
        }
        "Neg" => vec![(0, cx.b.op("Neg", &[g], vec![]))],
        // Unary ops written with their output y where that is cheaper.
        "Sqrt" => {
            // d sqrt(x) = 1 / (2 y)
            let two = cx.b.scalar(2.0);
            let ty = cx.b.op("Mul", &[&y, &two], vec![]);
            vec![(0, cx.b.op("Div", &[g, &ty], vec![]))]
        }
        "Reciprocal" => {
            // d (1/x) = -y^2
            let yy = cx.b.op("Mul", &[&y, &y], vec![]);
            let gy = cx.b.op("Mul", &[g, &yy], vec![]);
            vec![(0, cx.b.op("Neg", &[&gy], vec![]))]
        }
        "Exp" => vec![(0, cx.b.op("Mul", &[g, &y], vec![]))],
        "Erf" => {
            // d erf(x) / dx = 2 / sqrt(pi) * exp(-x^2): GELU as ConvNeXt and the dynamo exporter write it.
            let xx = cx.b.op("Mul", &[&x, &x], vec![]);
            let nxx = cx.b.op("Neg", &[&xx], vec![]);
            let e = cx.b.op("Exp", &[&nxx], vec![]);
            let c = cx.b.scalar(std::f64::consts::FRAC_2_SQRT_PI);
            let d = cx.b.op("Mul", &[&e, &c], vec![]);
            vec![(0, cx.b.op("Mul", &[g, &d], vec![]))]
        }
        "Concat" => super::spatial::concat(cx, ni, &n, g)?,
        "Slice" => super::spatial::slice(cx, ni, &n, g)?,
        "Tanh" => {
            let one = cx.b.scalar(1.0);
            let yy = cx.b.op("Mul", &[&y, &y], vec![]);
            let d = cx.b.op("Sub", &[&one, &yy], vec![]);
            vec![(0, cx.b.op("Mul", &[g, &d], vec![]))]
        }
        "Pow" => {
            // x^e with an exponent that does not depend on the target: e * x^(e-1).
            only_x(cx, "the exponent")?;
            let e = n.input[1].clone();
            let one = cx.b.scalar(1.0);
            let ef =
                cx.b.op("Cast", &[&e], vec![("to", Attr::I(cx.b.elem_type as i64))]);
            let em1 = cx.b.op("Sub", &[&ef, &one], vec![]);
            let p = cx.b.op("Pow", &[&x, &em1], vec![]);
            let d = cx.b.op("Mul", &[&p, &ef], vec![]);
            let gd = cx.b.op("Mul", &[g, &d], vec![]);
            vec![(0, cx.unbroadcast(&gd, &x, ni)?)]
        }
        "Relu" => {
            let zero = cx.b.scalar(0.0);
            let pos = cx.b.op("Greater", &[&x, &zero], vec![]);
            vec![(0, cx.mask(&pos, g))]
        }
        "LeakyRelu" => {
            let alpha = attr_f(&n, "alpha").unwrap_or(0.01) as f64;
            let zero = cx.b.scalar(0.0);
            let one = cx.b.scalar(1.0);
            let a = cx.b.scalar(alpha);
            let pos = cx.b.op("Greater", &[&x, &zero], vec![]);
            let slope = cx.b.op("Where", &[&pos, &one, &a], vec![]);
            vec![(0, cx.b.op("Mul", &[g, &slope], vec![]))]
        }
        "Clip" => {
            only_x(cx, "the min/max inputs")?;
            let (lo, hi) = if cx.m.opset >= 11 {
                let get = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).cloned();
                (get(1), get(2))
            } else {
                let lo = attr_f(&n, "min").map(|v| cx.b.scalar(v as f64));
                let hi = attr_f(&n, "max").map(|v| cx.b.scalar(v as f64));
                (lo, hi)
            };
            let mut cond: Option<String> = None;
            if let Some(lo) = lo {
                cond = Some(cx.b.op("Greater", &[&x, &lo], vec![]));
            }
            if let Some(hi) = hi {
                let c = cx.b.op("Less", &[&x, &hi], vec![]);
                cond = Some(match cond {
                    Some(p) => cx.b.op("And", &[&p, &c], vec![]),
                    None => c,
                });
            }
            match cond {
                Some(c) => vec![(0, cx.mask(&c, g))],
                None => vec![(0, g.to_string())],
            }
        }
        "Sigmoid" => {
            let one = cx.b.scalar(1.0);
            let om = cx.b.op("Sub", &[&one, &y], vec![]);
            let dy = cx.b.op("Mul", &[&y, &om], vec![]);
            vec![(0, cx.b.op("Mul", &[g, &dy], vec![]))]
        }
        "HardSigmoid" => {
            let alpha = attr_f(&n, "alpha").unwrap_or(0.2) as f64;
            let beta = attr_f(&n, "beta").unwrap_or(0.5) as f64;
            let a = cx.b.scalar(alpha);
            let bb = cx.b.scalar(beta);
            let ax = cx.b.op("Mul", &[&x, &a], vec![]);
            let t = cx.b.op("Add", &[&ax, &bb], vec![]);
            let zero = cx.b.scalar(0.0);
            let one = cx.b.scalar(1.0);
            let c0 = cx.b.op("Greater", &[&t, &zero], vec![]);
            let c1 = cx.b.op("Less", &[&t, &one], vec![]);
            let c = cx.b.op("And", &[&c0, &c1], vec![]);
            let ga = cx.b.op("Mul", &[g, &a], vec![]);
            vec![(0, cx.mask(&c, &ga))]
        }
        "HardSwish" => {
            // torch: x < -3 -> 0; x <= 3 -> g * (x/3 + 1/2); else g
            let m3 = cx.b.scalar(-3.0);
            let p3 = cx.b.scalar(3.0);
            let half = cx.b.scalar(0.5);
            let x3 = cx.b.op("Div", &[&x, &p3], vec![]);
            let slope = cx.b.op("Add", &[&x3, &half], vec![]);
            let gs = cx.b.op("Mul", &[g, &slope], vec![]);
            let le = cx.b.op("LessOrEqual", &[&x, &p3], vec![]);
            let mid = cx.b.op("Where", &[&le, &gs, g], vec![]);
            let lo = cx.b.op("Less", &[&x, &m3], vec![]);
            let zero = cx.b.scalar(0.0);
            vec![(0, cx.b.op("Where", &[&lo, &zero, &mid], vec![]))]
        }
        "Softmax" | "LogSoftmax" => {
            // Opset 13 semantics only (augment refuses older models): one axis, the last by
            // default, not a 2-D view flattened at `axis`.
            let r = cx.rank(&x, ni)? as i64;
            let axis = cx.axis(attr_i(&n, "axis").unwrap_or(-1), r, ni)?;
            if n.op_type == "Softmax" {
                let gy = cx.b.op("Mul", &[g, &y], vec![]);
                let s = cx.b.reduce("ReduceSum", &gy, &[axis], true);
                let diff = cx.b.op("Sub", &[g, &s], vec![]);
                vec![(0, cx.b.op("Mul", &[&y, &diff], vec![]))]
            } else {
                let s = cx.b.reduce("ReduceSum", g, &[axis], true);
                let p = cx.b.op("Exp", &[&y], vec![]);
                let ps = cx.b.op("Mul", &[&p, &s], vec![]);
                vec![(0, cx.b.op("Sub", &[g, &ps], vec![]))]
            }
        }
        "Add" | "Sub" => {
            let mut v = Vec::new();
            for i in 0..2 {
                if d(i) {
                    let gi = if i == 1 && n.op_type == "Sub" {
                        cx.b.op("Neg", &[g], vec![])
                    } else {
                        g.to_string()
                    };
                    v.push((i, cx.unbroadcast(&gi, &n.input[i], ni)?));
                }
            }
            v
        }
        "Mul" => {
            let mut v = Vec::new();
            for i in 0..2 {
                if d(i) {
                    let gi = cx.b.op("Mul", &[g, &n.input[1 - i]], vec![]);
                    v.push((i, cx.unbroadcast(&gi, &n.input[i], ni)?));
                }
            }
            v
        }
        "Div" => {
            let mut v = Vec::new();
            if d(0) {
                let gi = cx.b.op("Div", &[g, &n.input[1]], vec![]);
                v.push((0, cx.unbroadcast(&gi, &n.input[0], ni)?));
            }
            if d(1) {
                // d(a/b)/db = -(a/b)/b
                let yb = cx.b.op("Div", &[&y, &n.input[1]], vec![]);
                let gy = cx.b.op("Mul", &[g, &yb], vec![]);
                let ng = cx.b.op("Neg", &[&gy], vec![]);
                v.push((1, cx.unbroadcast(&ng, &n.input[1], ni)?));
            }
            v
        }
        "GlobalAveragePool" => {
            let s = cx.b.op("Shape", &[&x], vec![]);
            let e = cx.b.op("Expand", &[g, &s], vec![]);
            vec![(0, mean_scale(cx, &e, g))]
        }
        "ReduceMean" => {
            only_x(cx, "the axes input")?;
            let rx = cx.rank(&x, ni)? as i64;
            let axes = match attr_ints(&n, "axes") {
                Some(a) => Some(a),
                None => match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(t) => Some(
                        cx.m.constant_i64(t)
                            .ok_or_else(|| cx.unsupported(ni, "the axes input is not a constant"))?,
                    ),
                    None => None,
                },
            };
            let axes: Vec<i64> = match axes {
                Some(a) if !a.is_empty() => {
                    a.iter().map(|&v| cx.axis(v, rx, ni)).collect::<Result<_, _>>()?
                }
                _ if attr_i(&n, "noop_with_empty_axes") == Some(1) => {
                    return Ok(vec![(0, g.to_string())]);
                }
                _ => (0..rx).collect(),
            };
            let mut gk = g.to_string();
            if attr_i(&n, "keepdims").unwrap_or(1) == 0 {
                let mut sorted = axes.clone();
                sorted.sort_unstable();
                gk = cx.b.unsqueeze(&gk, &sorted);
            }
            let s = cx.b.op("Shape", &[&x], vec![]);
            let e = cx.b.op("Expand", &[&gk, &s], vec![]);
            vec![(0, mean_scale(cx, &e, g))]
        }
        "AveragePool" => super::spatial::average_pool(cx, ni, &n, g)?,
        "MaxPool" => super::spatial::max_pool(cx, ni, &n, g)?,
        "Conv" => super::spatial::conv(cx, ni, &n, g)?,
        "Pad" => super::spatial::pad(cx, ni, &n, g)?,
        "Gemm" => {
            let alpha = attr_f(&n, "alpha").unwrap_or(1.0);
            let beta = attr_f(&n, "beta").unwrap_or(1.0) as f64;
            let ta = attr_i(&n, "transA").unwrap_or(0);
            let tb = attr_i(&n, "transB").unwrap_or(0);
            if d(1) {
                return Err(cx.unsupported(ni, "the weight input B depends on the target tensor"));
            }
            let b = n.input[1].clone();
            let mut v = Vec::new();
            if d(0) {
                let da = if ta == 0 {
                    cx.b.op(
                        "Gemm",
                        &[g, &b],
                        vec![("alpha", Attr::F(alpha)), ("transB", Attr::I(1 - tb))],
                    )
                } else {
                    cx.b.op(
                        "Gemm",
                        &[&b, g],
                        vec![
                            ("alpha", Attr::F(alpha)),
                            ("transA", Attr::I(tb)),
                            ("transB", Attr::I(1)),
                        ],
                    )
                };
                v.push((0, da));
            }
            if d(2) {
                let bs = cx.b.scalar(beta);
                let gb = cx.b.op("Mul", &[g, &bs], vec![]);
                v.push((2, cx.unbroadcast(&gb, &n.input[2], ni)?));
            }
            v
        }
        "MatMul" => {
            let (a, b) = (n.input[0].clone(), n.input[1].clone());
            let (ra, rb) = (cx.rank(&a, ni)?, cx.rank(&b, ni)?);
            if ra < 2 || rb < 2 {
                return Err(cx.unsupported(ni, "MatMul with a 1-D operand"));
            }
            let swap = |r: usize| -> Vec<i64> {
                let mut p: Vec<i64> = (0..r as i64).collect();
                p.swap(r - 2, r - 1);
                p
            };
            let mut v = Vec::new();
            if d(0) {
                let bt = cx.b.op("Transpose", &[&b], vec![("perm", Attr::Ints(swap(rb)))]);
                let ga = cx.b.op("MatMul", &[g, &bt], vec![]);
                v.push((0, cx.unbroadcast(&ga, &a, ni)?));
            }
            if d(1) {
                let at = cx.b.op("Transpose", &[&a], vec![("perm", Attr::Ints(swap(ra)))]);
                let gb = cx.b.op("MatMul", &[&at, g], vec![]);
                v.push((1, cx.unbroadcast(&gb, &b, ni)?));
            }
            v
        }
        "BatchNormalization" => {
            only_x(cx, "the scale/mean/variance inputs")?;
            if attr_i(&n, "training_mode") == Some(1) {
                return Err(cx.unsupported(ni, "BatchNormalization in training mode"));
            }
            let eps = attr_f(&n, "epsilon").unwrap_or(1e-5) as f64;
            let e = cx.b.scalar(eps);
            let ve = cx.b.op("Add", &[&n.input[4], &e], vec![]);
            let sd = cx.b.op("Sqrt", &[&ve], vec![]);
            let f = cx.b.op("Div", &[&n.input[1], &sd], vec![]);
            let r = cx.rank(&x, ni)?;
            let f = if r > 2 {
                let mut shape = vec![-1i64];
                shape.extend(std::iter::repeat_n(1, r - 2));
                let s = cx.b.ints(&shape);
                cx.b.op("Reshape", &[&f, &s], vec![])
            } else {
                f
            };
            vec![(0, cx.b.op("Mul", &[g, &f], vec![]))]
        }
        "Transpose" => {
            let r = cx.rank(&x, ni)?;
            let perm = attr_ints(&n, "perm").unwrap_or_else(|| (0..r as i64).rev().collect());
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..perm.len() as i64).collect::<Vec<_>>() {
                return Err(cx.unsupported(ni, format!("perm {perm:?} is not a permutation")));
            }
            let mut inv = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            vec![(0, cx.b.op("Transpose", &[g], vec![("perm", Attr::Ints(inv))]))]
        }
        "LayerNormalization" => {
            only_x(cx, "the scale/bias inputs")?;
            let r = cx.rank(&x, ni)? as i64;
            let axis = cx.axis(attr_i(&n, "axis").unwrap_or(-1), r, ni)?;
            let axes: Vec<i64> = (axis..r).collect();
            let eps = attr_f(&n, "epsilon").unwrap_or(1e-5) as f64;
            // xhat = (x - mu) * rstd;  dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat))
            let mu = cx.b.reduce("ReduceMean", &x, &axes, true);
            let xc = cx.b.op("Sub", &[&x, &mu], vec![]);
            let sq = cx.b.op("Mul", &[&xc, &xc], vec![]);
            let var = cx.b.reduce("ReduceMean", &sq, &axes, true);
            let e = cx.b.scalar(eps);
            let ve = cx.b.op("Add", &[&var, &e], vec![]);
            let sd = cx.b.op("Sqrt", &[&ve], vec![]);
            let rstd = cx.b.op("Reciprocal", &[&sd], vec![]);
            let xhat = cx.b.op("Mul", &[&xc, &rstd], vec![]);
            let gs = cx.b.op("Mul", &[g, &n.input[1]], vec![]);
            let m1 = cx.b.reduce("ReduceMean", &gs, &axes, true);
            let gx = cx.b.op("Mul", &[&gs, &xhat], vec![]);
            let m2 = cx.b.reduce("ReduceMean", &gx, &axes, true);
            let t = cx.b.op("Mul", &[&xhat, &m2], vec![]);
            let a = cx.b.op("Sub", &[&gs, &m1], vec![]);
            let inner = cx.b.op("Sub", &[&a, &t], vec![]);
            vec![(0, cx.b.op("Mul", &[&rstd, &inner], vec![]))]
        }
        "Gather" => {
            only_x(cx, "the indices")?;
            gather_backward(cx, ni, g)?
        }
        other => {
            return Err(cx.unsupported(
                ni,
                format!(
                    "no backward rule for {other}; supported: {}",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    };
    Ok(grads)
}

/// `e * Size(g) / Size(e)`: the 1/count factor of a mean, computed at run time.
fn mean_scale(cx: &mut Ctx, e: &str, g: &str) -> String {
    let sg = cx.b.size_f(g);
    let se = cx.b.size_f(e);
    let f = cx.b.op("Div", &[&sg, &se], vec![]);
    cx.b.op("Mul", &[e, &f], vec![])
}

/// Gather along `axis` with indices of rank 0 or 1: scatter `g` back into zeros shaped like
/// the data, adding where an index repeats.
fn gather_backward(cx: &mut Ctx, ni: usize, g: &str) -> Result<Vec<(usize, String)>, OnnxError> {
    let n = cx.m.node(ni).clone();
    let (x, idx) = (n.input[0].clone(), n.input[1].clone());
    let r = cx.rank(&x, ni)? as i64;
    let ri = cx.rank(&idx, ni)?;
    let axis = cx.axis(attr_i(&n, "axis").unwrap_or(0), r, ni)?;
    if ri > 1 {
        // data[idx] along axis 0 with an index tensor (ConvNeXt's dynamo export gathers a
        // flattened map this way): scatter-add g back with ScatterND.
        if axis != 0 || cx.m.opset < 16 {
            return Err(cx.unsupported(
                ni,
                "Gather with indices of rank > 1 is supported on axis 0 from opset 16",
            ));
        }
        let idx_nd = cx.b.unsqueeze(&idx, &[-1]);
        let reduction = vec![("reduction", Attr::S("add"))];
        return Ok(vec![(0, scatter(cx, "ScatterND", &x, &idx_nd, g, reduction))]);
    }
    if cx.m.opset < 16 {
        let unique = cx.m.constant_i64(&idx).is_some_and(|v| {
            let mut s = v.clone();
            s.sort_unstable();
            s.dedup();
            s.len() == v.len()
        });
        if !unique {
            return Err(cx.unsupported(
                ni,
                "Gather with non-constant indices needs opset >= 16 (ScatterElements add)",
            ));
        }
    }
    let g = if ri == 0 {
        cx.b.unsqueeze(g, &[axis])
    } else {
        g.to_string()
    };
    let mut shape = vec![1i64; r as usize];
    shape[axis as usize] = -1;
    let s = cx.b.ints(&shape);
    let i = cx.b.op("Reshape", &[&idx, &s], vec![]);
    let gs = cx.b.op("Shape", &[&g], vec![]);
    let ie = cx.b.op("Expand", &[&i, &gs], vec![]);
    let mut attrs = vec![("axis", Attr::I(axis))];
    if cx.m.opset >= 16 {
        attrs.push(("reduction", Attr::S("add")));
    }
    Ok(vec![(0, scatter(cx, "ScatterElements", &x, &ie, &g, attrs))])
}

/// `op` (ScatterND or ScatterElements) of `g` at `idx` into zeros shaped like `x`. ONNX
/// Runtime's CPU kernels cannot add float16 ("MLFloat16 data type is not supported with
/// ScatterElements opset 16 when reduction is 'add'"), so a float16 graph scatters in float32.
fn scatter(cx: &mut Ctx, op: &str, x: &str, idx: &str, g: &str, attrs: Vec<(&str, Attr)>) -> String {
    use super::proto::dtype;
    let half = cx.b.elem_type == dtype::FLOAT16;
    let to = |t: i32| vec![("to", Attr::I(t as i64))];
    let g = if half {
        cx.b.op("Cast", &[g], to(dtype::FLOAT))
    } else {
        g.to_string()
    };
    let t = if half { dtype::FLOAT } else { cx.b.elem_type };
    let zero = super::proto::TensorProto {
        dims: vec![1],
        data_type: t,
        raw_data: vec![0; if t == dtype::DOUBLE { 8 } else { 4 }],
        ..Default::default()
    };
    let xs = cx.b.op("Shape", &[x], vec![]);
    let zeros = cx.b.op("ConstantOfShape", &[&xs], vec![("value", Attr::T(zero))]);
    let s = cx.b.op(op, &[&zeros, idx, &g], attrs);
    if half {
        cx.b.op("Cast", &[&s], to(dtype::FLOAT16))
    } else {
        s
    }
}
