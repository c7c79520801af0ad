"""Conformance of gradcamd with pytorch-grad-cam on the full torchvision classifiers.

For each architecture (weights=None, torch.manual_seed(0), eval) x exporter (legacy =
torch.onnx.export(dynamo=False), dynamo = torch.onnx.export(dynamo=True)) x opset:

  1. export to a temporary directory: input "input" [N,3,224,224] (N dynamic), output
     "logits"; write the sidecar <stem>.toml (ImageNet mean/std, RGB, NCHW) beside it;
  2. reference: pytorch-grad-cam 1.5.7 GradCAM on the default layer of the architecture
     (resnet: layer4[-1]; vgg: features[-1]; densenet: see below; mobilenet / efficientnet /
     convnext: features[-1]), top-1 targets, the four stills as one batch, preprocessed like
     gradcamd (cv2.imread -> cv2.resize(224x224, INTER_LINEAR) of the whole image -> BGR->RGB ->
     (x - mean) / std -> NCHW float32); computed once per architecture, in float32;
  3. gradcamd: `gradcamd inspect M.onnx` (target tensor) and
     `gradcamd explain IMG... --model M.onnx --json J.json --save-tensors DIR --batch-size 4`;
  4. compare per image: max |dA_gradcamd - dA_ref| / max |dA_ref|, Pearson correlation of the
     Grad-CAM maps after ReLU at feature resolution (gradcamd's cam_raw vs relu(sum_k
     mean(dA_k) A_k) of the reference), top-1 class; the row shows the worst image;
  5. delete the model.

DenseNet: torchvision's forward applies F.relu(features, inplace=True) after norm5 =
features[-1], the layer pytorch-grad-cam users hook. The in-place ReLU rewrites the stored
activation (on CPU), while the gradient hook reports d/d(norm5 output): pytorch-grad-cam then
mixes relu(z) with dL/dz (see tests/fixtures/heads/README.md). The densenet rows compare
gradcamd with the mathematically correct Grad-CAM at the ReLU output (the input of the ONNX
GlobalAveragePool, hooked here by hand), and the note gives the CAM correlation with the
unmodified pytorch-grad-cam too.

Prints a Markdown table and writes it to OUT/table.md, with all numbers in OUT/results.json.

Run (from the repo root; needs target/release/gradcamd, the stills from `make setup`):
  /tmp/pyenv/venv/bin/python tools/conformance.py [--quick] [--out out/conformance]
  --quick: resnet18 and mobilenet_v3_small, legacy exporter, opset 17 only.
Dev-time only (torch, torchvision, onnx, onnxscript for dynamo, grad-cam, opencv-python).
"""

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import cv2
import numpy as np
import onnx
import torch
import torch.nn.functional as F
import torchvision

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ARCHS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vgg16",
         "densenet121", "convnext_tiny"]
EXPORTERS = ["legacy", "dynamo"]
OPSETS = [13, 17, 18]
STILLS = [".deps/media/chelsea.png", ".deps/media/coffee.png", ".deps/media/astronaut.png",
          ".deps/media/rocket.jpg"]
SIZE = 224
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
SIDECAR = """[input]
name = "input"
width = 224
height = 224
color = "rgb"
layout = "nchw"
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]
[output]
logits = "logits"
"""


def default_layer(arch, model):
    """pytorch-grad-cam's usual target layer for the architecture."""
    if arch.startswith("resnet"):
        return model.layer4[-1]
    return model.features[-1]


