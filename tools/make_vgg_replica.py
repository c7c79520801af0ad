"""Make a small VGG-like replica model and its reference fixtures for every CAM method.

Why: on a GAP head (the default model) dA is the same at every position, so
HiResCAM and XGradCAM equal Grad-CAM. On VGG's head (AdaptiveAvgPool2d((8,8)) on
an 8x8 map = AveragePool 1x1 -> Flatten -> Linear) dA varies over space and the
methods differ.

Makes, in tests/fixtures/:
  vgg_replica.onnx    input "input" [N,3,64,64] (dim_param "N"), output "logits" [N,10],
                      opset 17, torch.onnx.export(dynamo=False); seeded random weights
  vgg_replica.toml    model sidecar (schema of models/efficientnet_lite0.toml, no labels)
  methods_vgg.json    per still: logits, class_used, A and dA [16,8,8] at the target
                      tensor, and per method raw [8][8] + final [64][64] (full)

Torch module (torch.manual_seed(0), default init, then every conv / linear
weight multiplied by WEIGHT_GAIN so activations keep their scale and the logits
are not degenerate):
  features: Conv(3->8,3x3,pad 1)+ReLU+MaxPool2 -> Conv(8->16)+ReLU+MaxPool2
            -> Conv(16->16)+ReLU+MaxPool2          (64x64 -> [16,8,8])
  head:     AdaptiveAvgPool2d((8,8)) -> Flatten -> Linear(1024->32) -> ReLU
            -> Dropout(0.5) -> Linear(32->10)
Target layer (pytorch-grad-cam): the last MaxPool; its output is the input of
the ONNX AveragePool (gradcamd's default rule). The script checks that tensor
against onnxruntime, and torch's logits against onnxruntime's.

Preprocessing: cv2.imread -> cv2.resize to 64x64 INTER_LINEAR (whole image) ->
BGR->RGB -> float32 (rgb - mean) / std, ImageNet mean/std on the 0..255 scale.
The 4 stills of .deps/media as one batch of 4, targets=None (top-1). raw / final
are obtained as in tools/make_method_fixtures.py (get_cam_image on the captured
A / dA; the cam call's output), final stored in full (64x64).

Run (paths relative to the repo root):
  /tmp/pyenv/venv/bin/python tools/make_vgg_replica.py [--out-dir tests/fixtures]

Dev-time only; the Rust tests read the committed outputs and need no Python.
"""

import argparse
import copy
import json
import os
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lite0_common as lc  # noqa: E402
from make_fixtures import grad_cam_version, r7  # noqa: E402
from make_method_fixtures import (EIGEN, METHODS, SIGN_NOTE, corr, method_entries,  # noqa: E402
                                  print_correlations, run_methods)

SIZE = 64
MEAN = [123.675, 116.28, 103.53]  # RGB, 0..255 scale
STD = [58.395, 57.12, 57.375]
N_CLASSES = 10
SEED = 0
WEIGHT_GAIN = 6.0 ** 0.5  # torch's default init has var 1/(3 fan_in); He init wants 2/fan_in
PREPROCESS_DOC = (
    "cv2.imread (BGR uint8) -> cv2.resize(img, (64, 64), interpolation=cv2.INTER_LINEAR) on the whole "
    "image, no crop -> BGR->RGB -> float32 (rgb - mean) / std, mean=[123.675,116.28,103.53], "
    "std=[58.395,57.12,57.375] (RGB order) -> NCHW"
)
SIDECAR = """\
# Model sidecar: how to feed this model. See README "Model sidecar".
# Test model made by tools/make_vgg_replica.py (random weights, no labels).

[input]
name = "input"          # graph input to feed
width = 64
height = 64
color = "rgb"           # channel order the model expects: "rgb" or "bgr"
layout = "nchw"
# x = (pixel - mean) / std, per channel in the model's colour order, pixel in 0..255
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]

[output]
logits = "logits"
"""


