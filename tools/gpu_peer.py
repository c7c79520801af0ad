"""The GPU machine's Python side of issue 6 (dev tool, run there by scripts/gpu-check.sh).

  python3 tools/gpu_peer.py export --out .gpu-bin/resnet50.onnx
      ResNet-50 with random weights (torchvision; weights do not change speed), exported there
      rather than carried over: the file (~98 MB) is larger than one 64 MiB transfer.
  python3 tools/gpu_peer.py peer --out OUT/peer.json [--device cuda] [--batches 1,8,32,64]
      pytorch-grad-cam's GradCAM on the same device, same models, same batch sizes as
      `gradcamd bench`: frames/s of forward + gradients + CAM (the library's own call, CAM
      resized to 224x224 as it does), median of 3 timed repeats after a warm-up.

The machine has PyTorch but maybe not pytorch-grad-cam's other dependencies: put their wheels
on sys.path with --wheels DIR (scripts/gpu-stage-peer.sh builds .gpu-peer/). If OpenCV is
missing there, pytorch-grad-cam's one use of it on this path (cv2.resize in
scale_cam_image) is served by a stand-in with the same bilinear, centre-aligned sampling, and
the JSON says so.
"""
import argparse
import glob
import json
import os
import sys
import time
import types


def add_wheels(d):
    for w in sorted(glob.glob(os.path.join(d, "*.whl"))):
        sys.path.insert(0, w)


def cv2_standin():
    """cv2.resize(img, (w, h)) for float maps, bilinear with OpenCV's centre alignment."""
    import numpy as np
    import torch

    def resize(img, size, *a, **k):
        w, h = size
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
        out = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        return out[0, 0].numpy()

    def constant(name):
        # Constants that pytorch-grad-cam reads at import time (COLORMAP_JET as a default
        # argument, ...): any value does, they are not used on the GradCAM path.
        if name.isupper() or name.startswith(("COLOR", "THRESH", "CV_", "INTER")):
            return 0
        raise AttributeError(f"the cv2 stand-in has no {name}")

    m = types.ModuleType("cv2")
    m.resize = resize
    m.__getattr__ = constant
    return m


def resnet50():
    import torchvision

    torchvision_model = torchvision.models.resnet50(weights=None)
    return torchvision_model.eval(), [torchvision_model.layer4[-1]]


def lite0():
    """EfficientNet-Lite0 (efficientnet_lite_pytorch), random weights, the default model's
    architecture with the same Grad-CAM target (the head's own ReLU6, see lite0_common); None
    when the package is not there. Needs `cv2` importable (the real one or the stand-in)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    from torch import nn

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import lite0_common as lc

    m = EfficientNet.from_name("efficientnet-lite0")
    m._head_act = nn.ReLU6()
    m.extract_features = types.MethodType(lc._extract_features_split_act, m)
    m.eval()
    return m, [lc.target_layer(m)]


def export(args):
    import torch

    model, _ = resnet50()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(model, x, args.out, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    sidecar = os.path.splitext(args.out)[0] + ".toml"
    with open(sidecar, "w") as f:
        f.write('# ResNet-50, random weights (speed only)\n[input]\nname = "input"\nwidth = 224\n'
                'height = 224\ncolor = "rgb"\nlayout = "nchw"\nmean = [123.675, 116.28, 103.53]\n'
                'std = [58.395, 57.12, 57.375]\n\n[output]\nlogits = "logits"\n')
    print(f"exported {args.out} ({os.path.getsize(args.out) / 1e6:.0f} MB) and {sidecar}")


def peer(args):
    import numpy as np
    import torch

    standin = False
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.modules["cv2"] = cv2_standin()
        standin = True
    from pytorch_grad_cam import GradCAM

    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    models = {"resnet50": resnet50()}
    lt = lite0()
    if lt is not None:
        models["default"] = lt
    rows = []
    for mname, (model, layers) in models.items():
        model = model.to(dev)
        cam = GradCAM(model=model, target_layers=layers)
        for b in [int(v) for v in args.batches.split(",")]:
            x = torch.randn(b, 3, 224, 224, device=dev)
            cam(input_tensor=x, targets=None)  # warm-up: cuDNN picks its kernels
            fps = []
            for _ in range(3):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(args.iters):
                    out = cam(input_tensor=x, targets=None)  # top-1; numpy: the device work is done
                fps.append(b * args.iters / (time.perf_counter() - t))
            assert out.shape == (b, 224, 224)
            rows.append({"model": mname, "batch_size": b, "fps": float(np.median(fps))})
            print(f"pytorch-grad-cam {mname:>8} batch {b:>3}: {rows[-1]['fps']:8.1f} fps", flush=True)
        cam.activations_and_grads.release()
    res = {"device": name, "torch": torch.__version__, "cv2_standin": standin, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheels", default=".gpu-peer", help="folder of wheels to put on sys.path")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--out", default=".gpu-bin/resnet50.onnx")
    p = sub.add_parser("peer")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    if os.path.isdir(args.wheels):
        add_wheels(args.wheels)
    {"export": export, "peer": peer}[args.cmd](args)


if __name__ == "__main__":
    main()