def load_images():
    xs = []
    for rel in STILLS:
        img = cv2.imread(os.path.join(REPO, rel), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read {rel}: run `make setup` first")
        rgb = cv2.cvtColor(cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        x = (rgb.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
        xs.append(x.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(xs).astype(np.float32))


def grad_cam(A, dA):
    """Grad-CAM after ReLU at feature resolution: [B,h,w]."""
    return np.maximum((dA.mean((2, 3))[:, :, None, None] * A).sum(1), 0)


def reference(arch, model, x):
    """pytorch-grad-cam on the default layer; for densenet also the correct reference."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    xt = torch.from_numpy(x)
    with torch.no_grad():
        logits = model(xt).numpy()
    top1 = logits.argmax(1)
    srt = np.sort(logits, 1)
    layer = default_layer(arch, model)
    cam = GradCAM(model=model, target_layers=[layer])
    cam(input_tensor=xt, targets=[ClassifierOutputTarget(int(c)) for c in top1])
    A = cam.activations_and_grads.activations[0].numpy().copy()
    dA = cam.activations_and_grads.gradients[0].numpy().copy()
    pgc_cam = np.maximum(cam.get_cam_image(xt, layer, None, A, dA, False), 0)
    cam.activations_and_grads.release()
    ref = dict(logits=logits, top1=top1, gap=srt[:, -1] - srt[:, -2], A=A, dA=dA, cam=pgc_cam,
               pgc_cam=pgc_cam, layer="layer4[-1]" if arch.startswith("resnet") else "features[-1]")
    if arch.startswith("densenet"):
        z = model.features(xt.clone())
        r = F.relu(z)
        r.retain_grad()
        out = model.classifier(torch.flatten(F.adaptive_avg_pool2d(r, (1, 1)), 1))
        out.gather(1, torch.from_numpy(top1)[:, None]).sum().backward()
        rA, rdA = r.detach().numpy(), r.grad.numpy()
        ref.update(A=rA, dA=rdA, cam=grad_cam(rA, rdA), layer="relu(features(x)) (hooked by hand)")
        model.zero_grad(set_to_none=True)
    return ref


def export(model, path, exporter, opset):
    """Returns (actual opset, message)."""
    # batch 2: with an example batch of 1, torch.export specializes the batch dim and fails
    # ("Invalid ranges [2:1]") for some models (convnext_tiny)
    x = torch.randn(2, 3, SIZE, SIZE)
    common = dict(input_names=["input"], output_names=["logits"], opset_version=opset)
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), path, dynamo=False,
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, **common)
        else:
            prog = torch.onnx.export(model, (x,), dynamo=True, external_data=False,
                                     dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=1024)}}, **common)
            prog.save(path, external_data=False)
    m = onnx.load(path, load_external_data=False)
    actual = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    why = next((ln.strip() for ln in log.getvalue().splitlines() if ln.startswith("RuntimeError")), "")
    if "adapt: " in why:  # "RuntimeError: /project/onnx/version_converter/adapters/<file>.h:55: adapt: ..."
        why = "onnx version converter: " + why.split("adapt: ", 1)[1]
    return actual, why


def export_error(e):
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    msg = f"{type(e).__name__}: {lines[0][:200] if lines else ''}"
    if "## Exception summary" in lines:  # torch.onnx's dynamo report
        i = lines.index("## Exception summary")
        msg += " " + " ".join(lines[i + 1:i + 2])[:300]
    return msg.replace("\x1b[96m", "").replace("\x1b[0m", "")


def run(cmd, timeout):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def first_error(stderr):
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return " ".join((errs or lines or ["(no message)"])[:3])[:1500]


def corr(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def compare(arch, ref, gdir, jpath):
    with open(jpath) as f:
        items = json.load(f)
    res = dict(dA_rel=[], A_rel=[], corr=[], corr_pgc=[], top1=[], notes=[])
    for i, (rel, it) in enumerate(zip(STILLS, items)):
        stem = os.path.splitext(os.path.basename(rel))[0]
        g_top1 = int(it["top5"][0]["index"]) if it.get("top5") else int(it["target"]["index"])
        res["top1"].append(g_top1 == int(ref["top1"][i]))
        if g_top1 != int(ref["top1"][i]):
            res["notes"].append(f"{stem}: top-1 {g_top1} vs {int(ref['top1'][i])} (torch top1-top2 gap "
                                f"{ref['gap'][i]:.2g})")
        g_cam = np.asarray(it["cam_raw"], np.float64)
        if g_cam.shape != ref["cam"][i].shape:
            res["notes"].append(f"{stem}: cam shape {list(g_cam.shape)} vs {list(ref['cam'][i].shape)}")
            res["corr"].append(float("nan"))
        else:
            res["corr"].append(corr(g_cam, ref["cam"][i]))
            res["corr_pgc"].append(corr(g_cam, ref["pgc_cam"][i]))
        pa, pd = os.path.join(gdir, f"{stem}_A.npy"), os.path.join(gdir, f"{stem}_dA.npy")
        if os.path.exists(pd):
            gA, gdA = np.load(pa), np.load(pd)
            if gdA.shape != ref["dA"][i].shape:
                res["notes"].append(f"{stem}: dA shape {list(gdA.shape)} vs {list(ref['dA'][i].shape)}")
            else:
                res["dA_rel"].append(float(np.abs(gdA - ref["dA"][i]).max() / np.abs(ref["dA"][i]).max()))
                res["A_rel"].append(float(np.abs(gA - ref["A"][i]).max() / np.abs(ref["A"][i]).max()))
        elif not any("no --save-tensors" in n for n in res["notes"]):
            res["notes"].append("no --save-tensors output")
    return res


def fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="resnet18 + mobilenet_v3_small, legacy, opset 17")
    ap.add_argument("--out", default="out/conformance")
    ap.add_argument("--gradcamd", default="target/release/gradcamd")
    ap.add_argument("--archs", default="", help="comma-separated subset of " + ",".join(ARCHS))
    ap.add_argument("--exporters", default="", help="comma-separated subset of legacy,dynamo")
    ap.add_argument("--opsets", default="", help="comma-separated subset of 13,17,18")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per gradcamd call")
    ap.add_argument("--keep", action="store_true", help="keep the exported models in OUT/models")
    args = ap.parse_args()

    os.chdir(REPO)
    archs, exporters, opsets = ARCHS, EXPORTERS, OPSETS
    if args.quick:
        archs, exporters, opsets = ["resnet18", "mobilenet_v3_small"], ["legacy"], [17]
    if args.archs:
        archs = args.archs.split(",")
    if args.exporters:
        exporters = args.exporters.split(",")
    if args.opsets:
        opsets = [int(o) for o in args.opsets.split(",")]
    gradcamd = os.path.abspath(args.gradcamd)
    if not os.path.exists(gradcamd):
        raise SystemExit(f"{gradcamd} not found: cargo build --release")
    h = run([gradcamd, "explain", "--help"], 60)[1]
    has_save = "--save-tensors" in h
    if not has_save:
        print("WARNING: this gradcamd has no --save-tensors: comparing CAMs and top-1 only", flush=True)
    os.makedirs(args.out, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_grad_enabled(True)
    x = load_images()
    imgs = [os.path.join(REPO, s) for s in STILLS]
    tmp_root = tempfile.mkdtemp(prefix="gradcamd-conformance-")
    rows = []
    t_start = time.time()
    hdr = ("| architecture | exporter | opset | batch | max abs diff dA (rel) | CAM correlation | top-1 match | note |\n"
           "|---|---|---|---|---|---|---|---|")
    print(hdr, flush=True)

    def emit(row):
        rows.append(row)
        row["note"] = row["note"].replace("|", "\\|")
        line = (f"| {row['arch']} | {row['exporter']} | {row['opset']} | {row['batch']} | "
                f"{fmt(row.get('dA_rel'), '.1e')} | {fmt(row.get('corr'), '.8f')} | {row.get('top1', 'n/a')} | "
                f"{row['note']} |")
        row["line"] = line
        print(line, flush=True)
        write_outputs(args.out, hdr, rows, t_start, args.quick)

    try:
        for arch in archs:
            torch.manual_seed(0)
            model = getattr(torchvision.models, arch)(weights=None).eval()
            t0 = time.time()
            ref = reference(arch, model, x)
            t_ref = time.time() - t0
            for exporter in exporters:
                for opset in opsets:
                    row = dict(arch=arch, exporter=exporter, opset=opset, batch=len(STILLS), note="")
                    stem = f"{arch}_{exporter}_op{opset}"
                    d = os.path.join(tmp_root, stem)
                    os.makedirs(d, exist_ok=True)
                    mpath = os.path.join(d, stem + ".onnx")
                    notes = []
                    try:
                        t0 = time.time()
                        try:
                            actual, why = export(model, mpath, exporter, opset)
                        except Exception as e:  # noqa: BLE001
                            row["note"] = "export failed: " + export_error(e)
                            emit(row)
                            continue
                        t_exp = time.time() - t0
                        if actual != opset:
                            row["note"] = (f"not run: the {exporter} exporter wrote opset {actual} instead of {opset} "
                                           f"(automatic version conversion failed: {why or 'no message'})")
                            emit(row)
                            continue
                        with open(os.path.join(d, stem + ".toml"), "w") as f:
                            f.write(SIDECAR)
                        rc, out, err = run([gradcamd, "inspect", mpath], args.timeout)
                        target = next((ln.split()[1] for ln in out.splitlines()
                                       if ln.startswith("target") and len(ln.split()) > 1), None)
                        row["target"] = target
                        if rc != 0:
                            notes.append(f"inspect failed (rc {rc}): {first_error(err)}")
                        jpath, tdir = os.path.join(d, "explain.json"), os.path.join(d, "tensors")
                        cmd = [gradcamd, "explain", *imgs, "--model", mpath, "--json", jpath, "--batch-size",
                               str(len(imgs))] + (["--save-tensors", tdir] if has_save else [])
                        t0 = time.time()
                        rc, out, err = run(cmd, args.timeout)
                        t_run = time.time() - t0
                        if rc != 0:
                            # the inspect error, if any, is the same one: keep explain's
                            row["note"] = f"gradcamd explain failed (rc {rc}): {first_error(err)}"
                            row["stderr"] = err[-4000:]
                            emit(row)
                            continue
                        c = compare(arch, ref, tdir, jpath)
                        row.update(dA_rel=max(c["dA_rel"]) if c["dA_rel"] else None,
                                   A_rel=max(c["A_rel"]) if c["A_rel"] else None,
                                   corr=min(c["corr"]), corr_each=c["corr"], dA_rel_each=c["dA_rel"],
                                   top1=f"{sum(c['top1'])}/{len(c['top1'])}",
                                   t_export=round(t_exp, 1), t_explain=round(t_run, 1), t_ref=round(t_ref, 1),
                                   torch_top1=[int(c) for c in ref["top1"]])
                        notes.append(f"target `{target}`, A rel diff {fmt(row['A_rel'], '.1e')}")
                        if arch.startswith("densenet"):
                            row["corr_pgc"] = min(c["corr_pgc"]) if c["corr_pgc"] else None
                            notes.append("reference: correct Grad-CAM at the ReLU output (hooked by hand); "
                                         "pytorch-grad-cam on features[-1] (norm5) mixes relu(z) (in-place ReLU "
                                         "rewrites its stored activation) with dL/dz (pre-ReLU gradient); CAM "
                                         f"correlation gradcamd vs unmodified pytorch-grad-cam: "
                                         f"{fmt(row['corr_pgc'], '.6f')}")
                        notes += c["notes"]
                        row["note"] = "; ".join(notes)
                        emit(row)
                    except Exception as e:  # noqa: BLE001
                        row["note"] = f"conformance script error: {type(e).__name__}: {e}"
                        row["traceback"] = traceback.format_exc()
                        emit(row)
                    finally:
                        if args.keep and os.path.exists(mpath):
                            os.makedirs(os.path.join(args.out, "models"), exist_ok=True)
                            for fn in os.listdir(d):
                                if fn.endswith((".onnx", ".toml")):
                                    shutil.move(os.path.join(d, fn), os.path.join(args.out, "models", fn))
                        shutil.rmtree(d, ignore_errors=True)
            del model, ref
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    print(f"\nwrote {os.path.join(args.out, 'table.md')} ({len(rows)} rows, {time.time() - t_start:.0f} s)")
    # exit 1 when gradcamd failed or disagreed; combinations the exporter cannot make do not count
    ran = [r for r in rows if not r["note"].startswith(("not run:", "export failed:"))]
    bad = [r for r in ran if r.get("corr") is None or r["corr"] < 0.999 or r.get("dA_rel") is None
           or r["dA_rel"] > 1e-4 or r.get("top1") != f"{len(STILLS)}/{len(STILLS)}"]
    return 1 if bad else 0


def write_outputs(out, hdr, rows, t_start, quick):
    meta = (f"gradcamd vs pytorch-grad-cam, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"onnx {onnx.__version__}; random weights (torch.manual_seed(0)); stills "
            f"{', '.join(os.path.basename(s) for s in STILLS)} as one batch; worst image per row; "
            f"{'--quick; ' if quick else ''}{time.time() - t_start:.0f} s so far.")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(meta + "\n\n" + hdr + "\n" + "\n".join(r["line"] for r in rows) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump([{k: v for k, v in r.items() if k != "line"} for r in rows], f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
