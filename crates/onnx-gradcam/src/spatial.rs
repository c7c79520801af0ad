//! Backward rules of the spatial ops of a CNN's body: Conv, MaxPool and AveragePool, for a
//! target tensor earlier than the last feature map.
//!
//! Each input gradient is a `ConvTranspose` with the forward op's strides, begin pads,
//! dilations and groups, then fitted to the input's spatial size. Its output starts at the
//! input's first row and ends where the last window ends: short of the input's end by the rows
//! no window covered (the remainder of the stride division), which get no gradient and are
//! padded with zeros, or past it, into the end padding (or beyond, with `ceil_mode`), which is
//! cut. (Cropping the end pads inside the ConvTranspose would cut real rows whenever the stride
//! leaves a remainder.) The fit is computed from
//! `Shape` at run time, so a symbolic batch (or size) works and nothing is assumed at rewrite
//! time except the attributes.
//!
//! MaxPool: the appended graph recomputes the argmax (a second MaxPool, asked for its `Indices`
//! output; the original node is untouched), turns each into its offset inside its window, and
//! spreads the gradient of each window onto that offset with a transposed convolution whose
//! kernel has one 1 per offset: where windows overlap (ResNet's 3×3 stride-2 stem), gradients
//! that land on one input are summed, as torch does. No opset-16 scatter reduction is needed.

use super::builder::Attr;
use super::model::{attr_i, attr_ints, attr_s};
use super::proto::NodeProto;
use super::vjp::Ctx;
use super::OnnxError;

/// The largest kernel side taken.
const MAX_KERNEL: i64 = 256;
/// The largest MaxPool window (its backward kernel has area² entries): 32×32.
const MAX_POOL_AREA: i64 = 1024;

/// A window op's geometry over `sp` spatial axes, with the pads made explicit.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    /// Begin pads, then end pads, per spatial axis (ONNX's order).
    pads: Vec<i64>,
}

impl Window {
    /// The begin pads, and none at the end (see the module doc).
    fn begin_pads(&self) -> Vec<i64> {
        let sp = self.kernel.len();
        let mut p = self.pads[..sp].to_vec();
        p.extend(std::iter::repeat_n(0, sp));
        p
    }
}

fn auto_pad(n: &NodeProto) -> String {
    attr_s(n, "auto_pad")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "NOTSET".into())
}

/// The window of node `ni` (`kernel` from the attribute, or Conv's weight).
fn window(cx: &Ctx, ni: usize, n: &NodeProto, kernel: Option<Vec<i64>>) -> Result<Window, OnnxError> {
    let x = &n.input[0];
    let sp = cx
        .rank(x, ni)?
        .checked_sub(2)
        .filter(|&s| s > 0)
        .ok_or_else(|| cx.unsupported(ni, "the input has no spatial axes"))?;
    let kernel = attr_ints(n, "kernel_shape")
        .or(kernel)
        .filter(|k| k.len() == sp)
        .ok_or_else(|| {
            cx.unsupported(
                ni,
                "the kernel shape is unknown (no kernel_shape, and the weight's shape is not declared)",
            )
        })?;
    let list = |name: &str, default: i64, len: usize| -> Result<Vec<i64>, OnnxError> {
        match attr_ints(n, name) {
            Some(v) if v.len() == len && v.iter().all(|&e| (0..=1 << 16).contains(&e)) => Ok(v),
            Some(v) => Err(cx.unsupported(ni, format!("{name} {v:?} does not fit {sp} spatial axes"))),
            None => Ok(vec![default; len]),
        }
    };
    let strides = list("strides", 1, sp)?;
    let dilations = list("dilations", 1, sp)?;
    if strides.contains(&0) || dilations.contains(&0) || kernel.iter().any(|&k| k < 1) {
        return Err(cx.unsupported(ni, "a zero stride, dilation or kernel size"));
    }
    // The pools' backward builds kernels of this size: a corrupt or hostile attribute must be
    // an error, not an allocation of terabytes.
    if kernel.iter().any(|&k| k > MAX_KERNEL) {
        return Err(cx.unsupported(
            ni,
            format!("kernel_shape {kernel:?} (larger than {MAX_KERNEL} on an axis)"),
        ));
    }
    let pads = match auto_pad(n).as_str() {
        "NOTSET" => list("pads", 0, 2 * sp)?,
        "VALID" => vec![0; 2 * sp],
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            // The pads depend on the input's size, which must then be known here.
            let dims = cx.m.declared_dims(x).filter(|d| d.len() == sp + 2);
            let size: Option<Vec<i64>> = dims.and_then(|d| d[2..].iter().copied().collect());
            let size = size.ok_or_else(|| {
                cx.unsupported(
                    ni,
                    format!("auto_pad {mode} needs the input's spatial size, which the model does not declare; run onnx shape inference on it"),
                )
            })?;
            let mut begin = Vec::with_capacity(sp);
            let mut end = Vec::with_capacity(sp);
            for i in 0..sp {
                let ek = (kernel[i] - 1) * dilations[i] + 1;
                let out = (size[i] + strides[i] - 1) / strides[i];
                let total = ((out - 1) * strides[i] + ek - size[i]).max(0);
                let (small, big) = (total / 2, total - total / 2);
                if mode == "SAME_UPPER" {
                    begin.push(small);
                    end.push(big);
                } else {
                    begin.push(big);
                    end.push(small);
                }
            }
            begin.extend(end);
            begin
        }
        other => return Err(cx.unsupported(ni, format!("auto_pad {other}"))),
    };
    Ok(Window {
        kernel,
        strides,
        dilations,
        pads,
    })
}

