"""Make reduced-width replicas of the torchvision CNN classifier families, exported
with both torch ONNX exporters at several opsets, plus torch-autograd Grad-CAM
references at the ONNX target tensor.

Each replica is an instance of the REAL torchvision model class (so `forward` is
torchvision's own code), built with tiny widths, or with the few oversized
modules swapped for narrower copies of the same layer types. Between the
Grad-CAM target layer and the logits every replica has exactly the layers of
the full model:

  resnet              layer4[-1] -> AdaptiveAvgPool2d((1,1)) -> flatten -> fc         (resnet18/34/50/101/152)
  mobilenet_v2        features[-1] (ReLU6) -> F.adaptive_avg_pool2d -> flatten -> Dropout -> Linear
  mobilenet_v3_small  features[-1] (Hardswish) -> AdaptiveAvgPool2d(1) -> flatten -> Linear -> Hardswish
                      -> Dropout -> Linear                                            (also _large)
  efficientnet_b0     features[-1] (SiLU) -> AdaptiveAvgPool2d(1) -> flatten -> Dropout -> Linear (b0..b7)
  vgg16               features[-1] (MaxPool, 7x7 output) -> AdaptiveAvgPool2d((7,7)) -> flatten
                      -> Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear (all VGGs)
  densenet121         features[-1] (norm5, BatchNorm2d) -> F.relu(inplace) -> F.adaptive_avg_pool2d
                      -> flatten -> Linear                                            (all DenseNets)
  convnext_tiny       features[-1] (CNBlock stage) -> AdaptiveAvgPool2d(1) -> LayerNorm2d (permute,
                      LayerNorm, permute) -> Flatten -> Linear                        (all ConvNeXts)

Makes, in tests/fixtures/heads/:
  <arch>_<exporter>_op<opset>.onnx   exporter legacy (dynamo=False) or dynamo (dynamo=True);
                                     input "input" [N,3,H,W] with N symbolic, output "logits" [N,10]
  <arch>_legacy_op17_b2.onnx         the fixed-batch variant: [2,3,H,W] -> [2,10]
  <same stem>.json                   reference (see README.md)
  README.md                          what is what, including the DenseNet / pytorch-grad-cam finding

Run (paths relative to the repo root):
  /tmp/pyenv/venv/bin/python tools/make_head_replicas.py [--out-dir tests/fixtures/heads] [--only ARCH,...]
  [--skip-densenet-check]

Dev-time only (torch, torchvision, onnx, onnxruntime, onnxscript for the dynamo exporter, grad-cam);
the Rust tests read the committed outputs and need no Python.
"""

import argparse
import copy
import io
import json
import logging
import os
import sys
import warnings
import zlib
from contextlib import redirect_stderr, redirect_stdout
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import densenet, efficientnet, mobilenetv2, mobilenetv3, resnet, vgg
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.ops.misc import Conv2dNormActivation

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NUM_CLASSES = 10
BATCH = 3
FIXED_BATCH = 2
LOGIT_STD = 2.5            # the last Linear is rescaled so that logits have about this spread
KINK_MARGIN = 1e-2         # no head ReLU/Hardswish input closer than this to a kink
POOL_OPS = ("GlobalAveragePool", "ReduceMean", "AveragePool")
LEGACY_OPSETS = (13, 17, 18)
DYNAMO_OPSETS = (17, 18)   # 18 is torchlib's native opset; 17 goes through onnxscript's version converter
FIXED = ("legacy", 17)


# --------------------------------------------------------------------------- replicas

def make_resnet():
    """torchvision ResNet (the class of resnet18..152) with narrow layers. resnet18 and
    resnet50 differ only in the block type (BasicBlock / Bottleneck); the head is
    identical: layer4[-1] output -> avgpool -> flatten -> fc."""
    m = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES)
    m.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)   # 32 -> 16
    m.bn1 = nn.BatchNorm2d(8)                                                   # maxpool 16 -> 8
    m.layer1 = nn.Sequential(resnet.BasicBlock(8, 8))
    down = nn.Sequential(resnet.conv1x1(8, 16, 2), nn.BatchNorm2d(16))
    m.layer2 = nn.Sequential(resnet.BasicBlock(8, 16, stride=2, downsample=down))  # -> 4x4
    m.layer3 = nn.Sequential(resnet.BasicBlock(16, 16))
    m.layer4 = nn.Sequential(resnet.BasicBlock(16, 16))
    m.fc = nn.Linear(16, NUM_CLASSES)
    return m, m.layer4[-1], m.fc, (32, 32), "model.layer4[-1] output (BasicBlock: relu(bn2(conv2) + identity)) = input of avgpool"


def make_mobilenet_v2():
    """torchvision MobileNetV2; features[-1] (1x1 Conv+BN+ReLU6, 1280 wide in the real
    model) and the classifier's Linear are swapped for 32-wide ones."""
    m = mobilenetv2.MobileNetV2(num_classes=NUM_CLASSES, width_mult=0.25,
                                inverted_residual_setting=[[1, 32, 1, 1], [6, 64, 1, 2], [6, 64, 1, 2]])  # x0.25: 8, 16, 16
    m.features[-1] = Conv2dNormActivation(m.features[-2].out_channels, 32, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                          activation_layer=nn.ReLU6)
    m.last_channel = 32
    m.classifier[1] = nn.Linear(32, NUM_CLASSES)
    return m, m.features[-1], m.classifier[1], (32, 32), "model.features[-1] output (1x1 Conv + BN + ReLU6) = input of adaptive_avg_pool2d"


