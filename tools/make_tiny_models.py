"""Make the tiny ONNX models that unit-test gradcamd's model augmentation
(one model per backward rule), plus their reference gradients.

Makes, in tests/fixtures/tiny/:
  <name>.onnx   a few hundred bytes each, built with onnx.helper, float32 random
                weights (seed = crc32 of the name). Graph input "x" [N,4,3,3]
                with N symbolic (dim_param "N"; fixed_batch: N = 2), output
                "logits" [N,5]. x itself is the Grad-CAM target tensor A.
  <name>.json   (not for unsupported_op, no_pool) the reference:
                  {"x": [B,4,3,3], "class": [B], "logits": [B,5],
                   "dx": [B,4,3,3] = d logits[b, class[b]] / d x[b], ...}
                with B = 3 (fixed_batch: 2), class = argmax per item. Computed
                with torch autograd in float64 from a torch re-implementation
                of each head (independent of ONNX Runtime), and checked against
                float64 central differences and against onnxruntime's logits.
                x is seeded normal noise, resampled until no Relu / Clip /
                HardSwish / HardSigmoid / LeakyRelu input lies within 0.05 of a
                kink, every piece of each piecewise op is used at least once,
                and the items do not all have the same class.
  README.md     what each model is.

Run (paths relative to the repo root):
  /tmp/pyenv/venv/bin/python tools/make_tiny_models.py [--out-dir tests/fixtures/tiny]

Dev-time only (numpy, onnx, onnxruntime, torch); the Rust tests read the
committed outputs and need no Python.
"""

import argparse
import json
import os
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
C, H, W, K = 4, 3, 3, 5          # channels, height, width of x; classes
HID = 6                           # hidden width of the two-Gemm heads
KINK_MARGIN = 0.05
HSIG_ALPHA = np.float32(1.0 / 6.0)  # HardSigmoid alpha as torch exports it
LEAKY_ALPHA = np.float32(0.1)
EPS = np.float32(1e-5)
T = torch.float64


class Builder:
    """Collects nodes and float32 initializers for one model, plus the same
    weights as float64 torch tensors for the reference."""

    def __init__(self, name):
        self.name = name
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.nodes, self.inits, self.w = [], [], {}
        self._n = 0

    def init(self, name, value, dtype=np.float32):
        arr = np.asarray(value, dtype=dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        if dtype == np.float32:
            self.w[name] = torch.from_numpy(arr.astype(np.float64))
        return name

    def randn(self, name, shape, scale=1.0):
        return self.init(name, self.rng.standard_normal(shape) * scale)

    def node(self, op, inputs, **attrs):
        self._n += 1
        out = attrs.pop("_out", f"t{self._n}_{op.lower()}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"n{self._n}_{op}", **attrs))
        return out

    def model(self, output, opset=17, batch="N", hw=(H, W)):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, C, *hw])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, K])
        # rename the last node's output to "logits"
        last = self.nodes[-1]
        assert last.output[0] == output
        last.output[0] = "logits"
        g = helper.make_graph(self.nodes, self.name, [x], [y], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="gradcamd tools/make_tiny_models.py")
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


# ---------------------------------------------------------------- heads
# Each maker returns (onnx model, torch_fn). torch_fn(x float64 [B,4,3,3])
# returns (logits [B,5], kinks, extras): kinks is a list of (tensor, kink points,
# pieces) for the piecewise ops; extras maps tensor names to torch tensors that
# the default-target rule would pick when it is not x.

def gemm_head(b, h, k_in, k_out, prefix, trans_b=1, scale=1.0):
    wname = b.randn(f"{prefix}_W", (k_out, k_in) if trans_b else (k_in, k_out), scale)
    bname = b.randn(f"{prefix}_b", (k_out,), 0.5)
    out = b.node("Gemm", [h, wname, bname], transB=trans_b)

    def tf(t):
        wt = b.w[wname] if trans_b else b.w[wname].T
        return t @ wt.T + b.w[bname]
    return out, tf


def m_gap_flatten_gemm(name, trans_b=1, batch="N"):
    b = Builder(name)
    h = b.node("Flatten", [b.node("GlobalAveragePool", ["x"])], axis=1)
    out, g = gemm_head(b, h, C, K, "fc", trans_b)
    return b.model(out, batch=batch), lambda x: (g(x.mean((2, 3))), [], {})


def m_gap_reshape_matmul_add(name):
    b = Builder(name)
    shape = b.init("shape", [-1, C], np.int64)
    h = b.node("Reshape", [b.node("GlobalAveragePool", ["x"]), shape])
    wm, bm = b.randn("W", (C, K)), b.randn("bias", (K,), 0.5)
    out = b.node("Add", [b.node("MatMul", [h, wm]), bm])
    return b.model(out), lambda x: (x.mean((2, 3)) @ b.w[wm] + b.w[bm], [], {})