/// `ConvTranspose(g, w)` over the window, fitted to `x`'s spatial size (see the module doc).
fn transposed(cx: &mut Ctx, g: &str, w: &str, win: &Window, group: i64, x: &str) -> String {
    let t = cx.b.op(
        "ConvTranspose",
        &[g, w],
        vec![
            ("strides", Attr::Ints(win.strides.clone())),
            ("dilations", Attr::Ints(win.dilations.clone())),
            ("pads", Attr::Ints(win.begin_pads())),
            ("group", Attr::I(group)),
        ],
    );
    fit(cx, &t, x, win.kernel.len())
}

/// `t` with its spatial axes zero-padded at the end or cut to `x`'s (same batch and channels).
fn fit(cx: &mut Ctx, t: &str, x: &str, sp: usize) -> String {
    let sx = cx.b.op("Shape", &[x], vec![]);
    let st = cx.b.op("Shape", &[t], vec![]);
    let short = cx.b.op("Sub", &[&sx, &st], vec![]);
    let zero = cx.b.ints(&[0]);
    let more = cx.b.op("Max", &[&short, &zero], vec![]);
    let begin = cx.b.ints(&vec![0; sp + 2]);
    let pads = cx.b.op("Concat", &[&begin, &more], vec![("axis", Attr::I(0))]);
    let padded = cx.b.op("Pad", &[t, &pads], vec![]);
    let starts = cx.b.ints(&vec![0; sp + 2]);
    cx.b.op("Slice", &[&padded, &starts, &sx], vec![])
}

/// Conv: the gradient of its input (the weight and bias are constants of the model).
pub(crate) fn conv(
    cx: &mut Ctx,
    ni: usize,
    n: &NodeProto,
    g: &str,
) -> Result<Vec<(usize, String)>, OnnxError> {
    cx.only_first(ni, n, "the weight or bias depends on the target tensor")?;
    let w = &n.input[1];
    let wk =
        cx.m.declared_dims(w)
            .filter(|d| d.len() > 2)
            .and_then(|d| d[2..].iter().copied().collect::<Option<Vec<i64>>>());
    let win = window(cx, ni, n, wk)?;
    let group = attr_i(n, "group").unwrap_or(1);
    if group < 1 {
        return Err(cx.unsupported(ni, format!("group {group}")));
    }
    // Conv's weight [M, C/group, k..] is ConvTranspose's [C_in = M, C_out/group, k..] as is.
    Ok(vec![(0, transposed(cx, g, w, &win, group, &n.input[0]))])
}

/// Channels folded into the batch, `[N*C, 1, ..]`, so that one single-channel kernel serves any
/// channel count (the count need not be known here).
fn fold(cx: &mut Ctx, t: &str, k: i64, sp: usize) -> String {
    let s = cx.b.op("Shape", &[t], vec![]);
    let lo = cx.b.ints(&[3]);
    let hi = cx.b.ints(&[3 + sp as i64]);
    let axes = cx.b.ints(&[0]);
    let spatial = cx.b.op("Slice", &[&s, &lo, &hi, &axes], vec![]);
    let head = cx.b.ints(&[-1, k]);
    let shape = cx.b.op("Concat", &[&head, &spatial], vec![("axis", Attr::I(0))]);
    cx.b.op("Reshape", &[t, &shape], vec![])
}