def make_mobilenet_v3_small():
    """torchvision MobileNetV3 with a 2-block mobilenet_v3_small-style setting (SE blocks,
    RE and HS activations) and last_channel 32."""
    cfg = partial(mobilenetv3.InvertedResidualConfig, width_mult=1.0)
    setting = [cfg(8, 3, 16, 8, True, "RE", 2, 1), cfg(8, 5, 24, 16, True, "HS", 2, 1)]
    m = mobilenetv3.MobileNetV3(setting, last_channel=32, num_classes=NUM_CLASSES)
    return m, m.features[-1], m.classifier[3], (32, 32), "model.features[-1] output (1x1 Conv + BN + Hardswish) = input of avgpool"


def make_efficientnet_b0():
    """torchvision EfficientNet with a 3-block MBConv setting (SE, SiLU); features[-1] is the
    1x1 Conv + BN + SiLU to 4x the last block's width, like efficientnet_b0."""
    setting = [efficientnet.MBConvConfig(1, 3, 1, 8, 8, 1),
               efficientnet.MBConvConfig(4, 3, 2, 8, 16, 1),
               efficientnet.MBConvConfig(4, 5, 2, 16, 16, 1)]
    m = efficientnet.EfficientNet(setting, dropout=0.2, num_classes=NUM_CLASSES)
    return m, m.features[-1], m.classifier[1], (32, 32), "model.features[-1] output (1x1 Conv + BN + SiLU) = input of avgpool"


def make_vgg16():
    """torchvision VGG with features [Conv, ReLU, MaxPool] x 2 on a 28x28 input, so that the
    last MaxPool outputs 7x7 and AdaptiveAvgPool2d((7,7)) is an identity (exported as
    AveragePool 1x1, as for the real vgg16 at 224x224). Classifier: same layer sequence as
    the real one with 24 instead of 4096 hidden units."""
    m = vgg.VGG(vgg.make_layers([8, "M", 8, "M"]), num_classes=NUM_CLASSES, dropout=0.5)
    m.classifier = nn.Sequential(
        nn.Linear(8 * 7 * 7, 24), nn.ReLU(True), nn.Dropout(p=0.5),
        nn.Linear(24, 24), nn.ReLU(True), nn.Dropout(p=0.5),
        nn.Linear(24, NUM_CLASSES))
    return m, m.features[-1], m.classifier[6], (28, 28), "model.features[-1] output (the last MaxPool2d, 7x7) = input of avgpool (AdaptiveAvgPool2d((7,7)))"


def make_densenet121():
    """torchvision DenseNet (growth 4, blocks (2,2), 8 initial features, bn_size 2): the
    same conv0/pool0/denseblock/transition/norm5 structure and the same forward."""
    m = densenet.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                          drop_rate=0, num_classes=NUM_CLASSES)
    return m, None, m.classifier, (32, 32), ("F.relu(model.features(x)) = relu(norm5 output) = input of "
                                             "adaptive_avg_pool2d (hooked by hand, see README; "
                                             "pytorch-grad-cam's model.features[-1] differs)")


def make_convnext_tiny():
    """torchvision ConvNeXt with 2 stages of 1 CNBlock (8 and 16 wide), layer_scale 0.5 (1e-6 in
    the real model would make the random blocks identities)."""
    m = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], layer_scale=0.5,
                 num_classes=NUM_CLASSES)
    return m, m.features[-1], m.classifier[2], (32, 32), "model.features[-1] output (stage of CNBlocks) = input of avgpool"


ARCHS = {
    "resnet": (make_resnet, ["resnet18", "resnet50"]),
    "mobilenet_v2": (make_mobilenet_v2, ["mobilenet_v2"]),
    "mobilenet_v3_small": (make_mobilenet_v3_small, ["mobilenet_v3_small"]),
    "efficientnet_b0": (make_efficientnet_b0, ["efficientnet_b0"]),
    "vgg16": (make_vgg16, ["vgg16"]),
    "densenet121": (make_densenet121, ["densenet121"]),
    "convnext_tiny": (make_convnext_tiny, ["convnext_tiny"]),
}


