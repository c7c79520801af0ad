//! A u8 frames input in front of a model: the graph takes the frames as a camera gives them
//! (8-bit, `[N, H, W, 3]`, B, G, R) and normalizes, reorders and transposes them itself. A frame
//! then crosses the wire to an inference server as H × W × 3 bytes, a quarter of the float32
//! tensor the model itself takes.
//!
//! The model's float input stops being a graph input and becomes the output of the new nodes.
//! Removing one entry of `graph.input` is the one edit here that appending cannot do, so it is
//! done on the protobuf wire: every other byte of the file stays as the exporter wrote it
//! (see [`crate::proto`] on why a decoded model is never re-encoded).

use prost::encoding::{decode_varint, encode_varint, WireType};
use prost::Message;

use super::augment::value_info;
use super::builder::{Attr, Builder};
use super::proto::{dtype, GraphProto, ValueInfoProto};
use super::OnnxError;

/// Name of the u8 frames input.
pub const IN_FRAMES: &str = "gradcamd_frames";

/// How a frame's pixels become the model's input: `x = pixel * scale + offset`, per channel of
/// the frame (B, G, R), then the model's channel order and layout.
#[derive(Debug, Clone, PartialEq)]
pub struct FramesFront {
    pub height: u32,
    pub width: u32,
    /// Multiplier for the frame's B, G and R channels (`1 / std` of the model's channel).
    pub scale_bgr: [f32; 3],
    /// Added after the multiplication (`-mean / std`).
    pub offset_bgr: [f32; 3],
    /// The model takes R, G, B (most do); false: B, G, R as the frame.
    pub rgb: bool,
    /// The model takes `[N, 3, H, W]`; false: `[N, H, W, 3]`.
    pub nchw: bool,
}

/// `model` (an ONNX file's bytes, augmented or not) with its input `input` fed from a u8 frames
/// input [`IN_FRAMES`] through the normalization `front` describes. The arithmetic is the one
/// gradcamd's preprocessing does (a float32 multiply, then an add), so the model sees the same
/// values from the same resized frame.
pub fn with_frames_input(
    model: &[u8],
    input: &str,
    input_elem_type: i32,
    opset: i64,
    front: &FramesFront,
) -> Result<Vec<u8>, OnnxError> {
    // Its own prefix: the augmented graph's names are `gradcamd/...` from a counter at 1 too.
    let mut b = Builder::named("gradcamd/frames", dtype::FLOAT, opset);
    // Layout and channel order are moved on the u8 frames (a quarter of the bytes, and for
    // planes a copy of three whole planes); then each value is cast and gets the multiply and
    // the add, as in preprocessing.
    let mut x = IN_FRAMES.to_string();
    let channels = if front.nchw {
        x = b.op("Transpose", &[&x], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))]);
        1
    } else {
        3
    };
    let (mut scale, mut offset) = (front.scale_bgr, front.offset_bgr);
    if front.rgb {
        let starts = b.ints(&[2]);
        let ends = b.ints(&[i64::MIN]);
        let axes = b.ints(&[channels]);
        let steps = b.ints(&[-1]);
        x = b.op("Slice", &[&x, &starts, &ends, &axes, &steps], vec![]);
        scale.reverse();
        offset.reverse();
    }
    let f = b.op("Cast", &[&x], vec![("to", Attr::I(dtype::FLOAT as i64))]);
    let dims: &[i64] = if front.nchw { &[3, 1, 1] } else { &[3] };
    let scale = b.const_f(&scale.map(f64::from), dims);
    let offset = b.const_f(&offset.map(f64::from), dims);
    let scaled = b.op("Mul", &[&f, &scale], vec![]);
    let x = b.op("Add", &[&scaled, &offset], vec![]);
    if input_elem_type == dtype::FLOAT {
        b.op_into("Identity", &[&x], vec![], input);
    } else {
        b.op_into(
            "Cast",
            &[&x],
            vec![("to", Attr::I(input_elem_type as i64))],
            input,
        );
    }
    let (h, w) = (i64::from(front.height), i64::from(front.width));
    let front_graph = GraphProto {
        node: std::mem::take(&mut b.nodes),
        initializer: std::mem::take(&mut b.initializers),
        input: vec![value_info(
            IN_FRAMES,
            dtype::UINT8,
            &[None, Some(h), Some(w), Some(3)],
        )],
        ..Default::default()
    };
    // The new graph first: protobuf concatenates the repeated fields of every `graph` field in
    // order, so its nodes come before the model's that read `input` (graph order stays
    // topological) and its input is the first input.
    let mut out = Vec::with_capacity(model.len() + 4096);
    prost::encoding::message::encode(7, &front_graph, &mut out);
    let mut removed = 0;
    for field in Fields::new(model) {
        let field = field?;
        if field.number != 7 {
            out.extend_from_slice(field.whole);
            continue;
        }
        let mut graph = Vec::with_capacity(field.body.len());
        for g in Fields::new(field.body) {
            let g = g?;
            if g.number == 11 {
                let vi = ValueInfoProto::decode(g.body)
                    .map_err(|e| OnnxError::Decode(format!("a graph input: {e}")))?;
                if vi.name == input {
                    removed += 1;
                    continue;
                }
            }
            graph.extend_from_slice(g.whole);
        }
        encode_varint(u64::from(7u32 << 3 | WireType::LengthDelimited as u32), &mut out);
        encode_varint(graph.len() as u64, &mut out);
        out.extend_from_slice(&graph);
    }
    if removed != 1 {
        return Err(OnnxError::NotCnn(format!(
            "the model has {removed} graph inputs named '{input}', not one"
        )));
    }
    Ok(out)
}

/// One field of a protobuf message: its number, its bytes (key included) and, for a
/// length-delimited field, its payload.
struct Field<'a> {
    number: u32,
    whole: &'a [u8],
    body: &'a [u8],
}

/// The fields of a message, on the wire, without decoding their values.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { rest: bytes }
    }

    fn next_field(&mut self) -> Result<Field<'a>, OnnxError> {
        let bad = |what: &str| OnnxError::Decode(format!("malformed protobuf: {what}"));
        let start = self.rest;
        let mut buf = self.rest;
        let key = decode_varint(&mut buf).map_err(|_| bad("a field key"))?;
        let number = u32::try_from(key >> 3).map_err(|_| bad("a field number"))?;
        let (body, rest) = match key & 7 {
            0 => {
                decode_varint(&mut buf).map_err(|_| bad("a varint"))?;
                (&[][..], buf)
            }
            1 => split(buf, 8).ok_or_else(|| bad("a 64-bit field"))?,
            2 => {
                let len = decode_varint(&mut buf).map_err(|_| bad("a length"))?;
                let len = usize::try_from(len).map_err(|_| bad("a length"))?;
                split(buf, len).ok_or_else(|| bad("a field longer than the message"))?
            }
            5 => split(buf, 4).ok_or_else(|| bad("a 32-bit field"))?,
            t => return Err(bad(&format!("wire type {t}"))),
        };
        let used = start.len() - rest.len();
        self.rest = rest;
        Ok(Field {
            number,
            whole: &start[..used],
            body: if key & 7 == 2 { body } else { &[] },
        })
    }
}

fn split(buf: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (buf.len() >= n).then(|| buf.split_at(n))
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, OnnxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}