/// `[N*C, 1, ..]` back to `[N, C, ..]` of `x`.
fn unfold(cx: &mut Ctx, t: &str, x: &str, sp: usize) -> String {
    let sx = cx.b.op("Shape", &[x], vec![]);
    let st = cx.b.op("Shape", &[t], vec![]);
    let nc = {
        let lo = cx.b.ints(&[0]);
        let hi = cx.b.ints(&[2]);
        cx.b.op("Slice", &[&sx, &lo, &hi], vec![])
    };
    let spatial = {
        let lo = cx.b.ints(&[2]);
        let hi = cx.b.ints(&[2 + sp as i64]);
        cx.b.op("Slice", &[&st, &lo, &hi], vec![])
    };
    let shape = cx.b.op("Concat", &[&nc, &spatial], vec![("axis", Attr::I(0))]);
    cx.b.op("Reshape", &[t, &shape], vec![])
}

/// Spreads `g` [N, C, out..] back over `x` through the window with a single-channel kernel
/// `[k, 1, kernel..]` (k input planes per channel, summed).
fn spread(cx: &mut Ctx, g5: &str, kernel: &str, k: i64, win: &Window, x: &str) -> String {
    let sp = win.kernel.len();
    let folded = fold(cx, g5, k, sp);
    let t = cx.b.op(
        "ConvTranspose",
        &[&folded, kernel],
        vec![
            ("strides", Attr::Ints(win.strides.clone())),
            ("dilations", Attr::Ints(win.dilations.clone())),
            ("pads", Attr::Ints(win.begin_pads())),
        ],
    );
    let t = unfold(cx, &t, x, sp);
    fit(cx, &t, x, sp)
}

pub(crate) fn average_pool(
    cx: &mut Ctx,
    ni: usize,
    n: &NodeProto,
    g: &str,
) -> Result<Vec<(usize, String)>, OnnxError> {
    let win = window(cx, ni, n, None)?;
    let x = &n.input[0];
    if attr_i(n, "ceil_mode") == Some(1) {
        return Err(cx.unsupported(ni, "AveragePool with ceil_mode = 1 (its last windows' divisors)"));
    }
    let area: i64 = win.kernel.iter().product();
    // Each window's gradient share per element: g / (elements it averaged).
    let share = if attr_i(n, "count_include_pad").unwrap_or(0) == 1 || win.pads.iter().all(|&p| p == 0) {
        let a = cx.b.scalar(area as f64);
        cx.b.op("Div", &[g, &a], vec![])
    } else {
        // Elements inside the input per window: the padded average of ones, times the area.
        let ones = {
            let s = cx.b.op("Shape", &[x], vec![]);
            let one = cx.b.const_f(&[1.0], &[1]);
            cx.b.op("Expand", &[&one, &s], vec![])
        };
        let mut attrs = vec![
            ("kernel_shape", Attr::Ints(win.kernel.clone())),
            ("strides", Attr::Ints(win.strides.clone())),
            ("pads", Attr::Ints(win.pads.clone())),
            ("count_include_pad", Attr::I(1)),
        ];
        if win.dilations.iter().any(|&d| d != 1) {
            attrs.push(("dilations", Attr::Ints(win.dilations.clone())));
        }
        let frac = cx.b.op("AveragePool", &[&ones], attrs);
        let a = cx.b.scalar(area as f64);
        let count = cx.b.op("Mul", &[&frac, &a], vec![]);
        cx.b.op("Div", &[g, &count], vec![])
    };
    let g5 = cx.b.unsqueeze(&share, &[2]);
    let kernel = cx.b.const_f(
        &vec![1.0; area as usize],
        &[&[1, 1][..], &win.kernel[..]].concat(),
    );
    Ok(vec![(0, spread(cx, &g5, &kernel, 1, &win, x))])
}