def randomize(model, seed, hw):
    """Non-trivial BatchNorm and LayerNorm affine parameters (torch's defaults make them
    identities), and BatchNorm running statistics measured on image-like inputs (as in a
    trained model: with arbitrary statistics, the pooled features hardly depend on the
    input, and the logits end up dominated by constants)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for mod in bns:
            mod.reset_running_stats()
            mod.momentum = None          # cumulative average
            mod.train()
        model(torch.from_numpy(image_like(np.random.default_rng(seed + 2), 32, hw)))
        for mod in bns:
            mod.eval()
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.2 * torch.randn(n, generator=g))
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))


def image_like(rng, n, hw):
    """Seeded image-like noise: a random 4x4 pattern upsampled (bilinear) to hw plus fine noise,
    rounded to 3 decimals (so the JSON is short and parses back to the same float32). Plain
    white noise gives nearly the same pooled features for every input."""
    coarse = torch.from_numpy(rng.standard_normal((n, 3, 4, 4)))
    smooth = F.interpolate(coarse, size=hw, mode="bilinear", align_corners=False).numpy()
    return np.round(smooth + 0.3 * rng.standard_normal((n, 3, *hw)), 3).astype(np.float32)


def build(arch):
    maker, _ = ARCHS[arch]
    seed = zlib.crc32(arch.encode())
    torch.manual_seed(seed)
    model, layer, last_fc, hw, desc = maker()
    model.eval()
    randomize(model, seed, hw)
    # scale the last Linear so the logits have a useful spread
    calib = torch.from_numpy(image_like(np.random.default_rng(seed + 1), 16, hw))
    with torch.no_grad():
        # hidden Linear layers of the head (mobilenet_v3, vgg): outputs spread about 2, so that
        # the Hardswish sees all its pieces
        head = getattr(model, "classifier", None)
        for lin in [] if head is None else [m for m in head.modules() if isinstance(m, nn.Linear)]:
            if lin is last_fc:
                continue
            got = []
            h = lin.register_forward_hook(lambda _m, _i, o: got.append(o.detach().clone()))
            model(calib)
            h.remove()
            k = 2.0 / float(got[0].std())
            lin.weight.mul_(k)
            lin.bias.mul_(k)
        y = model(calib)
        # centre each class over the calibration inputs (else one class wins for every input),
        # then scale the spread across inputs
        last_fc.bias.sub_(y.mean(0))
        s = float((y - y.mean(0)).std())
        last_fc.weight.mul_(LOGIT_STD / s)
        last_fc.bias.mul_(LOGIT_STD / s)
    return model, layer, hw, desc


# --------------------------------------------------------------------------- reference

def kink_inputs(model):
    """Hooks on the head's piecewise activations (their inputs, cloned before any
    in-place op). Returns (list to be filled with (tensor, kinks), handles)."""
    got, handles = [], []
    head = getattr(model, "classifier", None)
    mods = [] if head is None else list(head.modules())
    for mod in mods:
        kinks = {nn.ReLU: [0.0], nn.ReLU6: [0.0, 6.0], nn.Hardswish: [-3.0, 3.0]}.get(type(mod))
        if kinks:
            handles.append(mod.register_forward_pre_hook(
                lambda _m, inp, k=kinks: got.append((inp[0].detach().clone(), k))))
    return got, handles


def forward_with_target(arch, model, layer, x):
    """(logits, A) with A the ONNX target tensor, A.retain_grad() done."""
    if arch == "densenet121":
        # torchvision DenseNet.forward, with the in-place ReLU made out-of-place so that A is a
        # tensor of its own (values identical)
        A = F.relu(model.features(x))
        A.retain_grad()
        out = torch.flatten(F.adaptive_avg_pool2d(A, (1, 1)), 1)
        return model.classifier(out), A
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["A"] = out
    h = layer.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        h.remove()
    return logits, store["A"]


def reference(arch, model, layer, x):
    """float64 autograd: logits, class, A, dA, cam (raw, before ReLU)."""
    m64 = copy.deepcopy(model).double()
    xt = torch.from_numpy(x.astype(np.float64))
    logits, A = forward_with_target(arch, m64, layer_in(m64, model, layer), xt)
    with torch.no_grad():
        plain = m64(xt.clone())
    assert torch.allclose(plain, logits, rtol=0, atol=1e-12), "replicated forward differs"
    cls = logits.argmax(1)
    logits.gather(1, cls[:, None]).sum().backward()
    A_, dA = A.detach().numpy(), A.grad.numpy()
    cam = (dA.mean((2, 3))[:, :, None, None] * A_).sum(1)
    return logits.detach().numpy(), cls.numpy(), A_, dA, cam


def layer_in(m64, model, layer):
    """The module of the float64 copy that corresponds to `layer` of the original."""
    if layer is None:
        return None
    names = {id(mod): n for n, mod in model.named_modules()}
    return dict(m64.named_modules())[names[id(layer)]]


def pgc_tensors(model, layer, x):
    """pytorch-grad-cam's own hooks (ActivationsAndGradients) on `layer`, float64."""
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    m64 = copy.deepcopy(model).double()
    ag = ActivationsAndGradients(m64, [layer_in(m64, model, layer)], None)
    logits = ag(torch.from_numpy(x.astype(np.float64)))
    logits.gather(1, logits.argmax(1)[:, None]).sum().backward()
    a, g = ag.activations[0].numpy().copy(), ag.gradients[0].numpy().copy()
    ag.release()
    return a, g


def make_input(arch, model, hw):
    rng = np.random.default_rng(zlib.crc32(("input:" + arch).encode()))
    for attempt in range(1000):
        x = image_like(rng, BATCH, hw)
        got, handles = kink_inputs(model)
        with torch.no_grad():
            logits = model(torch.from_numpy(x.astype(np.float64)).float()).double()
        for h in handles:
            h.remove()
        cls = logits.argmax(1).tolist()
        top2 = torch.topk(logits, 2, dim=1).values
        gap = float((top2[:, 0] - top2[:, 1]).min())
        kink_ok = all(float((t - k).abs().min()) > KINK_MARGIN for t, ks in got for k in ks)
        if len(set(cls)) >= 2 and cls[0] != cls[1] and gap > 1e-2 and kink_ok:
            return x, attempt
    raise RuntimeError(f"{arch}: no suitable input found")


# --------------------------------------------------------------------------- export

def export(model, hw, path, exporter, opset, batch):
    """Export; returns a note string ("" when all is as asked)."""
    x = torch.randn(batch if isinstance(batch, int) else BATCH, 3, *hw)
    common = dict(input_names=["input"], output_names=["logits"], opset_version=opset)
    log = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(log), redirect_stderr(log):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            dyn = None if isinstance(batch, int) else {"input": {0: "N"}, "logits": {0: "N"}}
            torch.onnx.export(model, (x,), path, dynamo=False, dynamic_axes=dyn, **common)
        else:
            dyn = None if isinstance(batch, int) else {"x": {0: torch.export.Dim("N", min=1, max=1024)}}
            prog = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dyn, external_data=False,
                                     optimize=True, **common)
            prog.save(path, external_data=False)
    return log.getvalue()


