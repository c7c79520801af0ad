//! A parsed ONNX model plus the indexes the rewriter needs: who produces and who consumes each
//! tensor, which tensors are constants, and the rank of every tensor we can infer.
//!
//! Only ranks are tracked, never full shapes: the batch dimension is usually symbolic, so every
//! shape the gradient graph needs is computed at run time with `Shape`/`Size` nodes instead.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use super::proto::{dtype, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use super::OnnxError;

/// Oldest default-domain opset we rewrite: `ReduceSum`/`Unsqueeze` take their axes as inputs
/// from 13 on, and the gradient graph needs dynamic axes.
pub const MIN_OPSET: i64 = 13;

/// Largest rank taken at face value; more comes only from corrupt graphs.
pub(crate) const MAX_RANK: usize = 16;

pub struct OnnxModel {
    /// The file as read; the augmented model is these bytes plus an appended graph.
    pub bytes: Vec<u8>,
    pub proto: ModelProto,
    /// Version of the default ("" / "ai.onnx") domain.
    pub opset: i64,
    /// Tensor name -> index of the node that outputs it.
    pub producer: HashMap<String, usize>,
    /// Tensor name -> indexes of the nodes that read it, in graph order.
    pub consumers: HashMap<String, Vec<usize>>,
    /// Initializer name -> index into `graph.initializer`.
    pub initializers: HashMap<String, usize>,
    /// Rank of each tensor, where known (value_info, graph I/O, or inferred from the op).
    pub ranks: HashMap<String, usize>,
    /// Element type of each tensor, where written in the model.
    pub elem_types: HashMap<String, i32>,
    /// Directory of the model file, where external data lives (`None` for in-memory models).
    pub dir: Option<std::path::PathBuf>,
}

impl OnnxModel {
    /// Reads the model file at `path` whole (as `std::fs::read` does: a FIFO blocks, and
    /// `/dev/zero` never ends); external data files are looked for beside it. Where the path
    /// comes from someone else, [`OnnxModel::load_with`] a reader that has limits.
    pub fn load(path: &Path) -> Result<Self, OnnxError> {
        Self::load_with(path, |p| std::fs::read(p))
    }

    /// [`OnnxModel::load`], with the file's bytes from `read`: the caller's limits on size and
    /// file type, its own error messages.
    pub fn load_with(
        path: &Path,
        read: impl FnOnce(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, OnnxError> {
        let bytes = read(path).map_err(|err| OnnxError::Read {
            path: path.to_path_buf(),
            err,
        })?;
        let mut m = Self::from_bytes(bytes).map_err(|e| match e {
            OnnxError::Decode(msg) => OnnxError::Corrupt {
                path: path.to_path_buf(),
                msg,
            },
            other => other,
        })?;
        m.dir = Some(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        );
        Ok(m)
    }

    /// Whether any initializer keeps its data in an external file (models over 2 GB, or
    /// exported with `save_as_external_data`).
    pub fn has_external_data(&self) -> bool {
        self.graph()
            .initializer
            .iter()
            .any(|t| t.data_location == 1 || !t.external_data.is_empty())
    }

    /// Reads an external initializer's bytes from the model's directory into `raw_data`.
    fn load_external(&self, t: &mut TensorProto) -> Option<()> {
        let key = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let location = key("location")?;
        let rel = Path::new(&location);
        // The spec allows only paths inside the model's directory.
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return None;
        }
        let offset: u64 = key("offset").map_or(Some(0), |v| v.parse().ok())?;
        let mut f = std::fs::File::open(self.dir.as_ref()?.join(rel)).ok()?;
        use std::io::{Read, Seek, SeekFrom};
        f.seek(SeekFrom::Start(offset)).ok()?;
        let want = match key("length") {
            Some(v) => v.parse::<u64>().ok()?,
            None => (t.numel() as u64).checked_mul(4)?,
        };
        // Never trust a length beyond the file.
        let mut buf = Vec::new();
        f.take(want).read_to_end(&mut buf).ok()?;
        if buf.len() as u64 != want {
            return None;
        }
        t.raw_data = buf;
        t.external_data.clear();
        t.data_location = 0;
        Some(())
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, OnnxError> {
        let proto = ModelProto::decode(bytes.as_slice())
            .map_err(|e| OnnxError::Decode(format!("not an ONNX model ({e})")))?;
        let graph = proto
            .graph
            .as_ref()
            .filter(|g| !g.node.is_empty())
            .ok_or_else(|| OnnxError::Decode("the file has no graph".into()))?;
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .ok_or_else(|| OnnxError::Decode("no default-domain opset_import".into()))?;

        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.clone(), i);
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                consumers.entry(inp.clone()).or_default().push(i);
            }
        }
        let initializers = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();

