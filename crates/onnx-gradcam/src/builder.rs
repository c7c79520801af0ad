//! Emits the nodes and constants of the gradient graph, with names that cannot collide with the
//! model's own (`gradcamd/...`), and the constant helpers every backward rule needs.

use super::proto::{attr_type, dtype, AttributeProto, NodeProto, TensorProto};

pub(crate) struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    /// Element type of the differentiated tensors; every float constant is made in it.
    pub elem_type: i32,
    pub opset: i64,
    /// Names are `<prefix>/<op>_<n>`: one prefix per builder whose nodes go into one model.
    prefix: &'static str,
    counter: usize,
}

pub(crate) enum Attr {
    I(i64),
    F(f32),
    Ints(Vec<i64>),
    S(&'static str),
    T(TensorProto),
}

impl Builder {
    pub(crate) fn new(elem_type: i32, opset: i64) -> Self {
        Self::named("gradcamd", elem_type, opset)
    }

    /// A builder whose names cannot collide with another's that uses another prefix.
    pub(crate) fn named(prefix: &'static str, elem_type: i32, opset: i64) -> Self {
        Builder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            elem_type,
            opset,
            prefix,
            counter: 0,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}/{hint}_{}", self.prefix, self.counter)
    }

    /// Adds one node with one output and returns the output's name.
    pub(crate) fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(op_type);
        self.op_into(op_type, inputs, attrs, &out);
        out
    }

    /// Adds one node with two outputs and returns the second's name (MaxPool's `Indices`).
    pub(crate) fn op_second(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let (first, second) = (self.fresh(op_type), self.fresh(op_type));
        self.op_into(op_type, inputs, attrs, &first);
        if let Some(n) = self.nodes.last_mut() {
            n.output.push(second.clone());
        }
        second
    }

    /// Adds one node whose output has a chosen name (the graph outputs we expose).
    pub(crate) fn op_into(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, out: &str) {
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto {
                    name: name.to_string(),
                    ..Default::default()
                };
                match a {
                    Attr::I(v) => (p.r#type, p.i) = (attr_type::INT, v),
                    Attr::F(v) => (p.r#type, p.f) = (attr_type::FLOAT, v),
                    Attr::Ints(v) => (p.r#type, p.ints) = (attr_type::INTS, v),
                    Attr::S(v) => (p.r#type, p.s) = (attr_type::STRING, v.as_bytes().to_vec()),
                    Attr::T(t) => (p.r#type, p.t) = (attr_type::TENSOR, Some(t)),
                }
                p
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: format!("{out}/node"),
            op_type: op_type.to_string(),
            domain: String::new(),
            attribute,
        });
    }

    /// A float constant of the graph's element type, shaped `dims` (`[]` for a scalar).
    pub(crate) fn const_f(&mut self, values: &[f64], dims: &[i64]) -> String {
        let name = self.fresh("const");
        let mut t = TensorProto {
            dims: dims.to_vec(),
            data_type: self.elem_type,
            name: name.clone(),
            ..Default::default()
        };
        match self.elem_type {
            dtype::DOUBLE => t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            dtype::FLOAT16 => {
                t.raw_data = values
                    .iter()
                    .flat_map(|&v| f32_to_f16_bits(v as f32).to_le_bytes())
                    .collect()
            }
            _ => t.raw_data = values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
        }
        self.initializers.push(t);
        name
    }

    pub(crate) fn scalar(&mut self, v: f64) -> String {
        self.const_f(&[v], &[])
    }

    pub(crate) fn const_i64(&mut self, values: &[i64], dims: &[i64]) -> String {
        let name = self.fresh("const");
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: dtype::INT64,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    pub(crate) fn ints(&mut self, values: &[i64]) -> String {
        self.const_i64(values, &[values.len() as i64])
    }

    /// `ReduceSum`/`ReduceMean` over constant axes, written the way this opset wants them:
    /// ReduceSum takes axes as an input from 13, ReduceMean only from 18.
    pub(crate) fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = ("keepdims", Attr::I(keepdims as i64));
        let axes_as_input = op == "ReduceSum" || self.opset >= 18;
        if axes_as_input {
            let a = self.ints(axes);
            self.op(op, &[x, &a], vec![keep])
        } else {
            self.op(op, &[x], vec![keep, ("axes", Attr::Ints(axes.to_vec()))])
        }
    }

    pub(crate) fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a], vec![])
    }

    /// The number of elements of `x` as a scalar of the graph's float type.
    pub(crate) fn size_f(&mut self, x: &str) -> String {
        let s = self.op("Size", &[x], vec![]);
        self.op("Cast", &[&s], vec![("to", Attr::I(self.elem_type as i64))])
    }
}

/// IEEE 754 half from f32, round to nearest even; enough for the few constants we write.
fn f32_to_f16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let mant = x & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = (mant | 0x80_0000) >> (1 - e);
        let round = (m >> 12) & 1;
        return sign | ((m >> 13) + round) as u16;
    }
    let m = mant >> 13;
    let round = (mant >> 12) & 1;
    (sign as u32 | ((e as u32) << 10) | m).wrapping_add(round) as u16
}

#[cfg(test)]
mod tests {
    #[test]
    fn half_constants() {
        assert_eq!(super::f32_to_f16_bits(1.0), 0x3c00);
        assert_eq!(super::f32_to_f16_bits(0.5), 0x3800);
        assert_eq!(super::f32_to_f16_bits(-3.0), 0xc200);
        assert_eq!(super::f32_to_f16_bits(0.0), 0);
    }
}