def graph_facts(path):
    """Actual opset, input/output names and dims, target tensor, head ops."""
    m = onnx.load(path)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    g = m.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    inf = onnx.shape_inference.infer_shapes(m)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim)
             for vi in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output)
             if vi.type.tensor_type.HasField("shape")}
    producer = {o: n for n in g.node for o in n.output}
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    target, pool = None, None
    queue, seen = [g.output[0].name], set()
    while queue:
        t = queue.pop(0)
        n = producer.get(t)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type in POOL_OPS and ranks.get(n.input[0]) == 4 and spatial_pool(n, consts):
            target, pool = n.input[0], n
            break
        queue.extend(i for i in n.input if i and i not in inits)
    head = []
    if target is not None:
        # nodes on a path target -> logits, in graph (topological) order
        down = {target}
        for n in g.node:
            if any(i in down for i in n.input):
                down.update(n.output)
        up, stack = set(), [g.output[0].name]
        while stack:
            t = stack.pop()
            if t in up:
                continue
            up.add(t)
            n = producer.get(t)
            if n is not None:
                stack.extend(i for i in n.input if i)
        for n in g.node:
            if any(o in up for o in n.output) and any(i in down for i in n.input):
                desc = n.op_type
                if n.op_type == "AveragePool":
                    ks = next((list(a.ints) for a in n.attribute if a.name == "kernel_shape"), None)
                    desc += f"(kernel {ks})"
                head.append(desc)
    return m, dict(opset=opset, input=inputs[0].name, input_dims=dims(inputs[0]),
                   output=g.output[0].name, output_dims=dims(g.output[0]),
                   target=target, target_op=pool.op_type if pool is not None else None, head_ops=head)


def spatial_pool(n, consts):
    """A ReduceMean counts as a pooling op only if it reduces exactly axes {2, 3} of its 4-D
    input (LayerNorm decomposed at opset < 17 has a ReduceMean over the last axis of a 4-D
    tensor: ConvNeXt's head). GlobalAveragePool / AveragePool always pool H, W."""
    if n.op_type != "ReduceMean":
        return True
    axes = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
    if axes is None and len(n.input) > 1 and n.input[1] in consts:
        axes = consts[n.input[1]].ravel().tolist()
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def run_ort(model_proto, target, x):
    m = copy.deepcopy(model_proto)
    names = [o.name for o in m.graph.output]
    if target and target not in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(target))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(["logits"] + ([target] if target else []), {"input": x})
    return outs[0], (outs[1] if target else None)


# --------------------------------------------------------------------------- json

def f32_short(a):
    """float32 values as the shortest decimals that parse back to them."""
    return np.vectorize(lambda v: float(str(np.float32(v))), otypes=[object])(np.asarray(a, np.float32)).tolist()


def g9(a):
    return np.vectorize(lambda v: float(f"{v:.9g}"), otypes=[object])(np.asarray(a, np.float64)).tolist()


def fmt_e(v):
    return "n/a" if v is None else f"{v:.1e}"


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


# --------------------------------------------------------------------------- densenet check

STILLS = [".deps/media/chelsea.png", ".deps/media/coffee.png", ".deps/media/astronaut.png",
          ".deps/media/rocket.jpg"]