def m_reducemean_attr(name):
    b = Builder(name)
    h = b.node("ReduceMean", ["x"], axes=[2, 3], keepdims=0)
    out, g = gemm_head(b, h, C, K, "fc")
    return b.model(out, opset=13), lambda x: (g(x.mean((2, 3))), [], {})


def m_reducemean_input(name):
    b = Builder(name)
    axes = b.init("axes", [2, 3], np.int64)
    h = b.node("Flatten", [b.node("ReduceMean", ["x", axes], keepdims=1)], axis=1)
    out, g = gemm_head(b, h, C, K, "fc")
    return b.model(out, opset=18), lambda x: (g(x.mean((2, 3))), [], {})


def hidden_head(name, act, scale1=2.0):
    """GAP -> Flatten -> Gemm(4->6) -> <act> -> Gemm(6->5)."""
    b = Builder(name)
    h = b.node("Flatten", [b.node("GlobalAveragePool", ["x"])], axis=1)
    h1, g1 = gemm_head(b, h, C, HID, "fc1", scale=scale1)
    h2, fa, kinks = act(b, h1)
    out, g2 = gemm_head(b, h2, HID, K, "fc2")

    def tf(x):
        z = g1(x.mean((2, 3)))
        return g2(fa(z)), [(z, kinks, True)] if kinks else [], {}
    return b.model(out), tf


def act_relu(b, h):
    return b.node("Relu", [h]), torch.relu, [0.0]


def act_clip6(b, h):
    lo, hi = b.init("clip_min", np.float32(0.0)), b.init("clip_max", np.float32(6.0))
    return b.node("Clip", [h, lo, hi]), lambda z: torch.clamp(z, 0.0, 6.0), [0.0, 6.0]


def act_hardswish(b, h):
    return b.node("HardSwish", [h]), F.hardswish, [-3.0, 3.0]


def act_hardsigmoid(b, h):
    a = float(HSIG_ALPHA)
    out = b.node("HardSigmoid", [h], alpha=a, beta=0.5)
    # kinks where a*z + 0.5 hits 0 and 1
    return out, lambda z: torch.clamp(a * z + 0.5, 0.0, 1.0), [-0.5 / a, 0.5 / a]


def act_sigmoid(b, h):
    return b.node("Sigmoid", [h]), torch.sigmoid, None


def act_leakyrelu(b, h):
    a = float(LEAKY_ALPHA)
    return b.node("LeakyRelu", [h], alpha=a), lambda z: F.leaky_relu(z, a), [0.0]


def act_silu(b, h):
    return b.node("Mul", [h, b.node("Sigmoid", [h])]), lambda z: z * torch.sigmoid(z), None


def m_softmax(name):
    b = Builder(name)
    h = b.node("Flatten", [b.node("GlobalAveragePool", ["x"])], axis=1)
    z, g = gemm_head(b, h, C, K, "fc", scale=2.0)
    out = b.node("Softmax", [z], axis=1)
    return b.model(out), lambda x: (torch.softmax(g(x.mean((2, 3))), dim=1), [], {})


def m_dropout_identity(name):
    b = Builder(name)
    h = b.node("Flatten", [b.node("GlobalAveragePool", ["x"])], axis=1)
    ratio = b.init("dropout_ratio", np.float32(0.5))
    h = b.node("Dropout", [h, ratio])  # inference: training_mode absent = false
    h1, g1 = gemm_head(b, h, C, HID, "fc1", scale=2.0)
    h2 = b.node("Identity", [b.node("Relu", [h1])])
    out, g2 = gemm_head(b, h2, HID, K, "fc2")

    def tf(x):
        z = g1(x.mean((2, 3)))
        return g2(torch.relu(z)), [(z, [0.0], True)], {}
    return b.model(out), tf


def m_se_broadcast_mul(name):
    b = Builder(name)
    s = b.node("Sigmoid", [b.node("GlobalAveragePool", ["x"])])          # [N,4,1,1]
    y = b.node("Mul", ["x", s], _out="se_out")                           # [N,4,3,3]
    h = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    out, g = gemm_head(b, h, C, K, "fc", scale=2.0)

    def tf(x):
        y = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
        return g(y.mean((2, 3))), [], {"se_out": y}
    return b.model(out), tf


def bn_params(b, prefix, c=C):
    scale = b.rng.choice([-1.0, 1.0], c) * (0.5 + b.rng.random(c))  # |scale| >= 0.5
    names = (b.init(f"{prefix}_scale", scale), b.randn(f"{prefix}_B", (c,), 0.5),
             b.randn(f"{prefix}_mean", (c,), 0.5),
             b.init(f"{prefix}_var", 0.25 + b.rng.random(c) * 2.0))

    def tf(t):
        sc, bb, mu, var = (b.w[n].view(1, c, 1, 1) for n in names)
        return (t - mu) / torch.sqrt(var + float(EPS)) * sc + bb
    return list(names), tf


