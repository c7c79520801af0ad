"""Make the reference for Grad-CAM, HiResCAM and LayerCAM at layers before the last feature
map of the default model (EfficientNet-Lite0), where the gradient flows through the body's
convolutions, depthwise convolutions, static padding and residual adds.

Writes tests/fixtures/layers_default.json: per layer (the ONNX tensor name, the torch module
whose output it is, its shape) and per still (top-1 class): samples of A and dA (float64 torch
autograd) at seeded positions, how far float32 torch is from that, and the raw maps of the three methods at the layer's resolution as
pytorch-grad-cam 1.5.7 computes them (`get_cam_image` on the activations and gradients its
hooks caught, then ReLU, as `compute_cam_per_layer` does), before any scaling. The torch
module's output is checked against the ONNX tensor (ORT, float32) first, so the fixture names
the right tensor.

Run (paths relative to the repo root), in the dev venv of tools/README.md:
  python tools/make_layer_fixtures.py
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import pytorch_grad_cam
from pytorch_grad_cam import GradCAM, HiResCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, os.path.dirname(__file__))
import lite0_common as lc  # noqa: E402

ONNX_MODEL = "models/efficientnet_lite0.onnx"
# (ONNX tensor, block index): the output of an MBConv block with a skip connection is its Add.
LAYERS = [("/_blocks.14/Add_output_0", 14), ("/_blocks.6/Add_output_0", 6), ("/_blocks.4/Add_output_0", 4)]
METHODS = {"gradcam": GradCAM, "hirescam": HiResCAM, "layercam": LayerCAM}
N_SAMPLES = 64
SEED = 20261201


def r7(a):
    return np.vectorize(lambda v: float(f"{v:.7g}"), otypes=[object])(np.asarray(a, np.float64)).tolist()


def onnx_tensors(xs, names):
    m = onnx.load(lc.repo_path(ONNX_MODEL))
    for n in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, {"input": xs})


def grads64(xs, block):
    """A and dA at the block's output in float64 (torch autograd), top-1 of each item."""
    m = lc.load_model(split_head_act=True).double()
    got = {}

    def hook(_mod, _inp, out):
        out.retain_grad()
        got["a"] = out
    h = m._blocks[block].register_forward_hook(hook)
    y = m(torch.from_numpy(xs).double())
    y.gather(1, y.argmax(1)[:, None]).sum().backward()
    h.remove()
    return got["a"].detach().numpy(), got["a"].grad.numpy()


def main():
    stills = [lc.load_still(p) for p in lc.STILLS]
    xs = np.stack([s[1] for s in stills])
    x = torch.from_numpy(xs)
    model = lc.load_model(split_head_act=True)
    with torch.no_grad():
        top1 = model(x).numpy().argmax(axis=1)
    targets = [ClassifierOutputTarget(int(c)) for c in top1]
    onnx_a = onnx_tensors(xs, [n for n, _ in LAYERS])
    rng = np.random.default_rng(SEED)
    layers = []
    for (name, block), a_onnx in zip(LAYERS, onnx_a):
        module = model._blocks[block]
        entry = {"tensor": name, "torch_module": f"_blocks[{block}]", "methods": {}}
        for key, cls in METHODS.items():
            with cls(model=model, target_layers=[module]) as cam:
                cam(input_tensor=x, targets=targets)
                aag = cam.activations_and_grads
                assert len(aag.activations) == 1, "the module fired more than once"
                A = aag.activations[0].numpy().copy()
                dA = aag.gradients[0].numpy().copy()
                raw = cam.get_cam_image(x, module, targets, aag.activations[0].numpy(),
                                        aag.gradients[0].numpy(), False)
                raw = np.maximum(raw, 0)
            entry["methods"][key] = r7(raw)
            if key == "gradcam":
                # The reference is float64; where float32 torch differs from it by more than
                # 1e-5 of the largest |dA|, an activation sits so near a ReLU6 kink that float32
                # rounding flips its side (it happens on rocket.jpg): such an item's dA is not
                # a fair test of float32 arithmetic, its maps still are.
                A64, dA64 = grads64(xs, block)
                sens = [float(np.abs(dA[i] - dA64[i]).max() / np.abs(dA64[i]).max()) for i in range(len(xs))]
                A, dA = A64, dA64
                d = float(np.abs(A - a_onnx).max())
                assert d < 1e-3 * float(np.abs(A).max()), (name, d)
                n, c, h, w = A.shape
                pos = np.stack([rng.integers(0, c, N_SAMPLES), rng.integers(0, h, N_SAMPLES),
                                rng.integers(0, w, N_SAMPLES)], axis=1)
                entry.update(shape=[c, h, w], onnx_vs_torch_A=float(f"{d:.3g}"), positions=pos.tolist(),
                             A=[r7(A[i][tuple(pos.T)]) for i in range(n)],
                             dA=[r7(dA[i][tuple(pos.T)]) for i in range(n)],
                             dA_max=[float(f"{np.abs(dA[i]).max():.7g}") for i in range(n)],
                             f32_vs_f64=[float(f"{v:.3g}") for v in sens])
                print(f"{name} {A.shape}: max|A_onnx - A_torch| {d:.2e}, |dA| max {np.abs(dA).max():.3g}, "
                      f"torch f32 vs f64 dA {', '.join(f'{v:.1e}' for v in sens)}")
        layers.append(entry)
    doc = {
        "generator": "tools/make_layer_fixtures.py",
        "pytorch_grad_cam": pytorch_grad_cam.__version__ if hasattr(pytorch_grad_cam, "__version__") else "1.5.7",
        "torch": torch.__version__,
        "model": ONNX_MODEL,
        "images": lc.STILLS,
        "class": top1.tolist(),
        "about": "per layer: A and dA (d logit[class] / dA, torch autograd in float64) of each still at "
                 "`positions` ([c, y, x]); f32_vs_f64: how far torch's float32 dA is from it (relative to "
                 "the largest |dA|: above 1e-5 an activation sits at a ReLU6 kink); "
                 "methods: each still's raw map at the layer's resolution (pytorch-grad-cam get_cam_image, "
                 "then ReLU), before scaling.",
        "layers": layers,
    }
    out = lc.repo_path("tests/fixtures/layers_default.json")
    with open(out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out} ({os.path.getsize(out) >> 10} KiB), classes {top1.tolist()}")


if __name__ == "__main__":
    main()