def densenet_check_input():
    """The four stills (from `make setup`) preprocessed with the ImageNet mean/std like
    tools/conformance.py, else torch.randn(4,3,224,224) after torch.manual_seed(0)."""
    import cv2
    xs = []
    for rel in STILLS:
        img = cv2.imread(os.path.join(REPO, rel), cv2.IMREAD_COLOR)
        if img is None:
            return torch.randn(4, 3, 224, 224), "torch.randn(4,3,224,224) (stills not found)"
        rgb = cv2.cvtColor(cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        xs.append(((rgb.astype(np.float32) - np.float32([123.675, 116.28, 103.53]))
                   / np.float32([58.395, 57.12, 57.375])).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(xs)), ("the stills chelsea, coffee, astronaut, rocket: cv2 resize 224x224, "
                                            "RGB, ImageNet mean/std")


def densenet_check():
    """What pytorch-grad-cam computes on the REAL torchvision densenet121 (random weights,
    CPU) with target_layers=[model.features[-1]], vs the Grad-CAM at the ReLU output."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None).eval()
    x, what = densenet_check_input()
    layer = model.features[-1]
    cam = GradCAM(model=model, target_layers=[layer])
    with torch.no_grad():
        cls = model(x).argmax(1).tolist()
    out = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in cls])  # noqa: F841
    pa = cam.activations_and_grads.activations[0].numpy().copy()
    pg = cam.activations_and_grads.gradients[0].numpy().copy()
    # pgc's raw CAM from its own tensors
    pgc_raw = cam.get_cam_image(x, layer, None, pa, pg, False)
    cam.activations_and_grads.release()
    # independent autograd at both candidate tensors
    z = model.features(x)
    z.retain_grad()
    r = F.relu(z)
    r.retain_grad()
    logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(r, (1, 1)), 1))
    logits.gather(1, torch.tensor(cls)[:, None]).sum().backward()
    z_, r_, dz, dr = (t.detach().numpy() for t in (z, r, z.grad, r.grad))
    cam_relu = (dr.mean((2, 3))[:, :, None, None] * r_).sum(1)          # correct, at ReLU output (ONNX target)
    cam_norm5 = (dz.mean((2, 3))[:, :, None, None] * z_).sum(1)        # correct, at norm5 output (pre-ReLU)
    def corr(a, b):  # worst image
        return min(float(np.corrcoef(np.maximum(p, 0).ravel(), np.maximum(q, 0).ravel())[0, 1])
                   for p, q in zip(a, b))
    res = dict(
        input=what, shape=list(pa.shape), classes=cls,
        pgc_A_vs_relu_out=float(np.abs(pa - r_).max()),
        pgc_A_vs_norm5_out=float(np.abs(pa - z_).max()),
        pgc_grad_vs_d_norm5=float(np.abs(pg - dz).max()),
        pgc_grad_vs_d_relu=float(np.abs(pg - dr).max()),
        d_norm5_eq_d_relu_times_mask=float(np.abs(dz - dr * (z_ > 0)).max()),
        dr_spatially_constant=float(np.abs(dr - dr.mean((2, 3), keepdims=True)).max()),
        frac_positive_min=float((z_ > 0).mean((2, 3)).min()),
        frac_positive_max=float((z_ > 0).mean((2, 3)).max()),
        pgc_raw_vs_mixed_formula=float(np.abs(pgc_raw - (dz.mean((2, 3))[:, :, None, None] * r_).sum(1)).max()),
        corr_pgc_vs_correct_relu=corr(pgc_raw, cam_relu),
        corr_pgc_vs_correct_norm5=corr(pgc_raw, cam_norm5),
        corr_correct_relu_vs_correct_norm5=corr(cam_relu, cam_norm5),
        max_abs_diff_pgc_vs_correct_relu_rel=max(float(np.abs(np.maximum(p, 0) - np.maximum(q, 0)).max()
                                                       / np.maximum(q, 0).max()) for p, q in zip(pgc_raw, cam_relu)),
    )
    return res


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="tests/fixtures/heads")
    ap.add_argument("--only", default="", help="comma-separated architectures")
    ap.add_argument("--skip-densenet-check", action="store_true",
                    help="skip the check on the full torchvision densenet121 (~20 s)")
    args = ap.parse_args()
    out_dir = os.path.join(REPO, args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    archs = [a for a in ARCHS if not args.only or a in args.only.split(",")]

    combos = [("legacy", o, "N") for o in LEGACY_OPSETS] + [("dynamo", o, "N") for o in DYNAMO_OPSETS] \
        + [(FIXED[0], FIXED[1], FIXED_BATCH)]
    rows, failures = [], []
    for arch in archs:
        model, layer, hw, desc = build(arch)
        x, attempts = make_input(arch, model, hw)
        logits, cls, A, dA, cam = reference(arch, model, layer, x)
        extra = {}
        if arch == "densenet121":
            pa, pg = pgc_tensors(model, model.features[-1], x)
            pgc_cam = (pg.mean((2, 3))[:, :, None, None] * pa).sum(1)
            assert np.abs(pa - A).max() < 1e-12, "pgc activation should be relu(norm5) on CPU"
            extra = {"pytorch_grad_cam_cam": g9(pgc_cam),
                     "pytorch_grad_cam_note": ("what pytorch-grad-cam 1.5.7 computes on CPU with target_layers="
                                               "[model.features[-1]] (norm5): A = relu(norm5 out) (its stored "
                                               "activation is modified by forward's in-place ReLU), gradient = "
                                               "d/d norm5 out = dA * (norm5 out > 0); raw, before ReLU. "
                                               "Not the correct Grad-CAM: see README.")}
        else:
            pa, pg = pgc_tensors(model, layer, x)
            d = max(np.abs(pa - A).max(), np.abs(pg - dA).max())
            assert d < 1e-12, (arch, "pytorch-grad-cam's layer disagrees with the reference", d)
        for exporter, opset, batch in combos:
            stem = f"{arch}_{exporter}_op{opset}" + (f"_b{batch}" if isinstance(batch, int) else "")
            path = os.path.join(out_dir, stem + ".onnx")
            try:
                log = export(model, hw, path, exporter, opset, batch)
            except Exception as e:  # noqa: BLE001
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                failures.append((stem, "export failed: " + msg))
                print(f"{stem:42s} EXPORT FAILED {msg}", flush=True)
                if os.path.exists(path):
                    os.remove(path)
                continue
            proto, facts = graph_facts(path)
            if facts["opset"] != opset:
                why = next((ln.strip() for ln in log.splitlines() if ln.startswith("RuntimeError")), "")
                failures.append((stem, f"asked for opset {opset}, the exporter wrote opset {facts['opset']} "
                                       f"(torch.onnx: automatic version conversion failed: {why}); not kept"))
                print(f"{stem:42s} WRONG OPSET {facts['opset']}: removed", flush=True)
                os.remove(path)
                continue
            nb = batch if isinstance(batch, int) else BATCH
            xb = x[:nb]
            y, a_ort = run_ort(proto, facts["target"], xb)
            d_logits = float(np.abs(y - logits[:nb]).max())
            d_A = float(np.abs(a_ort - A[:nb]).max()) if a_ort is not None and a_ort.shape == A[:nb].shape \
                else None
            ok = d_logits < 1e-4 and d_A is not None and d_A < 1e-4 and (y.argmax(1) == cls[:nb]).all()
            doc = {
                "model": f"{args.out_dir}/{stem}.onnx", "generator": "tools/make_head_replicas.py",
                "arch": arch, "torchvision_models": ARCHS[arch][1], "exporter": exporter,
                "exporter_call": (f"torch.onnx.export(dynamo={exporter == 'dynamo'}, opset_version={opset})"
                                  f" torch {torch.__version__}"),
                "opset": facts["opset"], "batch": batch,
                "input_name": facts["input"], "input_dims": facts["input_dims"],
                "output_name": facts["output"], "output_dims": facts["output_dims"],
                "input": f32_short(xb),
                "target_tensor_torch": desc,
                "target_tensor_onnx": facts["target"], "target_pool_op_onnx": facts["target_op"],
                "head_ops_onnx": facts["head_ops"],
                "class": cls[:nb].tolist(), "logits": g9(logits[:nb]),
                "A": g9(A[:nb]), "dA": g9(dA[:nb]), "cam": g9(cam[:nb]),
                "check": {"ort_vs_torch_logits_max_abs": d_logits, "ort_vs_torch_A_max_abs": d_A},
            }
            if extra:
                doc.update({k: (v[:nb] if isinstance(v, list) else v) for k, v in extra.items()})
            write_json(os.path.join(out_dir, stem + ".json"), doc)
            size = os.path.getsize(path) + os.path.getsize(os.path.join(out_dir, stem + ".json"))
            note = "" if ok else "CHECK FAILED"
            if not ok:
                failures.append((stem, f"check failed: logits diff {d_logits}, A diff {d_A}"))
            rows.append(dict(stem=stem, arch=arch, exporter=exporter, opset=facts["opset"], batch=batch,
                             dims=facts["input_dims"], target=facts["target"], target_op=facts["target_op"],
                             head=facts["head_ops"], d_logits=d_logits, d_A=d_A, size=size, ok=ok,
                             A_shape=list(A.shape[1:])))
            print(f"{stem:42s} opset {facts['opset']} in {facts['input_dims']} target {facts['target']!r} "
                  f"({facts['target_op']}) head {' '.join(facts['head_ops'])} | logits {d_logits:.1e} "
                  f"A {d_A if d_A is None else f'{d_A:.1e}'} | {size / 1024:.0f} KiB {note}", flush=True)
        print(f"  {arch}: classes {cls.tolist()}, A {list(A.shape)}, input resampled {attempts}x", flush=True)

    dn = None
    if not args.skip_densenet_check and "densenet121" in archs:
        print("checking pytorch-grad-cam on the full torchvision densenet121 ...", flush=True)
        dn = densenet_check()
        print(json.dumps(dn, indent=1), flush=True)
        write_json(os.path.join(out_dir, "densenet121_pytorch_grad_cam_check.json"),
                   {"generator": "tools/make_head_replicas.py (densenet_check)",
                    "setup": "torchvision densenet121(weights=None), torch.manual_seed(0), eval, CPU, "
                             "pytorch-grad-cam GradCAM target_layers=[model.features[-1]], top-1 targets; "
                             "correlations of the CAMs after ReLU at 7x7, worst image", **dn})
    write_readme(out_dir, args.out_dir, rows, failures, dn, archs)
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"total {total / 1024:.0f} KiB in {out_dir}")
    for stem, why in failures:
        print(f"FLAG {stem}: {why}")
    return 1 if any("check failed" in w for _, w in failures) else 0


def write_readme(out_dir, rel, rows, failures, dn, archs):
    L = ["# Head replicas of the torchvision classifier families", "",
         "Made by `tools/make_head_replicas.py` (dev-time; the tests need no Python). torch "
         f"{torch.__version__}, torchvision {torchvision.__version__}, onnx {onnx.__version__}, "
         f"onnxruntime {ort.__version__}.", "",
         "Each model is an instance of the **real torchvision model class** (so `forward` is torchvision's "
         "own code) with tiny widths, random weights (seed = crc32 of the family name; BatchNorm running "
         "statistics measured on image-like inputs, Batch/LayerNorm affine parameters randomized, hidden head "
         "Linears scaled to outputs of spread 2, the last Linear centred and scaled so the logits spread "
         f"about {LOGIT_STD}), eval mode, {NUM_CLASSES} classes. Between the Grad-CAM target and the logits "
         "each has exactly the layers of the full model:", "",
         "| family | full models | target (torch) | layers from the target to the logits |", "|---|---|---|---|",
         "| `resnet` | resnet18, resnet50 (all ResNets) | `layer4[-1]` output | AdaptiveAvgPool2d((1,1)) → flatten → fc |",
         "| `mobilenet_v2` | mobilenet_v2 | `features[-1]` output (Conv+BN+ReLU6) | F.adaptive_avg_pool2d → flatten → Dropout → Linear |",
         "| `mobilenet_v3_small` | mobilenet_v3_small/large | `features[-1]` output (Conv+BN+Hardswish) | AdaptiveAvgPool2d(1) → flatten → Linear → Hardswish → Dropout → Linear |",
         "| `efficientnet_b0` | efficientnet_b0..b7 | `features[-1]` output (Conv+BN+SiLU) | AdaptiveAvgPool2d(1) → flatten → Dropout → Linear |",
         "| `vgg16` | all VGGs | `features[-1]` output (last MaxPool, 7×7) | AdaptiveAvgPool2d((7,7)) (= AveragePool 1×1 in ONNX) → flatten → Linear → ReLU → Dropout → Linear → ReLU → Dropout → Linear |",
         "| `densenet121` | all DenseNets | `relu(features(x))` (see below) | (norm5 →) F.relu(inplace) → F.adaptive_avg_pool2d → flatten → Linear |",
         "| `convnext_tiny` | all ConvNeXts | `features[-1]` output (CNBlock stage) | AdaptiveAvgPool2d(1) → LayerNorm2d (permute, LayerNorm, permute) → Flatten → Linear |",
         "", "Input `input` [N,3,32,32] float32 (vgg16: [N,3,28,28], so its last MaxPool gives 7×7 like the "
         "real vgg16 at 224), output `logits` [N,10]. File names: `<family>_<exporter>_op<opset>.onnx` with "
         "`legacy` = `torch.onnx.export(dynamo=False)` and `dynamo` = `torch.onnx.export(dynamo=True)` "
         "(onnxscript optimizer on, `dynamic_shapes` Dim \"N\"), batch symbolic (`dim_param` \"N\" for both); "
         "`<family>_legacy_op17_b2.onnx` has a FIXED batch of 2.", "",
         "## `<stem>.json`", "",
         "- `input` [B,3,H,W] (B = 3; 2 for the `_b2` models): seeded image-like noise (a 4×4 normal pattern "
         "upsampled bilinearly, plus 0.3 × normal noise) rounded to 3 decimals, "
         "written as the shortest decimals that parse back to the float32 values (parse as f32). Resampled "
         f"until the first two items have different classes, top-1 beats top-2 by > 0.01, and no head "
         f"ReLU/Hardswish input lies within {KINK_MARGIN} of a kink.",
         "- `class` [B]: argmax per item; `logits` [B,10].",
         "- `A` [B,C,h,w]: the target tensor; `dA` = d logits[b, class[b]] / d A[b]; "
         "`cam` [B,h,w] = Σ_k mean_hw(dA[b,k]) · A[b,k], the raw Grad-CAM **before** ReLU.",
         "  All from torch autograd in float64 (the float32 weights cast to float64), written with 9 "
         "significant digits. The reference's forward is checked to reproduce `model(x)`; for every family "
         "but densenet121, `A` and `dA` are checked to equal (< 1e-12) what pytorch-grad-cam's own hooks "
         "(`ActivationsAndGradients`) record on its default layer.",
         "- `target_tensor_torch`: the hooked layer in words; `target_tensor_onnx`: the input of the pooling "
         "op nearest the logits in the exported graph (breadth-first walk back from `logits` to the first "
         "GlobalAveragePool/ReduceMean/AveragePool with a 4-D input), `target_pool_op_onnx` that op; "
         "`head_ops_onnx`: the op types on the paths from the target to the logits, in graph order.",
         "- `check`: onnxruntime 1.32 (CPU, float32) vs the float64 reference: max abs diff of the logits, "
         "and of `A` (read as an extra graph output of `target_tensor_onnx`).",
         "- densenet121 only: `pytorch_grad_cam_cam` [B,h,w], the raw CAM pytorch-grad-cam computes on CPU "
         "(see below), and `pytorch_grad_cam_note`.",
         "", "## Models", "",
         "| file | opset | input dims | target_tensor_onnx | pool op | head ops (ONNX) | ORT-vs-torch logits | A | KiB (onnx+json) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| `{r['stem']}` | {r['opset']} | {r['dims']} | `{r['target']}` | {r['target_op']} | "
                 f"{' → '.join(r['head'])} | {r['d_logits']:.1e} | "
                 f"{fmt_e(r['d_A'])} | {r['size'] / 1024:.0f} |")
    L += ["", "## Combinations not made", ""]
    if failures:
        L += [f"- `{s}`: {w}" for s, w in failures]
        if any("_dynamo_op" in s and "wrote opset" in w for s, w in failures):
            L += ["", "torch's dynamo exporter only has opset-18 implementations (torchlib); for a lower opset it "
                  "exports at 18 and converts with onnxscript's version converter, which falls back to the ONNX C "
                  "API converter. That converter needs ReduceMean's `axes` input (opset 18) to be a constant to "
                  "turn it back into an attribute, and conversion runs before constant folding, so every model "
                  "with a ReduceMean stays at opset 18 (the exporter only logs it). vgg16 (pooling is AveragePool, "
                  "no ReduceMean) converts. Opset-17 dynamo files for the other families are therefore not made."]
    else:
        L.append("None: every family exported with every combination.")
    L += ["", "## Things these models show about the default-target rule", "",
          "- **ConvNeXt at opset 13**: LayerNormalization does not exist before opset 17, so the legacy "
          "exporter decomposes LayerNorm2d into Transpose → ReduceMean(axes=[-1]) → Sub → Pow → ReduceMean → "
          "Add → Sqrt → Div → Mul → Add → Transpose. Those ReduceMeans have a 4-D input ([N,1,1,C]); a rule "
          "\"first ReduceMean with a 4-D input\" picks the LayerNorm's Transpose output instead of the real "
          "target. The rule must check the reduced axes ({2,3}, or {-2,-1}; attribute before opset 18, "
          "input from 18). The head then needs backward rules for Sub, Pow, Sqrt, Div (and ReduceMean over "
          "the last axis).",
          "- **mobilenet_v3_small at opset 13**: HardSwish (opset 14) is exported as Mul(x, HardSigmoid(x)) "
          "(alpha 1/6), both in the trunk (the target is a Mul output) and in the head.",
          "- **dynamo** exports pool with ReduceMean(axes input [-1,-2] or [2,3], keepdims) and flatten with "
          "Reshape; tensor names are like `relu_8`, `add_21`.",
          "- **ConvNeXt, dynamo**: LayerNorm2d's permute of the pooled [N,C,1,1] tensor is exported as an "
          "`as_strided`: `flat = Reshape(pooled, [-1])`; `idx = Range(0, N)·C` unsqueezed to [N,1,1,1] + "
          "[[0..C-1]] of shape [1,C,1,1] (+ zeros) → idx [N,C,1,1]; `Gather(flat, idx, axis=0)` "
          "(node `node_as_strided`) → [N,C,1,1], then Transpose → LayerNormalization → Transpose → Reshape → "
          "Gemm. The Gather's indices are 4-D and computed at run time (they depend on N); its backward is a "
          "scatter-add of the gradient into zeros shaped like `flat` (ScatterElements/ScatterND with "
          "reduction \"add\", or, since the indices here are a permutation, ScatterND without reduction).",
          "- **VGG**: both exporters write AdaptiveAvgPool2d((7,7)) on a 7×7 input as AveragePool(kernel 1×1); "
          "dA varies over space.",
          "- **DenseNet**: the target is the output of the Relu after norm5 (the legacy exporter's "
          "`/Relu_output_0`); norm5's BatchNormalization stays in the graph (its input is a Concat, so it is "
          "not fused into a Conv) but lies before the target.",
          "", "## DenseNet: what pytorch-grad-cam computes", "",
          "torchvision's `DenseNet.forward` is `features = self.features(x); out = F.relu(features, "
          "inplace=True); out = F.adaptive_avg_pool2d(out, (1, 1)); ...`, and pytorch-grad-cam's usual "
          "layer is `model.features[-1]` = `norm5` (BatchNorm2d). Its `ActivationsAndGradients` hooks store "
          "`output.cpu().detach()` and register a gradient hook on `output` (the norm5 output tensor). Then:",
          "",
          "- **activation**: on CPU, `.cpu()` is a no-op and `.detach()` shares storage, so the in-place "
          "ReLU rewrites the stored activation: pytorch-grad-cam's A = relu(z), z = norm5 output. "
          "(On CUDA `.cpu()` copies before the ReLU, so there A = z. Read from the code; not run here.)",
          "- **gradient**: a tensor hook registered before an in-place op receives the gradient w.r.t. the "
          "value before the op: G = dL/dz = dL/dr · 1[z > 0], with r = relu(z).",
          "- so on CPU pytorch-grad-cam computes weights_k = mean_hw(dL/dr_k · 1[z_k > 0]) and "
          "CAM = relu(Σ_k weights_k · relu(z_k)). With a GAP → Linear head, dL/dr_k is constant over space "
          "(= W[class,k] / hw), so weights_k = W[class,k]/hw · (fraction of positions where z_k > 0): each "
          "channel's weight is shrunk by its positive fraction. That mixes the gradient of one tensor (z) "
          "with the activation of another (r): it is the Grad-CAM of neither.",
          "- **mathematically correct** Grad-CAM at the ONNX target (the input of GlobalAveragePool = the "
          "Relu output r): weights_k = mean_hw(dL/dr_k) = W[class,k]/hw, CAM = relu(Σ_k weights_k · r_k) — "
          "this equals CAM (the class activation map) up to scale. That is what gradcamd computes and what "
          "the `densenet121_*.json` files hold in `A`, `dA`, `cam`.",
          "- the correct Grad-CAM at the norm5 output z (pre-ReLU; what pytorch-grad-cam computes on CUDA) is "
          "weights_k = mean_hw(dL/dr_k · 1[z_k > 0]), CAM = relu(Σ_k weights_k · z_k).", ""]
    if dn:
        L += ["Verified on the full torchvision `densenet121(weights=None)` (torch.manual_seed(0), CPU, "
              f"input: {dn['input']}, top-1 targets, pytorch-grad-cam 1.5.7 "
              "`GradCAM(target_layers=[model.features[-1]])`); numbers in "
              "`densenet121_pytorch_grad_cam_check.json`:", "",
              f"- pytorch-grad-cam's stored activation vs relu(norm5 out): max abs diff "
              f"{dn['pgc_A_vs_relu_out']:.1e}; vs norm5 out: {dn['pgc_A_vs_norm5_out']:.2g}",
              f"- its stored gradient vs dL/d(norm5 out): {dn['pgc_grad_vs_d_norm5']:.1e}; vs dL/d(relu out): "
              f"{dn['pgc_grad_vs_d_relu']:.2g}; dL/dz = dL/dr·1[z>0] to {dn['d_norm5_eq_d_relu_times_mask']:.1e}",
              f"- dL/dr is constant over space to {dn['dr_spatially_constant']:.1e}; positive fraction of z per "
              f"channel ranges {dn['frac_positive_min']:.2f} .. {dn['frac_positive_max']:.2f}",
              f"- pytorch-grad-cam's raw CAM = Σ_k mean(dL/dz_k)·relu(z_k) to {dn['pgc_raw_vs_mixed_formula']:.1e}",
              f"- correlation (after ReLU, 7×7 maps, worst image) of pytorch-grad-cam's CAM with the correct Grad-CAM at the "
              f"ReLU output: {dn['corr_pgc_vs_correct_relu']:.4f}; with the correct Grad-CAM at norm5: "
              f"{dn['corr_pgc_vs_correct_norm5']:.4f}; the two correct ones with each other: "
              f"{dn['corr_correct_relu_vs_correct_norm5']:.4f}; max abs diff pytorch-grad-cam vs correct-at-ReLU, "
              f"relative to the max (worst image): {dn['max_abs_diff_pgc_vs_correct_relu_rel']:.3f}", "",
              "So the two maps are similar (same activations relu(z); only each channel's weight is scaled by "
              "its positive fraction) but not equal; a conformance test against unmodified pytorch-grad-cam on a "
              "DenseNet must use a loose tolerance or, better, the hand-hooked ReLU output.", ""]
    L += ["To compare gradcamd with pytorch-grad-cam on a DenseNet, hook the ReLU output yourself "
          "(or replace the in-place ReLU) instead of `features[-1]`.", ""]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