def m_batchnorm(name):
    b = Builder(name)
    names, bn = bn_params(b, "bn")
    h = b.node("BatchNormalization", [b.node("GlobalAveragePool", ["x"])] + names, epsilon=float(EPS))
    out, g = gemm_head(b, b.node("Flatten", [h], axis=1), C, K, "fc")
    return b.model(out), lambda x: (g(bn(x.mean((2, 3), keepdim=True)).flatten(1)), [], {})


def m_batchnorm_before_pool(name):
    b = Builder(name)
    names, bn = bn_params(b, "bn")
    r = b.node("Relu", [b.node("BatchNormalization", ["x"] + names, epsilon=float(EPS))], _out="relu_out")
    h = b.node("Flatten", [b.node("GlobalAveragePool", [r])], axis=1)
    out, g = gemm_head(b, h, C, K, "fc", scale=2.0)

    def tf(x):
        z = bn(x)
        r = torch.relu(z)
        return g(r.mean((2, 3))), [(z, [0.0], True)], {"relu_out": r}
    return b.model(out), tf


def m_avgpool_1x1(name):
    b = Builder(name)
    p = b.node("AveragePool", ["x"], kernel_shape=[1, 1], strides=[1, 1])
    out, g = gemm_head(b, b.node("Flatten", [p], axis=1), C * H * W, K, "fc")
    return b.model(out), lambda x: (g(F.avg_pool2d(x, 1, 1).flatten(1)), [], {})


def m_transpose_layernorm(name):
    """torchvision ConvNeXt classifier: LayerNorm2d (permute, LN, permute) -> Flatten -> Linear."""
    b = Builder(name)
    t = b.node("Transpose", [b.node("GlobalAveragePool", ["x"])], perm=[0, 2, 3, 1])
    sc, bb = b.randn("ln_scale", (C,), 1.0), b.randn("ln_B", (C,), 0.5)
    ln = b.node("LayerNormalization", [t, sc, bb], axis=-1, epsilon=float(EPS))
    h = b.node("Flatten", [b.node("Transpose", [ln], perm=[0, 3, 1, 2])], axis=1)
    out, g = gemm_head(b, h, C, K, "fc")

    def tf(x):
        t = x.mean((2, 3), keepdim=True).permute(0, 2, 3, 1)
        t = F.layer_norm(t, (C,), b.w[sc], b.w[bb], float(EPS))
        return g(t.permute(0, 3, 1, 2).flatten(1)), [], {}
    return b.model(out), tf


# ---------------------------------------------------------------- body
# x [N,4,7,7]: the window ops of a CNN's body between the target (x) and the
# pooled head. The default-target rule picks the input of the final GAP; its
# value and gradient go in the json as extras.

BODY = (7, 7)
# Hundreds of activations per item: a margin of 0.05 around each kink would reject nearly every
# x; 1e-3 is still far beyond what the central differences (h = 1e-6) move.
BODY_MARGIN = 1e-3