pub(crate) fn max_pool(
    cx: &mut Ctx,
    ni: usize,
    n: &NodeProto,
    g: &str,
) -> Result<Vec<(usize, String)>, OnnxError> {
    let win = window(cx, ni, n, None)?;
    let sp = win.kernel.len();
    if sp != 2 {
        return Err(cx.unsupported(ni, format!("MaxPool over {sp} spatial axes (2 are supported)")));
    }
    if attr_i(n, "storage_order") == Some(1) {
        return Err(cx.unsupported(ni, "MaxPool with storage_order = 1"));
    }
    if win.kernel[0] * win.kernel[1] > MAX_POOL_AREA {
        return Err(cx.unsupported(
            ni,
            format!(
                "MaxPool kernel_shape {:?} (windows of more than {MAX_POOL_AREA} elements)",
                win.kernel
            ),
        ));
    }
    let x = &n.input[0];
    // The argmax of every window, recomputed: a flat index into the whole input.
    let mut attrs = vec![
        ("kernel_shape", Attr::Ints(win.kernel.clone())),
        ("strides", Attr::Ints(win.strides.clone())),
        ("pads", Attr::Ints(win.pads.clone())),
        ("dilations", Attr::Ints(win.dilations.clone())),
    ];
    if let Some(c) = attr_i(n, "ceil_mode") {
        attrs.push(("ceil_mode", Attr::I(c)));
    }
    let idx = cx.b.op_second("MaxPool", &[x], attrs);
    // Row and column of the argmax in its plane.
    let sx = cx.b.op("Shape", &[x], vec![]);
    let (h_in, w_in) = (dim(cx, &sx, 2), dim(cx, &sx, 3));
    let plane = cx.b.op("Mul", &[&h_in, &w_in], vec![]);
    let at = cx.b.op("Mod", &[&idx, &plane], vec![]);
    let row = cx.b.op("Div", &[&at, &w_in], vec![]);
    let col = cx.b.op("Mod", &[&at, &w_in], vec![]);
    // Each window's first row and column: out_index * stride - pad_begin.
    let sg = cx.b.op("Shape", &[&idx], vec![]);
    let mut rel = Vec::with_capacity(2);
    for (axis, pos) in [(2usize, &row), (3, &col)] {
        let a = axis - 2;
        let len = dim(cx, &sg, axis as i64);
        let zero = cx.b.const_i64(&[0], &[]);
        let one = cx.b.const_i64(&[1], &[]);
        let len0 = cx.b.op("Squeeze", &[&len], vec![]);
        let r = cx.b.op("Range", &[&zero, &len0, &one], vec![]);
        let s = cx.b.const_i64(&[win.strides[a]], &[]);
        let p = cx.b.const_i64(&[win.pads[a]], &[]);
        let first = cx.b.op("Mul", &[&r, &s], vec![]);
        let first = cx.b.op("Sub", &[&first, &p], vec![]);
        let shape = if axis == 2 {
            cx.b.ints(&[1, 1, -1, 1])
        } else {
            cx.b.ints(&[1, 1, 1, -1])
        };
        let first = cx.b.op("Reshape", &[&first, &shape], vec![]);
        let off = cx.b.op("Sub", &[pos, &first], vec![]);
        let d = cx.b.const_i64(&[win.dilations[a]], &[]);
        rel.push(cx.b.op("Div", &[&off, &d], vec![]));
    }
    let kw = cx.b.const_i64(&[win.kernel[1]], &[]);
    let o = cx.b.op("Mul", &[&rel[0], &kw], vec![]);
    let o = cx.b.op("Add", &[&o, &rel[1]], vec![]);
    // One plane per offset: the window's gradient where its argmax sits at that offset.
    let k = win.kernel[0] * win.kernel[1];
    let offsets: Vec<i64> = (0..k).collect();
    let all = cx.b.const_i64(&offsets, &[1, 1, k, 1, 1]);
    let o5 = cx.b.unsqueeze(&o, &[2]);
    let hit = cx.b.op("Equal", &[&o5, &all], vec![]);
    let g5 = cx.b.unsqueeze(g, &[2]);
    let zero = cx.b.scalar(0.0);
    let g5 = cx.b.op("Where", &[&hit, &g5, &zero], vec![]);
    // Kernel [k, 1, kh, kw]: plane o puts its value at offset o.
    let mut eye = vec![0.0; (k * k) as usize];
    for i in 0..k as usize {
        eye[i * k as usize + i] = 1.0;
    }
    let kernel = cx.b.const_f(&eye, &[k, 1, win.kernel[0], win.kernel[1]]);
    Ok(vec![(0, spread(cx, &g5, &kernel, k, &win, x))])
}

/// `shape[axis]` as a 1-element tensor.
fn dim(cx: &mut Ctx, shape: &str, axis: i64) -> String {
    let i = cx.b.ints(&[axis]);
    cx.b.op("Gather", &[shape, &i], vec![("axis", Attr::I(0))])
}

