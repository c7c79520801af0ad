//! Model augmentation: turns a classifier into one that also outputs the target activations
//! `A`, the gradient `dA = d score[class] / dA` and the class used, in a single forward run.
//!
//! 1. The logits tensor is the first graph output unless named; if it comes out of a Softmax,
//!    the score we differentiate is the Softmax input (pytorch-grad-cam explains the raw score).
//! 2. The target tensor `A` is the input of the pooling op nearest to the logits that pools a
//!    4-D tensor over its spatial axes (GlobalAveragePool, spatial ReduceMean, AveragePool), or
//!    a tensor named by the user.
//! 3. The seed is a one-hot of the class: the new input `target_class` (int64 `[N]`, or `[1]` for
//!    the whole batch; -1 means top-1, computed in the graph with `ArgMax`).
//! 4. The head's nodes are differentiated in reverse order with the rules in `vjp.rs`.
//!
//! The new nodes, initializers, input and outputs go into a second `GraphProto` that is appended
//! to the original file bytes as another `graph` field; protobuf parsers merge it into the first.
//! Nothing of the original model is decoded and re-encoded, so it cannot change.

use std::collections::{HashMap, HashSet, VecDeque};

use super::builder::{Attr, Builder};
use super::model::{attr_i, attr_ints, dtype_name, OnnxModel, MIN_OPSET};
use super::proto::{
    dtype, fmt_dims, DimValue, Dimension, GraphProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto,
};
use super::vjp::{self, Ctx};
use super::OnnxError;

pub const IN_TARGET: &str = "target_class";
pub const OUT_A: &str = "gradcamd_A";
pub const OUT_DA: &str = "gradcamd_dA";
pub const OUT_CLASS: &str = "gradcamd_class";
pub const OUT_CAM: &str = "gradcamd_cam";
/// The logits as float32, for models whose logits are not.
pub const OUT_LOGITS: &str = "gradcamd_logits";

/// Ops whose outputs carry no gradient (integers, booleans, shapes).
const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "NonZero",
    "IsNaN",
    "IsInf",
];

#[derive(Debug, Clone, Default)]
pub struct AugmentOptions {
    /// Explicit target tensor; `None` applies the pooling rule.
    pub target_layer: Option<String>,
    /// Explicit logits output; `None` takes the first graph output.
    pub logits: Option<String>,
    /// Differentiate the Softmax output itself when the logits come out of a Softmax, instead
    /// of its input (the default, as pytorch-grad-cam explains a classifier's raw score).
    pub through_softmax: bool,
    /// Also output `gradcamd_cam` = ReLU(sum_k mean(dA_k) A_k), computed in the graph.
    pub in_graph_cam: bool,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub dims: Option<Vec<Option<i64>>>,
    /// Op that produces it (or "graph input").
    pub producer: String,
}