        let mut m = OnnxModel {
            bytes,
            proto,
            opset,
            producer,
            consumers,
            initializers,
            ranks: HashMap::new(),
            elem_types: HashMap::new(),
            dir: None,
        };
        m.infer_ranks();
        Ok(m)
    }

    pub fn graph(&self) -> &GraphProto {
        // from_bytes refuses models without a graph
        self.proto.graph.as_ref().expect("graph checked at load")
    }

    pub fn node(&self, i: usize) -> &NodeProto {
        &self.graph().node[i]
    }

    /// Graph inputs that are real inputs (not initializers listed as inputs).
    pub fn real_inputs(&self) -> impl Iterator<Item = &super::proto::ValueInfoProto> {
        self.graph()
            .input
            .iter()
            .filter(|v| !self.initializers.contains_key(&v.name))
    }

    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.initializers.get(name).map(|&i| &self.graph().initializer[i])
    }

    /// The value of a tensor that is an initializer or the output of a `Constant` node.
    pub fn constant(&self, name: &str) -> Option<TensorProto> {
        if let Some(t) = self.initializer(name) {
            let mut t = t.clone();
            if !t.external_data.is_empty() {
                self.load_external(&mut t)?;
            }
            return Some(t);
        }
        let n = self.node(*self.producer.get(name)?);
        if n.op_type != "Constant" {
            return None;
        }
        let a = n.attribute.iter().find(|a| a.name == "value")?;
        a.t.clone()
    }

    pub fn constant_i64(&self, name: &str) -> Option<Vec<i64>> {
        self.constant(name)?.to_i64()
    }

    pub fn rank(&self, name: &str) -> Option<usize> {
        self.ranks.get(name).copied()
    }

    /// Shape as written in value_info / graph I/O, if any.
    pub fn declared_dims(&self, name: &str) -> Option<Vec<Option<i64>>> {
        let g = self.graph();
        g.value_info
            .iter()
            .chain(g.input.iter())
            .chain(g.output.iter())
            .find(|v| v.name == name)
            .and_then(|v| v.dims())
            .or_else(|| {
                self.initializer(name)
                    .map(|t| t.dims.iter().map(|&d| Some(d)).collect())
            })
    }

    fn infer_ranks(&mut self) {
        let g = self.proto.graph.as_ref().expect("graph checked at load");
        let mut ranks: HashMap<String, usize> = HashMap::new();
        let mut types: HashMap<String, i32> = HashMap::new();
        for v in g.input.iter().chain(&g.value_info).chain(&g.output) {
            if let Some(t) = v.tensor() {
                if t.elem_type != 0 {
                    types.insert(v.name.clone(), t.elem_type);
                }
                if let Some(s) = t.shape.as_ref().filter(|s| s.dim.len() <= MAX_RANK) {
                    ranks.insert(v.name.clone(), s.dim.len());
                }
            }
        }
        for t in g.initializer.iter().filter(|t| t.dims.len() <= MAX_RANK) {
            ranks.insert(t.name.clone(), t.dims.len());
            types.insert(t.name.clone(), t.data_type);
        }
        for n in &g.node {
            if n.output.first().is_none_or(|o| ranks.contains_key(o)) {
                continue;
            }
            // ONNX tensors have a handful of axes; a bigger "rank" comes from a corrupt graph.
            if let Some(r) = self.op_rank(n, &ranks).filter(|&r| r <= MAX_RANK) {
                ranks.insert(n.output[0].clone(), r);
                // Every part of a Split has the input's rank.
                if n.op_type == "Split" {
                    for o in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
                        ranks.insert(o.clone(), r);
                    }
                }
            }
        }
        self.ranks = ranks;
        self.elem_types = types;
    }

    /// Output rank of a node from its inputs' ranks, for the ops that show up around CNN heads.
    fn op_rank(&self, n: &NodeProto, ranks: &HashMap<String, usize>) -> Option<usize> {
        let r = |i: usize| n.input.get(i).and_then(|s| ranks.get(s)).copied();
        let keepdims = attr_i(n, "keepdims").unwrap_or(1) != 0;
        match n.op_type.as_str() {
            "Flatten" | "Gemm" => Some(2),
            "Size" => Some(0),
            "Shape" => Some(1),
            "NonZero" => Some(2),
            "Reshape" => Some(self.constant(n.input.get(1)?)?.numel()),
            "Constant" => n
                .attribute
                .iter()
                .find_map(|a| a.t.as_ref().map(|t| t.dims.len())),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Where" | "Max" | "Min" | "Sum" | "Mean" | "Equal"
            | "Greater" | "Less" | "And" | "Or" | "PRelu" | "Expand" => n
                .input
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| ranks.get(s).copied())
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().max()),
            "MatMul" => Some(r(0)?.max(r(1)?)),
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" | "ArgMax"
            | "ArgMin" => {
                if keepdims {
                    r(0)
                } else {
                    let axes = attr_ints(n, "axes")
                        .or_else(|| self.constant_i64(n.input.get(1)?))
                        .map(|a| a.len());
                    match axes {
                        Some(k) => r(0)?.checked_sub(k),
                        None if n.op_type.starts_with("Arg") => r(0)?.checked_sub(1),
                        None => Some(0),
                    }
                }
            }
            "Unsqueeze" => {
                let k = attr_ints(n, "axes").or_else(|| self.constant_i64(n.input.get(1)?))?;
                Some(r(0)? + k.len())
            }
            "Squeeze" => {
                let k = attr_ints(n, "axes").or_else(|| self.constant_i64(n.input.get(1)?))?;
                r(0)?.checked_sub(k.len())
            }
            "Gather" => Some((r(0)? + r(1)?).checked_sub(1)?),
            "Concat" | "Split" | "Slice" | "Transpose" | "Tile" | "Pad" | "Resize" => r(0),
            // Everything else that appears in a CNN keeps its first input's rank: Conv, pools,
            // normalizations, activations, Softmax, Cast, Dropout, Identity, Clip, ...
            _ => r(0),
        }
    }
}

pub(crate) fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// A string attribute (`auto_pad`, `mode`), as text.
pub(crate) fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

pub(crate) fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    attr(n, name).map(|a| a.i)
}

pub(crate) fn attr_f(n: &NodeProto, name: &str) -> Option<f32> {
    attr(n, name).map(|a| a.f)
}

pub(crate) fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

/// Human name for an element type, for messages.
pub(crate) fn dtype_name(t: i32) -> &'static str {
    match t {
        dtype::FLOAT => "float32",
        dtype::DOUBLE => "float64",
        dtype::FLOAT16 => "float16",
        dtype::INT64 => "int64",
        dtype::INT32 => "int32",
        _ => "other",
    }
}