class VggReplica(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((8, 8))
        self.classifier = nn.Sequential(
            nn.Linear(16 * 8 * 8, 32), nn.ReLU(inplace=False), nn.Dropout(0.5),
            nn.Linear(32, N_CLASSES),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def build_model():
    torch.manual_seed(SEED)
    model = VggReplica()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(WEIGHT_GAIN)
    return model.eval()


def load_still(rel_path):
    img = cv2.imread(lc.repo_path(rel_path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(rel_path)
    small = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32)
    x = (rgb - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def export(model, out_path):
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(
        model, (dummy,), out_path,
        opset_version=17, dynamo=False,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True, export_params=True,
    )
    m = onnx.load(out_path)
    onnx.checker.check_model(m, full_check=True)
    return m


def describe_head(m):
    """Print the ops from the last MaxPool on; return the target tensor name
    (the last MaxPool's output) and the op list after it."""
    nodes = list(m.graph.node)
    last_mp = max(i for i, n in enumerate(nodes) if n.op_type == "MaxPool")
    target = nodes[last_mp].output[0]
    print(f"graph: {len(nodes)} nodes, opset {m.opset_import[0].version}, ir_version {m.ir_version}; "
          f"ops: {[n.op_type for n in nodes]}")
    print(f"ops after the last MaxPool (output {target}):")
    tail = []
    for n in nodes[last_mp + 1:]:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        print(f"  {n.op_type:18s} {list(n.input)} -> {list(n.output)} {attrs}")
        tail.append(n.op_type)
    return target, tail


def run_onnx(m, xs, extra):
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    m2.graph.output.append(onnx.helper.make_tensor_value_info(extra, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m2.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits", extra], {"input": xs})


def head_grad_f64(model, A, classes):
    """dA = d logits[class] / dA through the head, torch autograd in float64
    (independent check of the captured gradients)."""
    head = copy.deepcopy(nn.Sequential(model.avgpool, nn.Flatten(1), model.classifier)).double().eval()
    a = torch.from_numpy(A.astype(np.float64)).requires_grad_(True)
    z = head(a)
    z[torch.arange(len(classes)), torch.from_numpy(classes)].sum().backward()
    pre = head[2][0](head[0](a).flatten(1)).detach().numpy()
    return a.grad.numpy(), z.detach().numpy(), pre


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="tests/fixtures")
    args = ap.parse_args()
    out_dir = lc.repo_path(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rel = lambda p: os.path.relpath(p, lc.REPO)  # noqa: E731

    model = build_model()
    xs = np.stack([load_still(p) for p in lc.STILLS])
    x = torch.from_numpy(xs)

    onnx_path = os.path.join(out_dir, "vgg_replica.onnx")
    m = export(model, onnx_path)
    target, tail = describe_head(m)
    with open(os.path.join(out_dir, "vgg_replica.toml"), "w") as f:
        f.write(SIDECAR)

    layer = model.features[-1]
    res = run_methods(model, layer, x)
    A, dA = res["GradCAM"]["A"], res["GradCAM"]["dA"]
    logits, classes = res["GradCAM"]["logits"], res["GradCAM"]["classes"]
    assert A.shape == (len(lc.STILLS), 16, 8, 8), A.shape

    onnx_logits, onnx_A = run_onnx(m, xs, target)
    d_logits = np.abs(onnx_logits - logits).max()
    d_A = np.abs(onnx_A - A).max()
    print(f"torch vs onnxruntime: max|logits diff| = {d_logits:.3g} (logit scale {np.abs(logits).max():.3g}), "
          f"max|A diff| at {target} = {d_A:.3g}")
    assert d_logits < 1e-4 * max(1.0, np.abs(logits).max()) and d_A < 1e-4 * max(1.0, np.abs(A).max())

    dA64, logits64, pre = head_grad_f64(model, A, classes)
    rel_da = np.abs(dA64 - dA).max() / np.abs(dA64).max()
    print(f"captured dA vs float64 autograd of the head: max rel diff {rel_da:.3g}; "
          f"min |hidden pre-ReLU| = {np.abs(pre).min():.3g}")
    assert rel_da < 1e-5, rel_da
    spread = [float(dA[i].std(axis=(1, 2)).mean() / (np.abs(dA[i]).mean() + 1e-30)) for i in range(len(dA))]
    print(f"dA spatial variation (mean over channels of std over (h,w), / mean|dA|): {[f'{s:.3g}' for s in spread]}")

    for i, path in enumerate(lc.STILLS):
        z = np.sort(logits[i])[::-1]
        print(f"{path:28s} class_used={classes[i]} logits top-2 {z[0]:.3f} {z[1]:.3f}  "
              f"corr(GradCAM, HiResCAM)={corr(res['GradCAM']['raw'][i], res['HiResCAM']['raw'][i]):.4f} "
              f"corr(GradCAM, XGradCAM)={corr(res['GradCAM']['raw'][i], res['XGradCAM']['raw'][i]):.4f}")
    names, cm = print_correlations(res, "raw")
    gi = names.index("GradCAM")
    for n in ("HiResCAM", "XGradCAM"):
        assert cm[gi, names.index(n)] < 0.999, f"{n} does not differ from GradCAM on the replica"
        assert max(np.abs(res[n]["raw"] - res["GradCAM"]["raw"]).max(axis=(1, 2))
                   / np.abs(res["GradCAM"]["raw"]).max(axis=(1, 2))) > 1e-2, n

    images = []
    for i, path in enumerate(lc.STILLS):
        images.append({
            "image": path,
            "class_used": int(classes[i]),
            "logits": r7(logits[i]),
            "a": r7(A[i]),
            "da": r7(dA[i]),
            "methods": method_entries(res, i, "final"),
        })

    doc = {
        "model": rel(onnx_path),
        "sidecar": rel(os.path.join(out_dir, "vgg_replica.toml")),
        "generator": "tools/make_vgg_replica.py",
        "pytorch_grad_cam_version": grad_cam_version(),
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "opencv_python_version": cv2.__version__,
        "preprocess": PREPROCESS_DOC,
        "target_tensor": f"{target} (output of the last MaxPool = input of the {tail[0]}), [N,16,8,8]",
        "onnx_ops_after_target": tail,
        "torch_vs_onnxruntime_max_abs_logit_diff": r7(d_logits),
        "batch": "the 4 images below as one batch of 4, in this order; targets=None (top-1 = class_used)",
        "methods": [n for n, _ in METHODS],
        "logits": "[10]: torch float32 logits",
        "a": "[16][8][8]: A, the target tensor (torch float32)",
        "da": "[16][8][8]: dA = d logits[class_used] / dA, as pytorch-grad-cam captured it (torch float32)",
        "raw": ("[8][8]: cam.get_cam_image(x, target_layer, targets, A, dA, eigen_smooth=False) on the A/dA "
                "captured by the same cam call: BEFORE np.maximum(.,0) and before scale_cam_image"),
        "final": ("[64][64], full: the array returned by cam(input_tensor=x, targets=None) "
                  "(relu -> norm -> cv2.resize 64x64 INTER_LINEAR -> relu -> norm, "
                  "norm(x) = (x - min(x)) / (max(x - min(x)) + 1e-7)); row = y, column = x"),
        "eigen_sign": SIGN_NOTE,
        "float_format": "7 significant digits",
        "images": images,
    }
    assert set(EIGEN) <= set(doc["methods"])
    json_path = os.path.join(out_dir, "methods_vgg.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    for p in (onnx_path, os.path.join(out_dir, "vgg_replica.toml"), json_path):
        print(f"wrote {rel(p)} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
