"""Make the small ONNX models the bad-input tests feed to `gradcamd run` end to end.

Makes, in tests/fixtures/hostile/:
  gray_input.onnx   x [N,1,8,8] -> GlobalAveragePool -> Flatten -> Gemm(1->5) -> logits [N,5]:
                    a valid classifier that takes one channel (grayscale). gradcamd feeds
                    colour frames, so it must refuse it with the "unsupported model" exit (4).
  nan_weights.onnx  x [N,3,8,8] -> GlobalAveragePool -> Flatten -> Gemm(3->5) -> logits [N,5],
                    the Gemm's weights all NaN: every score is NaN. A run must count its frames
                    as not explained, keep /status.json valid JSON and warn once.
Both: opset 17, ir_version 8, x is the Grad-CAM target tensor, weights seeded (numpy 0).

Run (paths relative to the repo root; needs only numpy and onnx):
  python tools/make_hostile_models.py [--out-dir tests/fixtures/hostile]

Dev-time only; the Rust tests read the committed files and need no Python.
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def head(name, channels, weights):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])
    w = numpy_helper.from_array(weights.astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(5, np.float32), "B")
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
    ]
    g = helper.make_graph(nodes, name, [x], [y], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default="tests/fixtures/hostile")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    models = {
        "gray_input": head("gray_input", 1, rng.normal(size=(5, 1))),
        "nan_weights": head("nan_weights", 3, np.full((5, 3), np.nan)),
    }
    for name, m in models.items():
        onnx.save(m, os.path.join(a.out_dir, f"{name}.onnx"))
        print(name, os.path.getsize(os.path.join(a.out_dir, f"{name}.onnx")), "bytes")


if __name__ == "__main__":
    main()
