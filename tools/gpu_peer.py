"""The GPU machine's Python side of issue 6 (dev tool, run there by scripts/gpu-check.sh).

  python3 tools/gpu_peer.py export [--compressible] --out .gpu-bin/resnet50.onnx
      ResNet-50 with random weights (torchvision's, or the same layers written out when it is
      missing; weights do not change speed). With --compressible each tensor repeats one
      random block, so the file xz-compresses to under 1 MB and is exported here and carried
      (scripts/gpu-stage-bin.sh); otherwise the GPU machine exports it, which needs the onnx
      package there.
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


class _Anything(type):
    """A stand-in class that answers every attribute, call, subscript and union with another
    stand-in: enough for the annotations and default arguments that run at import time."""

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Anything(attr, (), {})

    def __call__(cls, *a, **k):
        return cls

    def __getitem__(cls, key):
        return cls

    def __or__(cls, other):
        return cls

    __ror__ = __or__


def stub_missing():
    """pytorch-grad-cam's __init__ imports every method, and with them matplotlib, scipy,
    sklearn, PIL and torchvision; its GradCAM path uses none of them. A machine whose PyTorch
    environment lacks one gets an empty stand-in module, named in the JSON, instead of an
    ImportError that would lose the whole peer run."""
    import importlib

    stubbed = []
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.lines", "scipy", "scipy.ndimage",
                 "scipy.sparse", "scipy.sparse.linalg", "sklearn", "sklearn.decomposition", "PIL",
                 "PIL.Image", "torchvision", "torchvision.transforms",
                 "torchvision.transforms.functional"):
        try:
            importlib.import_module(name)
        except Exception:
            m = types.ModuleType(name)
            m.__path__ = []

            def attr(a, _n=name):
                sub = sys.modules.get(f"{_n}.{a}")
                if sub is not None:
                    return sub
                if a.startswith("__"):
                    raise AttributeError(a)
                return _Anything(a, (), {})

            m.__getattr__ = attr
            sys.modules[name] = m
            stubbed.append(name)
    return stubbed


def resnet50_plain():
    """torchvision's ResNet-50 (v1.5: stride on the 3x3), written out for a machine without
    torchvision; same layers, same shapes, so the same speed."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.relu(self.bn3(self.conv3(y)) + idt)

    def layer(cin, width, n, stride):
        blocks = [Block(cin, width, stride)] + [Block(width * 4, width, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            self.layer1 = layer(64, 64, 3, 1)
            self.layer2 = layer(256, 128, 4, 2)
            self.layer3 = layer(512, 256, 6, 2)
            self.layer4 = layer(1024, 512, 3, 2)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
            return self.fc(x.mean((2, 3)))

    return ResNet50()


def resnet50():
    from torch import nn

    try:
        import torchvision

        model = torchvision.models.resnet50(weights=None)
    except Exception:
        model = None
    if not isinstance(model, nn.Module):  # no torchvision, or stub_missing's stand-in
        model = resnet50_plain()
    return model.eval(), [model.layer4[-1]]


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
    if args.compressible:
        # Each tensor holds one random block of 4096 values, repeated: xz then shrinks the
        # file from ~98 MB to well under 1 MB, so it fits in a transfer to the GPU machine
        # (which may lack the onnx package the exporter needs). Values keep each tensor's
        # initial distribution, and a convolution's speed does not depend on them.
        torch.manual_seed(0)
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.dtype.is_floating_point and t.numel() > 4096:
                    flat = t.view(-1)
                    block = flat[torch.randperm(flat.numel())[:4096]].clone()
                    flat.copy_(block.repeat(flat.numel() // 4096 + 1)[: flat.numel()])
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
    stubbed = stub_missing()
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
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        cam = GradCAM(model=model, target_layers=layers)
        for b in [int(v) for v in args.batches.split(",")]:
            x = torch.randn(b, 3, 224, 224, device=dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
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
            mem = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0
            rows.append({"model": mname, "batch_size": b, "fps": float(np.median(fps)),
                         "max_allocated_mib": mem})
            print(f"pytorch-grad-cam {mname:>8} batch {b:>3}: {rows[-1]['fps']:8.1f} fps"
                  f"{f', {mem:.0f} MiB allocated at most' if mem else ''}", flush=True)
        cam.activations_and_grads.release()
    res = {"device": name, "torch": torch.__version__, "cv2_standin": standin,
           "stubbed_modules": stubbed, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheels", default=".gpu-peer", help="folder of wheels to put on sys.path")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--out", default=".gpu-bin/resnet50.onnx")
    e.add_argument("--compressible", action="store_true",
                   help="repeat one random block per tensor, so that xz shrinks the file")
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