/// Pad (constant mode): the gradient is the padded gradient cut back to the input (and, for
/// negative pads, which crop, the cropped part given back as zeros). The pads are read at run
/// time, like the forward op reads them: exporters compute them with a chain of ops (torch's
/// `F.pad` in EfficientNet's static padding) rather than store a constant.
pub(crate) fn pad(
    cx: &mut Ctx,
    ni: usize,
    n: &NodeProto,
    g: &str,
) -> Result<Vec<(usize, String)>, OnnxError> {
    cx.only_first(ni, n, "the pads or the padding value depend on the target tensor")?;
    let mode = attr_s(n, "mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return Err(cx.unsupported(
            ni,
            format!("Pad mode '{mode}' (only constant padding is supported)"),
        ));
    }
    let x = &n.input[0];
    let pads = n
        .input
        .get(1)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| cx.unsupported(ni, "no pads input (opset 11 and later give one)"))?;
    let axes = n.input.get(3).filter(|s| !s.is_empty());
    // Per padded axis: the begin and end pads (k each, k = rank or the axes given).
    let sx = cx.b.op("Shape", &[x], vec![]);
    let size = match axes {
        Some(a) => cx.b.op("Gather", &[&sx, a], vec![("axis", Attr::I(0))]),
        None => sx.clone(),
    };
    let two = cx.b.ints(&[2, -1]);
    let p2 = cx.b.op("Reshape", &[pads, &two], vec![]);
    let zero_i = cx.b.const_i64(&[0], &[]);
    let begin = cx.b.op("Gather", &[&p2, &zero_i], vec![("axis", Attr::I(0))]);
    // Crops undone: zeros where the forward cut (negative pads), at both ends.
    let neg = cx.b.op("Neg", &[pads], vec![]);
    let zero = cx.b.ints(&[0]);
    let undo = cx.b.op("Max", &[&neg, &zero], vec![]);
    let mut pad_in: Vec<&str> = vec![g, &undo];
    if let Some(a) = axes {
        pad_in.extend(["", a.as_str()]);
    }
    let t = cx.b.op("Pad", &pad_in, vec![]);
    // Then the padding cut off: from max(begin, 0), the input's size.
    let starts = cx.b.op("Max", &[&begin, &zero], vec![]);
    let ends = cx.b.op("Add", &[&starts, &size], vec![]);
    let mut slice_in: Vec<&str> = vec![&t, &starts, &ends];
    if let Some(a) = axes {
        slice_in.push(a.as_str());
    }
    Ok(vec![(0, cx.b.op("Slice", &slice_in, vec![]))])
}

/// Concat: each input's gradient is its own stretch of the output's along the axis; the
/// stretches' offsets come from the inputs' shapes at run time.
pub(crate) fn concat(
    cx: &mut Ctx,
    ni: usize,
    n: &NodeProto,
    g: &str,
) -> Result<Vec<(usize, String)>, OnnxError> {
    let r = cx.rank(&n.output[0], ni)? as i64;
    let axis = cx.axis(attr_i(n, "axis").unwrap_or(0), r, ni)?;
    let ax = cx.b.ints(&[axis]);
    let mut start = cx.b.ints(&[0]);
    let mut out = Vec::new();
    for (i, x) in n.input.iter().enumerate() {
        if x.is_empty() {
            continue;
        }
        let sx = cx.b.op("Shape", &[x], vec![]);
        let len = cx.b.op("Gather", &[&sx, &ax], vec![("axis", Attr::I(0))]);
        let end = cx.b.op("Add", &[&start, &len], vec![]);
        if cx.diff.contains(x) {
            out.push((i, cx.b.op("Slice", &[g, &start, &end, &ax], vec![])));
        }
        start = end;
    }
    Ok(out)
}