def conv(b, h, c_in, c_out, k, prefix, stride=1, pad=(0, 0, 0, 0), dil=1, group=1, auto_pad=None):
    """An ONNX Conv with bias and its float64 torch twin. pad: (top, left, bottom, right)."""
    w = b.randn(f"{prefix}_W", (c_out, c_in // group, k, k), 0.5)
    bias = b.randn(f"{prefix}_b", (c_out,), 0.2)
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], dilations=[dil, dil], group=group)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = [pad[0], pad[1], pad[2], pad[3]]
    out = b.node("Conv", [h, w, bias], **attrs)

    def tf(t):
        if auto_pad:
            ek = (k - 1) * dil + 1
            size = t.shape[-1]
            o = -(-size // stride)
            total = max((o - 1) * stride + ek - size, 0)
            small, big = total // 2, total - total // 2
            p = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
            t = F.pad(t, (p[0], p[1], p[0], p[1]))
        else:
            t = F.pad(t, (pad[1], pad[3], pad[0], pad[2]))
        return F.conv2d(t, b.w[w], b.w[bias], stride=stride, dilation=dil, groups=group)
    return out, tf


def gap_gemm(b, h, c):
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    out, g = gemm_head(b, flat, c, K, "fc", scale=2.0)
    return out, lambda t: g(t.mean((2, 3)))


def m_conv_relu(name):
    """Conv 3x3 pad 1 -> Relu -> GAP -> Gemm."""
    b = Builder(name)
    h, f = conv(b, "x", C, 6, 3, "conv", pad=(1, 1, 1, 1))
    r = b.node("Relu", [h], _out="relu_out")
    out, g = gap_gemm(b, r, 6)

    def tf(x):
        z = f(x)
        a = torch.relu(z)
        return g(a), [(z, [0.0], False, BODY_MARGIN)], {"relu_out": a}
    return b.model(out, hw=BODY), tf


def m_conv_strided_grouped(name):
    """Conv 3x3, stride 2, dilation 2, group 2, asymmetric pads -> GAP -> Gemm: the remainder
    of the stride leaves input rows without gradient."""
    b = Builder(name)
    h, f = conv(b, "x", C, 4, 3, "conv", stride=2, pad=(2, 1, 1, 0), dil=2, group=2)
    out, g = gap_gemm(b, h, 4)

    def tf(x):
        z = f(x)
        return g(z), [], {h: z}
    return b.model(out, hw=BODY), tf


def m_conv_depthwise_same(name):
    """Depthwise Conv 4x4 (group 4), auto_pad SAME_UPPER (pad 1 before, 2 after) -> HardSwish
    -> GAP -> Gemm."""
    b = Builder(name)
    h, f = conv(b, "x", C, 4, 4, "dw", group=4, auto_pad="SAME_UPPER")
    a = b.node("HardSwish", [h], _out="hs_out")
    out, g = gap_gemm(b, a, 4)

    def tf(x):
        z = f(x)
        y = F.hardswish(z)
        return g(y), [(z, [-3.0, 3.0], False, BODY_MARGIN)], {"hs_out": y}
    return b.model(out, hw=BODY), tf


def m_maxpool_overlap(name):
    """ResNet's stem pool: MaxPool 3x3, stride 2, pad 1 (windows overlap) -> GAP -> Gemm."""
    b = Builder(name)
    h = b.node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    out, g = gap_gemm(b, h, C)

    def tf(x):
        y = F.max_pool2d(x, 3, 2, 1)
        return g(y), [], {h: y}
    return b.model(out, hw=BODY), tf


def m_maxpool_ceil(name):
    """MaxPool 2x2, stride 2, ceil_mode 1 on 7x7 (the last window hangs over) -> GAP -> Gemm."""
    b = Builder(name)
    h = b.node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    out, g = gap_gemm(b, h, C)

    def tf(x):
        y = F.max_pool2d(x, 2, 2, ceil_mode=True)
        return g(y), [], {h: y}
    return b.model(out, hw=BODY), tf


def m_avgpool_pad_exclude(name):
    """AveragePool 3x3, stride 2, pad 1, count_include_pad 0 -> GAP -> Gemm."""
    b = Builder(name)
    h = b.node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=0)
    out, g = gap_gemm(b, h, C)

    def tf(x):
        y = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        return g(y), [], {h: y}
    return b.model(out, hw=BODY), tf


def m_avgpool_pad_include(name):
    """AveragePool 3x3, stride 2, pad 1, count_include_pad 1 -> GAP -> Gemm."""
    b = Builder(name)
    h = b.node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=1)
    out, g = gap_gemm(b, h, C)

    def tf(x):
        y = F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
        return g(y), [], {h: y}
    return b.model(out, hw=BODY), tf


def m_pad_conv(name, pads):
    """Pad (constant 0, pads as an input: [top, left, bottom, right] after N, C) -> Conv 3x3 ->
    GAP -> Gemm. EfficientNet-Lite0's static padding; negative pads crop."""
    b = Builder(name)
    t, l, bt, r = pads
    p = b.init("pads", [0, 0, t, l, 0, 0, bt, r], np.int64)
    h = b.node("Pad", ["x", p], mode="constant")
    c, f = conv(b, h, C, 4, 3, "conv")
    out, g = gap_gemm(b, c, 4)

    def tf(x):
        z = f(F.pad(x, (l, r, t, bt)))
        return g(z), [], {c: z}
    return b.model(out, hw=BODY), tf


def m_concat_branches(name):
    """Inception/DenseNet-like: Concat([Conv1x1(x), MaxPool3x3 s1 p1(x), x], axis=1) [N,11,7,7]
    -> GAP -> Gemm; x reaches the concat three ways."""
    b = Builder(name)
    a, f = conv(b, "x", C, 3, 1, "branch")
    m = b.node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    cat = b.node("Concat", [a, m, "x"], axis=1)
    out, g = gap_gemm(b, cat, 11)

    def tf(x):
        y = torch.cat([f(x), F.max_pool2d(x, 3, 1, 1), x], dim=1)
        return g(y), [], {cat: y}
    return b.model(out, hw=BODY), tf


def m_slice_crop(name, with_axes=True):
    """Slice H,W with negative and out-of-range bounds (starts [1,-5], ends [100,-1], axes
    [-2,-1]), then channels 1:3 -> GAP -> Gemm. Without axes: starts/ends over the leading
    axes [0,1,2,3] (as the dynamo exporter writes them)."""
    b = Builder(name)
    if with_axes:
        st, en, ax = (b.init("starts", [1, -5], np.int64), b.init("ends", [100, -1], np.int64),
                      b.init("axes", [-2, -1], np.int64))
        h = b.node("Slice", ["x", st, en, ax])
        st2, en2, ax2 = (b.init("starts2", [1], np.int64), b.init("ends2", [3], np.int64),
                         b.init("axes2", [1], np.int64))
        h = b.node("Slice", [h, st2, en2, ax2])
    else:
        st, en = b.init("starts", [0, 1, 1, -5], np.int64), b.init("ends", [1 << 62, 3, 100, -1], np.int64)
        h = b.node("Slice", ["x", st, en])
    out, g = gap_gemm(b, h, 2)

    def tf(x):
        y = x[:, 1:3, 1:, 2:6]
        return g(y), [], {h: y}
    return b.model(out, hw=BODY), tf


