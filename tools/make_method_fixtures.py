"""Make reference fixtures for every CAM method from pytorch-grad-cam, on the default model.

Makes:
  tests/fixtures/methods_default.json   per still and per method: the raw 7x7 CAM
                                        (get_cam_image output, before ReLU and
                                        normalization) and the final 224x224 CAM
                                        the cam object returns, subsampled to 28x28

Methods (pytorch-grad-cam classes): GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM,
LayerCAM, EigenCAM, EigenGradCAM; all with eigen_smooth=False, aug_smooth=False.

Cases: the four stills of .deps/media as one batch of 4, targets=None (top-1).
Model, preprocessing and target layer as tools/make_fixtures.py: the torch
EfficientNet-Lite0 with the head's ReLU6 split off (tools/lite0_common.py); the
target tensor is the input of the ONNX model's GlobalAveragePool, [N,1280,7,7].

How the two arrays are obtained (the library's own code path, no formulas
re-implemented here):
  final_224  final = cam(input_tensor=x, targets=None), one call per method;
             stored as final[4::8, 4::8] (rows y = 4, 12, ..., 220; columns x
             likewise), i.e. final_224[i][j] = final[4 + 8*i][4 + 8*j], 28x28.
  raw        cam.get_cam_image(x, target_layer, targets, A, dA, eigen_smooth=False)
             called on the activations A / gradients dA that the same call
             captured in cam.activations_and_grads (targets = top-1
             ClassifierOutputTarget). EigenCAM does no backward pass; it gets
             dA = None (it does not read it).
The script checks that ReLU -> scale_cam_image -> aggregate of `raw` gives back
`final` exactly, i.e. that raw is what the cam call used.

Run (paths relative to the repo root):
  /tmp/pyenv/venv/bin/python tools/make_method_fixtures.py [--out-dir tests/fixtures]

Dev-time only; the Rust tests read the committed outputs and need no Python.
Also imported by tools/make_vgg_replica.py (METHODS, run_methods, correlations).
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np
import torch

from pytorch_grad_cam import (EigenCAM, EigenGradCAM, GradCAM, GradCAMPlusPlus, HiResCAM,
                              LayerCAM, XGradCAM)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lite0_common as lc  # noqa: E402
from make_fixtures import grad_cam_version, onnx_target_tensor, r7  # noqa: E402

ONNX_MODEL = "models/efficientnet_lite0.onnx"
METHODS = [
    ("GradCAM", GradCAM),
    ("GradCAMPlusPlus", GradCAMPlusPlus),
    ("XGradCAM", XGradCAM),
    ("HiResCAM", HiResCAM),
    ("LayerCAM", LayerCAM),
    ("EigenCAM", EigenCAM),
    ("EigenGradCAM", EigenGradCAM),
]
EIGEN = {"EigenCAM", "EigenGradCAM"}
SUB_OFFSET, SUB_STEP = 4, 8
SIGN_NOTE = (
    "pytorch-grad-cam does not fix the sign of the first right-singular vector "
    "(get_2d_projection: centered activations @ VT[0]; numpy's SVD sign is arbitrary). "
    "Compare raw up to a global sign (per image); compare final after applying to your raw the sign "
    "that best matches this raw, then ReLU / normalize / resize."
)


def run_methods(model, layer, x):
    """Run every method once on batch x (targets=None, i.e. top-1).

    Returns {name: {"raw": [N,h,w], "final": [N,H,W], "A": [N,C,h,w],
    "dA": [N,C,h,w] or None, "logits": [N,K], "classes": [N]}}."""
    out = {}
    for name, cls in METHODS:
        cam = cls(model=model, target_layers=[layer])
        try:  # no `with`: BaseCAM.__exit__ swallows IndexError
            final = cam(input_tensor=x, targets=None)
            aag = cam.activations_and_grads
            assert len(aag.activations) == 1, f"{name}: target layer fired {len(aag.activations)} times"
            A = aag.activations[0].cpu().numpy().copy()
            if cam.uses_gradients:
                assert len(aag.gradients) == 1, name
                dA = aag.gradients[0].cpu().numpy().copy()
            else:
                assert len(aag.gradients) == 0, name
                dA = None
            logits = cam.outputs.detach().cpu().numpy().copy()
            classes = logits.argmax(axis=-1)
            targets = [ClassifierOutputTarget(int(c)) for c in classes]
            raw = cam.get_cam_image(x, layer, targets, A, dA, eigen_smooth=False)
        finally:
            cam.activations_and_grads.release()
        raw = np.asarray(raw)
        # Replay the rest of BaseCAM.forward: compute_cam_per_layer + aggregate_multi_layers.
        size = (x.shape[-1], x.shape[-2])
        replay = scale_cam_image(np.maximum(raw, 0), size)[:, None, :]
        replay = scale_cam_image(np.mean(np.maximum(replay, 0), axis=1))
        assert replay.shape == final.shape and np.array_equal(replay, final), (
            f"{name}: get_cam_image on the captured tensors does not reproduce the cam output "
            f"(max diff {np.abs(replay - final).max()})")
        out[name] = {"raw": raw, "final": final, "A": A, "dA": dA, "logits": logits, "classes": classes}
    ref = out[METHODS[0][0]]
    for name, r in out.items():
        assert np.array_equal(r["classes"], ref["classes"]), f"{name}: top-1 differs between runs"
        assert np.array_equal(r["A"], ref["A"]), f"{name}: activations differ between runs"
        if r["dA"] is not None:
            assert np.array_equal(r["dA"], ref["dA"]), f"{name}: gradients differ between runs"
    return out


def corr(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else float("nan")


def correlations(res, key="raw"):
    """Per-method-pair correlation of `key`, averaged over the batch (Eigen
    methods: absolute value, since their sign is arbitrary)."""
    names = [n for n, _ in METHODS]
    n_img = res[names[0]][key].shape[0]
    m = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            cs = [corr(res[a][key][k], res[b][key][k]) for k in range(n_img)]
            if a in EIGEN or b in EIGEN:
                cs = [abs(c) for c in cs]
            m[i, j] = np.mean(cs)
    return names, m


def print_correlations(res, key="raw"):
    names, m = correlations(res, key)
    short = [n.replace("GradCAM", "GC").replace("CAM", "C") for n in names]
    print(f"correlation of {key} between methods (mean over images; |corr| for Eigen*):")
    print(" " * 16 + " ".join(f"{s:>7s}" for s in short))
    for n, row in zip(names, m):
        print(f"{n:16s}" + " ".join(f"{v:7.4f}" for v in row))
    return names, m


def method_entries(res, i, final_key, final_fn=lambda f: f):
    """{method: {"raw": ..., final_key: final_fn(final), ...}} for batch item i."""
    entries = {}
    for name, _ in METHODS:
        e = {"raw": r7(res[name]["raw"][i].astype(np.float64)),
             final_key: r7(final_fn(res[name]["final"][i]).astype(np.float64))}
        if name in EIGEN:
            e["sign_fixed_by_reference"] = False
        entries[name] = e
    return entries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="tests/fixtures")
    args = ap.parse_args()
    out_dir = lc.repo_path(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    labels = lc.load_labels()

    xs = np.stack([lc.load_still(p)[1] for p in lc.STILLS])
    x = torch.from_numpy(xs)
    model = lc.load_model(split_head_act=True)
    layer = lc.target_layer(model)

    res = run_methods(model, layer, x)
    A = res["GradCAM"]["A"]
    logits = res["GradCAM"]["logits"]
    classes = res["GradCAM"]["classes"]
    assert A.shape == (len(lc.STILLS), 1280, 7, 7), A.shape

    gap_in, onnx_logits, onnx_A = onnx_target_tensor(xs)
    print(f"onnx target tensor {gap_in}: max|A_onnx - A_torch| = {np.abs(onnx_A - A).max():.3g}, "
          f"max|logits_onnx - logits_torch| = {np.abs(onnx_logits - logits).max():.3g}")

    sub = lambda f: f[SUB_OFFSET::SUB_STEP, SUB_OFFSET::SUB_STEP]  # noqa: E731
    images = []
    for i, path in enumerate(lc.STILLS):
        c = int(classes[i])
        images.append({
            "image": path,
            "class_used": c,
            "label": labels[c],
            "target_logit": r7(logits[i, c]),
            "methods": method_entries(res, i, "final_224", sub),
        })
        print(f"{path:28s} class_used={c:3d} ({labels[c]})  " + "  ".join(
            f"{n}:[{res[n]['raw'][i].min():.3g},{res[n]['raw'][i].max():.3g}]" for n, _ in METHODS))
    print_correlations(res, "raw")

    doc = {
        "model": ONNX_MODEL,
        "generator": "tools/make_method_fixtures.py",
        "pytorch_grad_cam_version": grad_cam_version(),
        "torch_version": torch.__version__,
        "opencv_python_version": cv2.__version__,
        "preprocess": lc.PREPROCESS_DOC,
        "target_tensor": f"{gap_in} (input of GlobalAveragePool), [N,1280,7,7]",
        "batch": "the 4 images below as one batch of 4, in this order; targets=None (top-1 = class_used)",
        "methods": [n for n, _ in METHODS],
        "raw": ("[7][7]: cam.get_cam_image(x, target_layer, targets, A, dA, eigen_smooth=False) on the A/dA "
                "captured by the same cam call: BEFORE np.maximum(.,0) and before scale_cam_image"),
        "final_224": ("[28][28]: the [224][224] array returned by cam(input_tensor=x, targets=None) "
                      "(relu -> norm -> cv2.resize 224x224 INTER_LINEAR -> relu -> norm, "
                      "norm(x) = (x - min(x)) / (max(x - min(x)) + 1e-7)), subsampled: "
                      "final_224[i][j] = final[4 + 8*i][4 + 8*j] (row = y, column = x)"),
        "eigen_sign": SIGN_NOTE,
        "float_format": "7 significant digits",
        "images": images,
    }
    json_path = os.path.join(out_dir, "methods_default.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(json_path, lc.REPO)} ({os.path.getsize(json_path)} bytes)")


if __name__ == "__main__":
    main()
