"""Make the reference Grad-CAM fixtures for the default model from pytorch-grad-cam.

Makes:
  tests/fixtures/default_gradcam.json     per case: top-5, class used, Grad-CAM
                                          channel weights, dA/A samples, raw 7x7 CAM,
                                          7x7 CAM (FC-weight formula) for top-1 cases
  tests/fixtures/cam224_<stem>.png        pytorch-grad-cam's normalized, upsampled
                                          224x224 CAM, 16-bit gray, round(cam * 65535)
  tests/fixtures/overlay224_<stem>.png    show_cam_on_image(bgr224 / 255, cam,
                                          use_rgb=False): BGR, as cv2.imwrite writes it

Cases: the four stills of .deps/media (one batch of 4, one GradCAM call) with
targets=None (top-1), and a second call on the same batch with explicit targets
chelsea -> 281 "tabby" and coffee -> 968 "cup" (astronaut and rocket keep top-1
in that call and are not recorded twice).

Model: the torch EfficientNet-Lite0 that tools/export_default_model.py exports
to models/efficientnet_lite0.onnx, with the head's ReLU6 split off (see
tools/lite0_common.py); target layer = that ReLU6, i.e. the input of the global
average pool, [N,1280,7,7]. The script checks that this is the same tensor as
the ONNX model's GlobalAveragePool input (run through onnxruntime).

Run (needs models/efficientnet_lite0.onnx; paths relative to the repo root):
  /tmp/pyenv/venv/bin/python tools/make_fixtures.py [--out-dir tests/fixtures]

Dev-time only; the Rust tests read the committed outputs and need no Python.
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

import pytorch_grad_cam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lite0_common as lc  # noqa: E402

ONNX_MODEL = "models/efficientnet_lite0.onnx"
EXPLICIT = {".deps/media/chelsea.png": 281, ".deps/media/coffee.png": 968}
N_DA_SAMPLES = 64
SEED = 20240501


def grad_cam_version():
    try:
        from importlib.metadata import version
        return version("grad-cam")
    except Exception:  # pragma: no cover
        return getattr(pytorch_grad_cam, "__version__", "unknown")


def r7(x):
    """Round floats (nested) to 7 significant digits for the JSON."""
    if isinstance(x, (list, tuple)):
        return [r7(v) for v in x]
    if isinstance(x, np.ndarray):
        return r7(x.tolist())
    if isinstance(x, (float, np.floating)):
        return float(f"{float(x):.7g}")
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def run_cam(cam, x, targets):
    """One pytorch-grad-cam call; returns (cam224 [N,224,224], logits, A, dA)."""
    grayscale = cam(input_tensor=x, targets=targets)
    aag = cam.activations_and_grads
    assert len(aag.activations) == 1 and len(aag.gradients) == 1, (
        "target layer fired more than once per forward: the head ReLU6 is still shared")
    A = aag.activations[0].numpy().copy()
    dA = aag.gradients[0].numpy().copy()
    logits = cam.outputs.detach().numpy().copy()
    assert A.shape == (x.shape[0], 1280, 7, 7), A.shape
    assert dA.shape == A.shape, dA.shape
    return grayscale, logits, A, dA


def onnx_target_tensor(xs):
    """Logits and the GlobalAveragePool input from the exported ONNX model."""
    m = onnx.load(lc.repo_path(ONNX_MODEL))
    gap = [n for n in m.graph.node if n.op_type == "GlobalAveragePool"]
    assert len(gap) == 1
    name = gap[0].input[0]
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, A = sess.run(["logits", name], {"input": xs})
    return name, logits, A


def show_pitfall(xs):
    """Demonstrate the shared-ReLU6 pitfall on the unpatched package model."""
    plain = lc.load_model(split_head_act=False)
    with GradCAM(model=plain, target_layers=[plain._swish]) as cam:
        cam(input_tensor=torch.from_numpy(xs[:1]), targets=None)
        shapes = [tuple(a.shape) for a in cam.activations_and_grads.activations]
    print(f"pitfall check: hooking the package's shared model._swish records {shapes} (stem, not head)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="tests/fixtures")
    args = ap.parse_args()
    out_dir = lc.repo_path(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    labels = lc.load_labels()

    stills = [lc.load_still(p) for p in lc.STILLS]
    bgr224 = [s[0] for s in stills]
    xs = np.stack([s[1] for s in stills])
    x = torch.from_numpy(xs)

    model = lc.load_model(split_head_act=True)
    plain = lc.load_model(split_head_act=False)
    with torch.no_grad():
        assert np.array_equal(model(x).numpy(), plain(x).numpy()), "head split changed the logits"
    del plain
    fc_w = model._fc.weight.detach().numpy().astype(np.float64)  # [1000,1280]

    with GradCAM(model=model, target_layers=[lc.target_layer(model)]) as cam:
        cam224_top1, logits, A, dA_top1 = run_cam(cam, x, None)
        top1 = logits.argmax(axis=1)
        explicit = [EXPLICIT.get(p, int(top1[i])) for i, p in enumerate(lc.STILLS)]
        cam224_exp, logits2, A2, dA_exp = run_cam(
            cam, x, [ClassifierOutputTarget(c) for c in explicit])
    assert np.array_equal(logits, logits2) and np.array_equal(A, A2)

    # The fixture's A must be the ONNX model's target tensor.
    gap_in, onnx_logits, onnx_A = onnx_target_tensor(xs)
    print(f"onnx target tensor {gap_in}: max|A_onnx - A_torch| = {np.abs(onnx_A - A).max():.3g}, "
          f"max|logits_onnx - logits_torch| = {np.abs(onnx_logits - logits).max():.3g}")
    show_pitfall(xs)

    rng = np.random.default_rng(SEED)
    positions = np.stack([rng.integers(0, 1280, N_DA_SAMPLES),
                          rng.integers(0, 7, N_DA_SAMPLES),
                          rng.integers(0, 7, N_DA_SAMPLES)], axis=1)

    cases = []
    runs = [(None, cam224_top1, dA_top1, top1), ("explicit", cam224_exp, dA_exp, explicit)]
    for kind, cam224, dA, used in runs:
        for i, path in enumerate(lc.STILLS):
            if kind == "explicit" and path not in EXPLICIT:
                continue
            c = int(used[i])
            stem = os.path.splitext(os.path.basename(path))[0]
            probs = lc.softmax(logits[i])
            top5 = [{"index": int(k), "logit": r7(logits[i, k]), "prob": r7(probs[k])}
                    for k in np.argsort(-logits[i])[:5]]
            a = A[i].astype(np.float64)
            g = dA[i].astype(np.float64)
            weights = g.mean(axis=(1, 2))
            cam_raw = np.maximum((weights[:, None, None] * a).sum(axis=0), 0.0)
            # For a GAP -> FC head, dA is W[c] / (h*w) at every position.
            gap_fc = np.abs(weights - fc_w[c] / 49.0).max()
            assert gap_fc < 1e-6, gap_fc
            case = {
                "image": path,
                "target": None if kind is None else c,
                "class_used": c,
                "label": labels[c],
                "top5": top5,
                "target_logit": r7(logits[i, c]),
                "weights": r7(weights),
                "da_sample": [[int(ci), int(ii), int(jj), r7(g[ci, ii, jj])] for ci, ii, jj in positions],
                "a_sample": [[int(ci), int(ii), int(jj), r7(a[ci, ii, jj])] for ci, ii, jj in positions],
                "cam_raw": r7(cam_raw),
                "cam_224": None,
            }
            if kind is None:
                cam_u16 = np.round(cam224[i].astype(np.float64) * 65535.0).astype(np.uint16)
                cam_png = os.path.join(args.out_dir, f"cam224_{stem}.png")
                cv2.imwrite(lc.repo_path(cam_png), cam_u16)
                overlay = show_cam_on_image(bgr224[i].astype(np.float32) / 255.0, cam224[i], use_rgb=False)
                ov_png = os.path.join(args.out_dir, f"overlay224_{stem}.png")
                cv2.imwrite(lc.repo_path(ov_png), overlay)
                case["cam_224"] = cam_png
                case["overlay_224"] = ov_png
                case["cam_fc_raw"] = r7((fc_w[c][:, None, None] * a).sum(axis=0))
            cases.append(case)
            print(f"{path:28s} target={str(case['target']):>4s} class_used={c:3d} ({labels[c]}) "
                  f"logit={logits[i, c]:.4f} cam_raw 7x7 max={cam_raw.max():.4f} "
                  f"cam224 {cam224[i].shape} [{cam224[i].min():.3g}, {cam224[i].max():.3g}]")

    doc = {
        "model": ONNX_MODEL,
        "generator": "tools/make_fixtures.py",
        "pytorch_grad_cam_version": grad_cam_version(),
        "torch_version": torch.__version__,
        "opencv_python_version": cv2.__version__,
        "preprocess": lc.PREPROCESS_DOC,
        "target_tensor": f"{gap_in} (input of GlobalAveragePool), [N,1280,7,7]",
        "notes": (
            "weights[k] = mean over (h,w) of dA[k] (pytorch-grad-cam GradCAM). "
            "cam_raw = relu(sum_k weights[k] * A[k]), before normalization. "
            "cam_fc_raw = sum_k fc.weight[class_used, k] * A[k] (original CAM: no bias, no relu, "
            "no normalization). cam_224 PNG (16-bit, round(cam*65535)) = pytorch-grad-cam output: "
            "cam_raw -> norm -> cv2.resize to 224x224 INTER_LINEAR (float32) -> norm again, where "
            "norm(x) = (x - min(x)) / (max(x - min(x)) + 1e-7). overlay_224 = show_cam_on_image(bgr224/255, cam, "
            "use_rgb=False): applyColorMap(uint8(255*cam), JET), 0.5*heat + 0.5*img, / max, uint8(255*x) "
            "(truncation), BGR. da_sample/a_sample: [c, i, j, value] at 64 seeded positions. "
            "Cases with target null use top-1; both runs are one batch of the 4 stills."
        ),
        "cases": cases,
    }
    json_path = os.path.join(out_dir, "default_gradcam.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(json_path, lc.REPO)} ({os.path.getsize(json_path)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