/// Slice with steps of 1: the gradient is the output's gradient padded with zeros back to the
/// input's shape. Starts and ends are resolved at run time as the forward op resolves them
/// (negative from the end, clamped to the axis).
pub(crate) fn slice(
    cx: &mut Ctx,
    ni: usize,
    n: &NodeProto,
    g: &str,
) -> Result<Vec<(usize, String)>, OnnxError> {
    cx.only_first(
        ni,
        n,
        "the starts, ends, axes or steps depend on the target tensor",
    )?;
    if n.input.len() < 3 {
        return Err(cx.unsupported(
            ni,
            "Slice without starts and ends inputs (opset 10 and later give them)",
        ));
    }
    let opt = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).cloned();
    if let Some(steps) = opt(4) {
        match cx.m.constant_i64(&steps) {
            Some(v) if v.iter().all(|&s| s == 1) => {}
            Some(v) => {
                return Err(cx.unsupported(
                    ni,
                    format!("Slice with steps {v:?} (only steps of 1 are supported)"),
                ))
            }
            None => return Err(cx.unsupported(ni, "Slice with steps that are not a constant of the model")),
        }
    }
    let x = &n.input[0];
    let r = cx.rank(x, ni)?;
    let sx = cx.b.op("Shape", &[x], vec![]);
    // The sliced axes, normalized to 0..r.
    let axes = match opt(3) {
        Some(a) => {
            let rr = cx.b.const_i64(&[r as i64], &[]);
            let zero = cx.b.const_i64(&[0], &[]);
            let neg = cx.b.op("Less", &[&a, &zero], vec![]);
            let wrapped = cx.b.op("Add", &[&a, &rr], vec![]);
            cx.b.op("Where", &[&neg, &wrapped, &a], vec![])
        }
        None => {
            // All leading axes, as many as starts has.
            let ss = cx.b.op("Shape", &[&n.input[1]], vec![]);
            let zero = cx.b.const_i64(&[0], &[]);
            let one = cx.b.const_i64(&[1], &[]);
            let k = cx.b.op("Squeeze", &[&ss], vec![]);
            cx.b.op("Range", &[&zero, &k, &one], vec![])
        }
    };
    let dims = cx.b.op("Gather", &[&sx, &axes], vec![("axis", Attr::I(0))]);
    let resolve = |cx: &mut Ctx, t: &str| -> String {
        let zero = cx.b.const_i64(&[0], &[]);
        let neg = cx.b.op("Less", &[t, &zero], vec![]);
        let wrapped = cx.b.op("Add", &[t, &dims], vec![]);
        let v = cx.b.op("Where", &[&neg, &wrapped, t], vec![]);
        let v = cx.b.op("Max", &[&v, &zero], vec![]);
        cx.b.op("Min", &[&v, &dims], vec![])
    };
    let begin = resolve(cx, &n.input[1]);
    let end = resolve(cx, &n.input[2]);
    let end = cx.b.op("Max", &[&end, &begin], vec![]);
    let after = cx.b.op("Sub", &[&dims, &end], vec![]);
    // Full-rank pads: zeros, with the sliced axes' begin and after scattered in.
    let zeros = {
        let z = cx.b.const_i64(&[0], &[1]);
        let rr = cx.b.ints(&[r as i64]);
        cx.b.op("Expand", &[&z, &rr], vec![])
    };
    let pb = cx.b.op(
        "ScatterElements",
        &[&zeros, &axes, &begin],
        vec![("axis", Attr::I(0))],
    );
    let pe = cx.b.op(
        "ScatterElements",
        &[&zeros, &axes, &after],
        vec![("axis", Attr::I(0))],
    );
    let pads = cx.b.op("Concat", &[&pb, &pe], vec![("axis", Attr::I(0))]);
    Ok(vec![(0, cx.b.op("Pad", &[g, &pads], vec![]))])
}

/// Split: the gradient is the outputs' gradients put back together along the axis, zeros for
/// the outputs nothing downstream used.
pub(crate) fn split(
    cx: &mut Ctx,
    ni: usize,
    n: &NodeProto,
    gys: &[Option<String>],
) -> Result<Vec<(usize, String)>, OnnxError> {
    cx.only_first(ni, n, "the split sizes depend on the target tensor")?;
    let x = n
        .input
        .first()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| cx.unsupported(ni, "no input"))?;
    let r = cx.rank(x, ni)? as i64;
    let axis = cx.axis(attr_i(n, "axis").unwrap_or(0), r, ni)?;
    let zero = cx.b.scalar(0.0);
    let mut parts = Vec::with_capacity(gys.len());
    for (o, gy) in n.output.iter().zip(gys) {
        parts.push(match gy {
            Some(g) => g.clone(),
            None => {
                let s = cx.b.op("Shape", &[o], vec![]);
                cx.b.op("Expand", &[&zero, &s], vec![])
            }
        });
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(vec![(0, cx.b.op("Concat", &refs, vec![("axis", Attr::I(axis))]))])
}