def m_erf_gelu(name):
    """Conv 3x3 pad 1 -> GELU as exported: 0.5 * z * (1 + Erf(z / sqrt 2)) -> GAP -> Gemm."""
    b = Builder(name)
    z, f = conv(b, "x", C, 4, 3, "conv", pad=(1, 1, 1, 1))
    s2 = b.init("sqrt2", np.float32(np.sqrt(2.0)))
    one, half = b.init("one", np.float32(1.0)), b.init("half", np.float32(0.5))
    e = b.node("Erf", [b.node("Div", [z, s2])])
    y = b.node("Mul", [b.node("Mul", [z, b.node("Add", [e, one])]), half])
    out, g = gap_gemm(b, y, 4)

    def tf(x):
        zz = f(x)
        yy = 0.5 * zz * (1 + torch.erf(zz / float(np.float32(np.sqrt(2.0)))))
        return g(yy), [], {y: yy}
    return b.model(out, hw=BODY), tf


def split2(b, x, sizes):
    """An ONNX Split along channels with the sizes as an input (opset 13+); its outputs."""
    sp = b.init("split", sizes, np.int64)
    b._n += 1
    outs = [f"t{b._n}_split_{i}" for i in range(len(sizes))]
    b.nodes.append(helper.make_node("Split", [x, sp], outs, name=f"n{b._n}_Split", axis=1))
    return outs


def m_split_gate(name):
    """Split x [N,4] channels into a [N,1] and c [N,3]; Mul(c, Sigmoid(a)) (a gates c, broadcast)
    -> GAP -> Gemm(3->5): both outputs carry gradient."""
    b = Builder(name)
    a, c = split2(b, "x", [1, 3])
    h = b.node("Mul", [c, b.node("Sigmoid", [a])])
    out, g = gap_gemm(b, h, 3)

    def tf(x):
        y = x[:, 1:] * torch.sigmoid(x[:, :1])
        return g(y), [], {h: y}
    return b.model(out, hw=BODY), tf


def m_split_unused(name):
    """Split x channels [2,1,1]; the middle part unused: Concat(o0, o2) -> GAP -> Gemm(3->5)."""
    b = Builder(name)
    o0, _, o2 = split2(b, "x", [2, 1, 1])
    h = b.node("Concat", [o0, o2], axis=1)
    out, g = gap_gemm(b, h, 3)

    def tf(x):
        y = torch.cat([x[:, :2], x[:, 3:]], dim=1)
        return g(y), [], {h: y}
    return b.model(out, hw=BODY), tf