/// Weights of a GAP → fully-connected head, for plain CAM: `weights[c * channels + k] = w_ck`.
#[derive(Debug, Clone)]
pub struct FcHead {
    pub classes: usize,
    pub channels: usize,
    pub weights: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Augmented {
    /// The augmented model, ready for a session.
    pub bytes: Vec<u8>,
    /// The original model's bytes, for forward-only runs.
    pub original: Vec<u8>,
    pub opset: i64,
    pub input_name: String,
    pub input_dims: Option<Vec<Option<i64>>>,
    pub logits: String,
    /// The augmented model's float32 copy of the logits (`logits` itself when it is float32).
    pub logits_output: String,
    /// Element type of the model input (float32 or float16).
    pub input_elem_type: i32,
    /// True when the logits come out of a Softmax and the score is its input.
    pub pre_softmax: bool,
    pub target: String,
    pub target_dims: Option<Vec<Option<i64>>>,
    /// The target tensor is channels-last; `gradcamd_A`/`dA` are transposed to `[N,C,h,w]`.
    pub target_nhwc: bool,
    pub candidates: Vec<Candidate>,
    /// The head's ops from the target tensor to the score, in forward order: (op, node name).
    pub head: Vec<(String, String)>,
    pub fc: Option<FcHead>,
    pub elem_type: i32,
    pub in_graph_cam: bool,
    /// Where ORT must look for external initializer files, if the model has any.
    pub external_data_dir: Option<std::path::PathBuf>,
}

/// What augmentation will differentiate, found before any node is written: `inspect` shows it
/// even when a head op has no backward rule.
pub struct Located {
    pub logits: String,
    pub score: String,
    pub pre_softmax: bool,
    pub target: String,
    pub nhwc: bool,
    pub elem_type: i32,
    pub candidates: Vec<Candidate>,
    /// Nodes on a path from the target to the score, in graph order.
    pub head: Vec<usize>,
    /// Tensors that depend on the target.
    pub diff: HashSet<String>,
}

pub fn locate(m: &OnnxModel, opts: &AugmentOptions) -> Result<Located, OnnxError> {
    if m.opset < MIN_OPSET {
        return Err(OnnxError::Opset {
            found: m.opset,
            min: MIN_OPSET,
        });
    }
    let g = m.graph();
    if g.output.iter().any(|o| o.name == OUT_DA) {
        return Err(OnnxError::NotCnn(
            "this model was already augmented by gradcamd; give it the original model".into(),
        ));
    }
    if m.real_inputs().next().is_none() {
        return Err(OnnxError::NotCnn("the model has no input".into()));
    }
    let logits = match &opts.logits {
        Some(l) => g
            .output
            .iter()
            .find(|o| &o.name == l)
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                OnnxError::NotCnn(format!(
                    "no graph output named '{l}'; outputs are: {}",
                    g.output
                        .iter()
                        .map(|o| o.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
        None => g
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| OnnxError::NotCnn("the model has no output".into()))?,
    };
    if let Some(r) = m.rank(&logits) {
        if r != 2 {
            return Err(OnnxError::NotCnn(format!(
                "output '{logits}' has rank {r}; a classifier's logits are [N, classes]"
            )));
        }
    }
    let (score, pre_softmax) = match m.producer.get(&logits).map(|&i| m.node(i)) {
        Some(n)
            if !opts.through_softmax
                && (n.op_type == "Softmax" || n.op_type == "LogSoftmax")
                && n.input.first().is_some_and(|i| !i.is_empty()) =>
        {
            (n.input[0].clone(), true)
        }
        _ => (logits.clone(), false),
    };

    let candidates = candidates(m, &score);
    let (target, nhwc) = match &opts.target_layer {
        Some(t) => {
            let known = m.producer.contains_key(t) || g.input.iter().any(|v| &v.name == t);
            if !known {
                return Err(OnnxError::TargetNotFound {
                    name: t.clone(),
                    candidates: fmt_candidates(&candidates),
                });
            }
            if let Some(r) = m.rank(t).filter(|&r| r != 4) {
                return Err(OnnxError::NotCnn(format!(
                    "target tensor '{t}' has rank {r}; Grad-CAM needs a 4-D [N,C,H,W] feature map"
                )));
            }
            (t.clone(), false)
        }
        None => pooling_target(m, &score).ok_or_else(|| {
            OnnxError::NotCnn(format!(
                "no pooling op (GlobalAveragePool, spatial ReduceMean, AveragePool) over a 4-D tensor feeds '{logits}'; name the feature map with target_layer (4-D candidates: {})",
                fmt_candidates(&candidates)
            ))
        })?,
    };

    let elem_type = *m.elem_types.get(&target).unwrap_or(&dtype::FLOAT);
    if ![dtype::FLOAT, dtype::DOUBLE, dtype::FLOAT16].contains(&elem_type) {
        return Err(OnnxError::NotCnn(format!(
            "target tensor '{target}' is {}, not a floating-point tensor",
            dtype_name(elem_type)
        )));
    }

    // Tensors that depend on A, through differentiable ops.
    let mut diff: HashSet<String> = HashSet::from([target.clone()]);
    for n in &g.node {
        if NON_DIFFERENTIABLE.contains(&n.op_type.as_str()) {
            continue;
        }
        if n.input.iter().any(|i| diff.contains(i)) {
            diff.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    if !diff.contains(&score) {
        return Err(OnnxError::NotCnn(format!(
            "the score '{score}' does not depend on the target tensor '{target}'"
        )));
    }
    // Tensors the score depends on.
    let mut anc: HashSet<String> = HashSet::from([score.clone()]);
    let mut stack = vec![score.clone()];
    while let Some(t) = stack.pop() {
        if let Some(&p) = m.producer.get(&t) {
            for i in &m.node(p).input {
                if !i.is_empty() && anc.insert(i.clone()) {
                    stack.push(i.clone());
                }
            }
        }
    }
    let head: Vec<usize> = (0..g.node.len())
        .filter(|&i| {
            let n = m.node(i);
            n.input.iter().any(|t| diff.contains(t))
                && n.output.iter().any(|o| anc.contains(o) && diff.contains(o))
        })
        .collect();
    Ok(Located {
        logits,
        score,
        pre_softmax,
        target,
        nhwc,
        elem_type,
        candidates,
        head,
        diff,
    })
}

pub fn augment(m: &OnnxModel, opts: &AugmentOptions) -> Result<Augmented, OnnxError> {
    let Located {
        logits,
        score,
        pre_softmax,
        target,
        nhwc,
        elem_type,
        candidates,
        head,
        diff,
    } = locate(m, opts)?;
    let input = m
        .real_inputs()
        .next()
        .ok_or_else(|| OnnxError::NotCnn("the model has no input".into()))?;

    let mut b = Builder::new(elem_type, m.opset);

    // Seed: one-hot of the class used.
    let zero_i = b.const_i64(&[0], &[]);
    let argmax = b.op(
        "ArgMax",
        &[&score],
        vec![("axis", Attr::I(1)), ("keepdims", Attr::I(0))],
    );
    let want = b.op("Less", &[IN_TARGET, &zero_i], vec![]);
    b.op_into("Where", &[&want, &argmax, IN_TARGET], vec![], OUT_CLASS);
    let shape = b.op("Shape", &[&score], vec![]);
    let one_i = b.const_i64(&[1], &[]);
    let depth = b.op("Gather", &[&shape, &one_i], vec![("axis", Attr::I(0))]);
    let values = b.const_f(&[0.0, 1.0], &[2]);
    let seed = b.op(
        "OneHot",
        &[OUT_CLASS, &depth, &values],
        vec![("axis", Attr::I(-1))],
    );

    let mut grads: HashMap<String, Vec<String>> = HashMap::from([(score.clone(), vec![seed])]);
    for &ni in head.iter().rev() {
        let n = m.node(ni);
        if n.op_type == "Split" && n.domain.is_empty() {
            // Every output may carry a gradient.
            let gys: Vec<Option<String>> = n
                .output
                .iter()
                .map(|o| grads.remove(o).map(|gs| sum(&mut b, gs)))
                .collect();
            if gys.iter().all(Option::is_none) {
                continue;
            }
            let mut cx = Ctx {
                m,
                b: &mut b,
                diff: &diff,
            };
            for (i, gx) in crate::spatial::split(&mut cx, ni, n, &gys)? {
                grads.entry(n.input[i].clone()).or_default().push(gx);
            }
            continue;
        }
        if n.output.iter().skip(1).any(|o| grads.contains_key(o)) {
            return Err(OnnxError::Unsupported {
                op: n.op_type.clone(),
                node: n.name.clone(),
                why: "the gradient flows through an output other than the first".into(),
            });
        }
        let Some(gs) = grads.remove(&n.output[0]) else {
            continue;
        };
        let gy = sum(&mut b, gs);
        let mut cx = Ctx {
            m,
            b: &mut b,
            diff: &diff,
        };
        for (i, gx) in vjp::backward(&mut cx, ni, &gy)? {
            grads.entry(n.input[i].clone()).or_default().push(gx);
        }
    }
    let da_parts = grads
        .remove(&target)
        .ok_or_else(|| OnnxError::NotCnn(format!("no gradient reached the target tensor '{target}'")))?;
    let da = sum(&mut b, da_parts);
    // A and dA leave as float32 [N,C,h,w] whatever the model computes in (float16 models
    // differentiate in float16; the CAM math runs in float32).
    for (src, out) in [(target.as_str(), OUT_A), (da.as_str(), OUT_DA)] {
        let t = if nhwc {
            // Channels-last feature map: hand it out as [N,C,h,w] like every other.
            b.op("Transpose", &[src], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))])
        } else {
            src.to_string()
        };
        if elem_type == dtype::FLOAT {
            b.op_into("Identity", &[&t], vec![], out);
        } else {
            b.op_into("Cast", &[&t], vec![("to", Attr::I(dtype::FLOAT as i64))], out);
        }
    }
    let logits_type = *m.elem_types.get(&logits).unwrap_or(&dtype::FLOAT);
    let logits_output = if logits_type == dtype::FLOAT {
        logits.clone()
    } else {
        b.op_into(
            "Cast",
            &[&logits],
            vec![("to", Attr::I(dtype::FLOAT as i64))],
            OUT_LOGITS,
        );
        OUT_LOGITS.to_string()
    };
    if opts.in_graph_cam {
        let w = b.reduce("ReduceMean", OUT_DA, &[2, 3], true);
        let wa = b.op("Mul", &[OUT_A, &w], vec![]);
        let s = b.reduce("ReduceSum", &wa, &[1], false);
        b.op_into("Relu", &[&s], vec![], OUT_CAM);
    }

    let mut extra = GraphProto {
        node: std::mem::take(&mut b.nodes),
        initializer: std::mem::take(&mut b.initializers),
        ..Default::default()
    };
    extra.input.push(value_info(IN_TARGET, dtype::INT64, &[None]));
    let mut outs = vec![
        value_info(OUT_A, dtype::FLOAT, &[None, None, None, None]),
        value_info(OUT_DA, dtype::FLOAT, &[None, None, None, None]),
        value_info(OUT_CLASS, dtype::INT64, &[None]),
    ];
    if logits_output != logits {
        outs.push(value_info(OUT_LOGITS, dtype::FLOAT, &[None, None]));
    }
    if opts.in_graph_cam {
        outs.push(value_info(OUT_CAM, dtype::FLOAT, &[None, None, None]));
    }
    extra.output = outs;
    let mut bytes = m.bytes.clone();
    prost::encoding::message::encode(7, &extra, &mut bytes);

    let head_ops = head
        .iter()
        .map(|&i| (m.node(i).op_type.clone(), m.node(i).name.clone()))
        .collect();
    Ok(Augmented {
        bytes,
        original: m.bytes.clone(),
        opset: m.opset,
        input_name: input.name.clone(),
        input_dims: input.dims(),
        input_elem_type: *m.elem_types.get(&input.name).unwrap_or(&dtype::FLOAT),
        logits_output,
        logits,
        pre_softmax,
        target_dims: m.declared_dims(&target),
        fc: fc_head(m, &head, &score),
        target,
        target_nhwc: nhwc,
        candidates,
        head: head_ops,
        elem_type,
        in_graph_cam: opts.in_graph_cam,
        external_data_dir: if m.has_external_data() {
            m.dir.clone()
        } else {
            None
        },
    })
}

fn sum(b: &mut Builder, mut parts: Vec<String>) -> String {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    b.op("Sum", &refs, vec![])
}

pub(crate) fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: d.map(DimValue::Value),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

/// Nodes reached walking back from the score, breadth first (nearest first).
fn walk_back(m: &OnnxModel, score: &str) -> Vec<usize> {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut q = VecDeque::from([score.to_string()]);
    while let Some(t) = q.pop_front() {
        let Some(&p) = m.producer.get(&t) else {
            continue;
        };
        if !seen.insert(p) {
            continue;
        }
        order.push(p);
        for i in &m.node(p).input {
            if !i.is_empty() && !m.initializers.contains_key(i) {
                q.push_back(i.clone());
            }
        }
    }
    order
}

/// The input of the nearest pooling op over the spatial axes of a 4-D tensor, and whether that
/// tensor is channels-last (a ReduceMean over axes 1,2, as TensorFlow exports have).
fn pooling_target(m: &OnnxModel, score: &str) -> Option<(String, bool)> {
    walk_back(m, score).into_iter().find_map(|i| {
        let n = m.node(i);
        let x = n.input.first()?;
        if m.rank(x) != Some(4) {
            return None;
        }
        let nhwc = match n.op_type.as_str() {
            "GlobalAveragePool" | "AveragePool" => false,
            "ReduceMean" => {
                let axes = attr_ints(n, "axes").or_else(|| m.constant_i64(n.input.get(1)?))?;
                let mut a: Vec<i64> = axes.iter().map(|&v| if v < 0 { v + 4 } else { v }).collect();
                a.sort_unstable();
                match a.as_slice() {
                    [2, 3] => false,
                    [1, 2] => true,
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some((x.clone(), nhwc))
    })
}

fn candidates(m: &OnnxModel, score: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for i in walk_back(m, score) {
        for t in &m.node(i).input {
            if m.rank(t) == Some(4) && !m.initializers.contains_key(t) && seen.insert(t.clone()) {
                let producer = m
                    .producer
                    .get(t)
                    .map_or_else(|| "graph input".to_string(), |&p| m.node(p).op_type.clone());
                out.push(Candidate {
                    name: t.clone(),
                    dims: m.declared_dims(t),
                    producer,
                });
            }
        }
        if out.len() >= 8 {
            break;
        }
    }
    out
}

fn fmt_candidates(c: &[Candidate]) -> String {
    if c.is_empty() {
        return "none (no 4-D tensor of known rank feeds the logits)".into();
    }
    c.iter()
        .map(|c| {
            format!(
                "{} {}",
                c.name,
                c.dims.as_deref().map(fmt_dims).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Detects `A → mean over H,W → (Flatten|Reshape|Squeeze|Dropout|Identity)* → Gemm/MatMul(+Add)`
/// with constant weights, and returns the weight matrix as [classes, channels].
fn fc_head(m: &OnnxModel, head: &[usize], score: &str) -> Option<FcHead> {
    let mut linear = None;
    for &i in head {
        let n = m.node(i);
        match n.op_type.as_str() {
            "GlobalAveragePool" | "ReduceMean" | "Flatten" | "Reshape" | "Squeeze" | "Dropout"
            | "Identity"
                if linear.is_none() => {}
            "Gemm" | "MatMul" if linear.is_none() => linear = Some(i),
            "Add" if linear.is_some() => {}
            _ => return None,
        }
    }
    let n = m.node(linear?);
    if m.node(*head.last()?).output[0] != score {
        return None;
    }
    let w = m.constant(n.input.get(1)?)?;
    if w.dims.len() != 2 {
        return None;
    }
    let vals = w.to_f32()?;
    let (r, c) = (usize::try_from(w.dims[0]).ok()?, usize::try_from(w.dims[1]).ok()?);
    if r.checked_mul(c) != Some(vals.len()) {
        return None;
    }
    let (trans_a, trans_b) = if n.op_type == "Gemm" {
        (attr_i(n, "transA").unwrap_or(0), attr_i(n, "transB").unwrap_or(0))
    } else {
        (0, 0)
    };
    if trans_a != 0 {
        return None;
    }
    let alpha = if n.op_type == "Gemm" {
        super::model::attr_f(n, "alpha").unwrap_or(1.0)
    } else {
        1.0
    };
    // transB = 1: B is [classes, channels]; otherwise [channels, classes].
    let (classes, channels) = if trans_b == 1 { (r, c) } else { (c, r) };
    let mut weights = vec![0f32; classes * channels];
    for cl in 0..classes {
        for k in 0..channels {
            let v = if trans_b == 1 {
                vals[cl * c + k]
            } else {
                vals[k * c + cl]
            };
            weights[cl * channels + k] = alpha * v;
        }
    }
    Some(FcHead {
        classes,
        channels,
        weights,
    })
}