def m_body_chain(name):
    """A small ResNet-like body from the input: Conv 3x3 s2 pad 1 -> BatchNormalization -> Relu
    -> MaxPool 3x3 s2 pad 1 -> Conv 1x1 -> Relu (feat) -> AveragePool 2x2 (DenseNet transition)
    -> GAP -> Gemm."""
    b = Builder(name)
    h, f1 = conv(b, "x", C, 6, 3, "c1", stride=2, pad=(1, 1, 1, 1))
    bn, fbn = bn_params(b, "bn", 6)
    h = b.node("BatchNormalization", [h, *bn])
    r1 = b.node("Relu", [h])
    p = b.node("MaxPool", [r1], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    h2, f2 = conv(b, p, 6, 6, 1, "c2")
    r2 = b.node("Relu", [h2], _out="feat")
    a = b.node("AveragePool", [r2], kernel_shape=[2, 2], strides=[2, 2])
    out, g = gap_gemm(b, a, 6)

    def tf(x):
        z1 = fbn(f1(x))
        y = F.max_pool2d(torch.relu(z1), 3, 2, 1)
        z2 = f2(y)
        feat = torch.relu(z2)
        pooled = F.avg_pool2d(feat, 2, 2)
        kinks = [(z1, [0.0], False, BODY_MARGIN), (z2, [0.0], False, BODY_MARGIN)]
        return g(pooled), kinks, {a: pooled}
    return b.model(out, hw=BODY), tf


def m_unsupported_op(name):
    b = Builder(name)
    h = b.node("Flatten", [b.node("GlobalAveragePool", ["x"])], axis=1)
    h1, _ = gemm_head(b, h, C, HID, "fc1")
    out, _ = gemm_head(b, b.node("Sin", [h1]), HID, K, "fc2")
    return b.model(out), None


def m_no_pool(name):
    b = Builder(name)
    out, _ = gemm_head(b, b.node("Flatten", ["x"], axis=1), C * H * W, K, "fc")
    return b.model(out), None


MODELS = {
    "gap_flatten_gemm": (lambda n: m_gap_flatten_gemm(n),
                         "x -> GlobalAveragePool -> Flatten -> Gemm(transB=1). The plain CNN head."),
    "gap_flatten_gemm_transb0": (lambda n: m_gap_flatten_gemm(n, trans_b=0),
                                 "as gap_flatten_gemm, Gemm with transB=0 (B stored [4,5])."),
    "gap_reshape_matmul_add": (m_gap_reshape_matmul_add,
                               "x -> GlobalAveragePool -> Reshape([-1,4]) -> MatMul(W[4,5]) -> Add(b)."),
    "reducemean_attr": (m_reducemean_attr,
                        "opset 13: x -> ReduceMean(axes=[2,3] attribute, keepdims=0) -> Gemm."),
    "reducemean_input": (m_reducemean_input,
                         "opset 18: x -> ReduceMean(axes=[2,3] as input, keepdims=1) -> Flatten -> Gemm."),
    "relu_head": (lambda n: hidden_head(n, act_relu),
                  "x -> GAP -> Flatten -> Gemm(4->6) -> Relu -> Gemm(6->5)."),
    "clip_relu6": (lambda n: hidden_head(n, act_clip6, scale1=4.0),
                   "as relu_head with Clip(min=0, max=6 as initializer inputs) (ReLU6)."),
    "hardswish": (lambda n: hidden_head(n, act_hardswish, scale1=3.0),
                  "as relu_head with HardSwish."),
    "hardsigmoid": (lambda n: hidden_head(n, act_hardsigmoid, scale1=3.0),
                    "as relu_head with HardSigmoid(alpha=1/6, beta=0.5) (torch's hardsigmoid)."),
    "sigmoid": (lambda n: hidden_head(n, act_sigmoid), "as relu_head with Sigmoid."),
    "leakyrelu": (lambda n: hidden_head(n, act_leakyrelu), "as relu_head with LeakyRelu(alpha=0.1)."),
    "silu": (lambda n: hidden_head(n, act_silu),
             "as relu_head with SiLU written as Mul(h, Sigmoid(h)) (both Mul inputs depend on h)."),
    "softmax": (m_softmax,
                "x -> GAP -> Flatten -> Gemm(4->5) -> Softmax(axis=1); the output named logits is a "
                "probability, and dx is d prob[c] / dx (what pytorch-grad-cam backprops for such a model)."),
    "dropout_identity": (m_dropout_identity,
                         "x -> GAP -> Flatten -> Dropout(ratio input 0.5, inference) -> Gemm(4->6) -> Relu "
                         "-> Identity -> Gemm(6->5)."),
    "se_broadcast_mul": (m_se_broadcast_mul,
                         "squeeze-excite: s = Sigmoid(GAP(x)) [N,4,1,1]; se_out = Mul(x, s) [N,4,3,3] "
                         "(broadcast) -> GAP -> Flatten -> Gemm. dx needs the sum over the broadcast axes. "
                         "x feeds two ops. NOTE: the default-target rule picks se_out (input of the last "
                         "GAP); test the broadcast rule with the target set explicitly to x."),
    "batchnorm": (m_batchnorm,
                  "x -> GAP -> BatchNormalization (inference, var > 0) -> Flatten -> Gemm."),
    "batchnorm_before_pool": (m_batchnorm_before_pool,
                              "DenseNet-like: x -> BatchNormalization -> Relu (relu_out) -> GAP -> Flatten -> "
                              "Gemm. The default-target rule picks relu_out; dx needs the target set to x."),
    "avgpool_1x1": (m_avgpool_1x1,
                    "VGG-like: x -> AveragePool(kernel 1x1, stride 1) -> Flatten [N,36] -> Gemm(36->5). "
                    "dx varies over space (HiResCAM/XGradCAM differ from Grad-CAM here)."),
    "transpose_layernorm": (m_transpose_layernorm,
                            "ConvNeXt-like: x -> GAP -> Transpose(0,2,3,1) -> LayerNormalization(axis=-1) -> "
                            "Transpose(0,3,1,2) -> Flatten -> Gemm."),
    "fixed_batch": (lambda n: m_gap_flatten_gemm(n, batch=2),
                    "gap_flatten_gemm with a FIXED batch: x [2,4,3,3], logits [2,5] (no dim_param). "
                    "Its reference has 2 items."),
    "conv_relu": (m_conv_relu, "body, x [N,4,7,7]: Conv(4->6, 3x3, pads 1) -> Relu -> GAP -> Gemm."),
    "conv_strided_grouped": (m_conv_strided_grouped,
                             "body: Conv(4->4, 3x3, stride 2, dilation 2, group 2, pads [2,1,1,0]) -> GAP -> "
                             "Gemm; the stride's remainder leaves input rows without gradient."),
    "conv_depthwise_same": (m_conv_depthwise_same,
                            "body: depthwise Conv(4x4, group 4, auto_pad SAME_UPPER) -> HardSwish -> GAP -> Gemm."),
    "maxpool_overlap": (m_maxpool_overlap,
                        "body: MaxPool(3x3, stride 2, pads 1), overlapping windows (ResNet's stem) -> GAP -> Gemm."),
    "maxpool_ceil": (m_maxpool_ceil, "body: MaxPool(2x2, stride 2, ceil_mode 1) on 7x7 -> GAP -> Gemm."),
    "avgpool_pad_exclude": (m_avgpool_pad_exclude,
                            "body: AveragePool(3x3, stride 2, pads 1, count_include_pad 0) -> GAP -> Gemm."),
    "avgpool_pad_include": (m_avgpool_pad_include,
                            "body: AveragePool(3x3, stride 2, pads 1, count_include_pad 1) -> GAP -> Gemm."),
    "pad_conv": (lambda n: m_pad_conv(n, (0, 1, 2, 1)),
                 "body: Pad(constant, pads [0,0,0,1,0,0,2,1]) -> Conv(3x3) -> GAP -> Gemm (Lite0's static padding)."),
    "pad_crop_conv": (lambda n: m_pad_conv(n, (1, -1, -2, 2)),
                      "body: Pad(constant, pads [0,0,1,-1,0,0,-2,2]: negative pads crop) -> Conv(3x3) -> GAP -> Gemm."),
    "concat_branches": (m_concat_branches,
                        "body: Concat([Conv1x1(x), MaxPool 3x3 s1 p1(x), x], axis 1) -> GAP -> Gemm."),
    "slice_crop": (m_slice_crop,
                   "body: Slice(starts [1,-5], ends [100,-1], axes [-2,-1]) -> Slice(channels 1:3) -> GAP -> Gemm."),
    "slice_no_axes": (lambda n: m_slice_crop(n, with_axes=False),
                      "body: the same crop as one Slice without axes (starts/ends over all four axes)."),
    "erf_gelu": (m_erf_gelu, "body: Conv(3x3) -> GELU written with Erf (as ConvNeXt exports it) -> GAP -> Gemm."),
    "split_gate": (m_split_gate, "body: Split(x, [1,3] on channels) -> Mul(c, Sigmoid(a)) -> GAP -> Gemm."),
    "split_unused": (m_split_unused,
                     "body: Split(x, [2,1,1]) with its middle output unused -> Concat(o0, o2) -> GAP -> Gemm."),
    "body_chain": (m_body_chain,
                   "body: Conv(3x3 s2) -> BatchNormalization -> Relu -> MaxPool(3x3 s2 p1) -> Conv(1x1) -> Relu "
                   "-> AveragePool(2x2 s2) -> GAP -> Gemm; x is the network's input."),
    "unsupported_op": (m_unsupported_op,
                       "x -> GAP -> Flatten -> Gemm(4->6) -> Sin -> Gemm(6->5). Sin has no backward rule: "
                       "augmentation must fail with an error naming the op. No reference json."),
    "no_pool": (m_no_pool,
                "x -> Flatten -> Gemm(36->5). No pooling op: not a CNN classifier, augmentation must fail "
                "(no target tensor found). No reference json."),
}


# ---------------------------------------------------------------- reference

def kinks_ok(kinks):
    """No input within KINK_MARGIN of a kink, and every piece used at least once."""
    for z, points, need_all_pieces, *margin in kinks:
        z = z.detach().numpy().ravel()
        pts = np.asarray(points)
        if np.abs(z[:, None] - pts[None, :]).min() < (margin[0] if margin else KINK_MARGIN):
            return False
        if need_all_pieces:
            pieces = np.searchsorted(pts, z)
            if len(set(pieces.tolist())) != len(pts) + 1:
                return False
    return True


def make_x(name, fn, batch, hw=(H, W)):
    rng = np.random.default_rng(zlib.crc32(("x:" + name).encode()))
    for attempt in range(10000):
        # 3-decimal values, so the JSON is short and parses to the same float32
        x = np.round(rng.standard_normal((batch, C, *hw)) * 3.0, 3).astype(np.float32)
        xt = torch.from_numpy(x.astype(np.float64))
        logits, kinks, _ = fn(xt)
        top2 = torch.topk(logits, 2, dim=1).values
        distinct = len(set(logits.argmax(dim=1).tolist())) >= 2
        if kinks_ok(kinks) and distinct and float((top2[:, 0] - top2[:, 1]).min()) > 1e-3:
            return x, attempt
    raise RuntimeError(f"{name}: no x without kinks found")


def reference(fn, x):
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    logits, _, extras = fn(xt)
    for t in extras.values():
        t.retain_grad()
    cls = logits.argmax(dim=1)
    logits.gather(1, cls[:, None]).sum().backward()
    return logits.detach().numpy(), cls.numpy(), xt.grad.numpy(), {
        k: (v.detach().numpy(), v.grad.numpy()) for k, v in extras.items()}


def numeric_grad(fn, x, cls, h=1e-6):
    x64 = x.astype(np.float64)
    g = np.zeros_like(x64)
    sel = lambda z: z[np.arange(len(cls)), cls].sum()  # noqa: E731
    for idx in np.ndindex(*x64.shape):
        xp, xm = x64.copy(), x64.copy()
        xp[idx] += h
        xm[idx] -= h
        fp = sel(fn(torch.from_numpy(xp))[0].detach().numpy())
        fm = sel(fn(torch.from_numpy(xm))[0].detach().numpy())
        g[idx] = (fp - fm) / (2 * h)
    return g


def g9(a):
    """Nested lists with 9 significant digits (float32 round-trips at 9)."""
    return np.vectorize(lambda v: float(f"{v:.9g}"), otypes=[object])(np.asarray(a, np.float64)).tolist()


def f32_short(a):
    """float32 array as nested lists of the shortest decimals that parse back to
    the same float32 values (parse them as f32)."""
    return np.vectorize(lambda v: float(str(np.float32(v))), otypes=[object])(a).tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="tests/fixtures/tiny")
    args = ap.parse_args()
    out_dir = os.path.join(REPO, args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    torch.set_grad_enabled(True)

    readme = ["# Tiny ONNX models for the augmentation unit tests", "",
              "Made by `tools/make_tiny_models.py` (dev-time; the tests need no Python). Every model: graph "
              "input `x` [N,4,3,3] float32 with N symbolic (`dim_param` \"N\"; `fixed_batch` has N = 2), "
              "(the body models, from `conv_relu` on: [N,4,7,7]), "
              "output `logits` [N,5], opset 17 and ir_version 8 unless noted, random weights seeded by "
              "crc32(name). `x` is the Grad-CAM target tensor A.", "",
              "`<name>.json` (all but `unsupported_op`, `no_pool`): `x` [B,4,3,3] (float32 values written "
              "as the shortest decimals that parse back to them: parse as f32; B = 3; 2 for "
              "`fixed_batch`), `class` = argmax per item, `logits` [B,5], `dx` [B,4,3,3] = "
              "d logits[b, class[b]] / d x[b]. Reference from torch autograd in float64 on a torch "
              "re-implementation of the head (independent of ONNX Runtime), cross-checked against "
              "central differences and against onnxruntime's logits (float32: compare with a tolerance "
              "around 1e-5 relative). No Relu/Clip/HardSwish/HardSigmoid/LeakyRelu input lies within "
              f"{KINK_MARGIN} of a kink, every piece of each such op is used by some item, and the items "
              "do not all share one class (so a batch-index mix-up shows). Where the "
              "default-target rule (input of the first pooling op walking back from the logits) would "
              "not pick `x`, the json also has `default_target` (tensor name), `default_value` and "
              "`d_default` (the gradient with respect to that tensor).", "",
              "| model | opset | what it is |", "|---|---|---|"]

    for name, (maker, desc) in MODELS.items():
        model, fn = maker(name)
        path = os.path.join(out_dir, f"{name}.onnx")
        onnx.save(model, path)
        opset = model.opset_import[0].version
        batch = 2 if name == "fixed_batch" else 3
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        readme.append(f"| `{name}` | {opset} | {desc} |")

        if fn is None:
            x = np.random.default_rng(0).standard_normal((batch, C, H, W)).astype(np.float32)
            (y,) = sess.run(["logits"], {"x": x})
            assert y.shape == (batch, K), y.shape
            print(f"{name:26s} opset {opset:2d} {os.path.getsize(path):5d} B  ort out {y.shape}  (no reference)")
            continue

        dims = model.graph.input[0].type.tensor_type.shape.dim
        hw = (dims[2].dim_value, dims[3].dim_value)
        x, attempts = make_x(name, fn, batch, hw)
        logits, cls, dx, extras = reference(fn, x)
        num = numeric_grad(fn, x, cls)
        (y,) = sess.run(["logits"], {"x": x})
        assert y.shape == (batch, K), y.shape
        d_num = float(np.abs(num - dx).max())
        d_ort = float(np.abs(y - logits).max())
        assert d_num < 1e-6, (name, d_num)
        assert d_ort < 1e-4, (name, d_ort)
        assert (y.argmax(1) == cls).all()
        doc = {"model": f"{args.out_dir}/{name}.onnx", "generator": "tools/make_tiny_models.py",
               "x": f32_short(x), "class": cls.tolist(), "logits": g9(logits), "dx": g9(dx)}
        for k, (v, gv) in extras.items():
            doc.update(default_target=k, default_value=g9(v), d_default=g9(gv))
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(f"{name:26s} opset {opset:2d} {os.path.getsize(path):5d} B  class {cls.tolist()}  "
              f"|dx|max {np.abs(dx).max():.3g}  autograd-vs-numeric {d_num:.1e}  ort-vs-torch {d_ort:.1e}  "
              f"x resampled {attempts}x")

    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(readme) + "\n")


if __name__ == "__main__":
    main()
