"""Make the faithfulness fixture for the default model from pytorch-grad-cam's metrics.

Makes:
  tests/fixtures/faithfulness_default.json   per still: the top-1 class, its softmax
                                             confidence, and pytorch-grad-cam's
                                             CamMultImageConfidenceChange, DropInConfidence,
                                             IncreaseInConfidence on the Grad-CAM map, and
                                             CamMultImageConfidenceChange with the inverted
                                             mask of the map's hottest tenth (the deletion
                                             probe gradcamd runs)

The maps are pytorch-grad-cam's GradCAM (targets=None) on the four stills, one batch,
target layer as tools/make_fixtures.py; the metrics' target is
ClassifierOutputSoftmaxTarget(top-1), so the figures are changes of softmax confidence,
what `gradcamd explain --faithfulness` and `faithfulness_every` report.

Deletion mask: k = ceil(0.1 * 224 * 224) pixels; the cut is the k-th largest value of the
map, and every pixel at or above it is deleted (set to 0 after normalization, the mean),
which is input * (1 - mask): CamMultImageConfidenceChange with cam = 1 - mask.

Run: .venv/bin/python tools/make_faithfulness_fixtures.py
Dev-time only; the Rust tests read the committed JSON.
"""

import json
import math
import os
import sys

import numpy as np
import torch

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lite0_common as lc  # noqa: E402

OUT = "tests/fixtures/faithfulness_default.json"
DELETE_SHARE = 0.1


def deletion_cam(cam):
    flat = np.sort(cam.ravel())[::-1]
    k = max(1, min(flat.size, math.ceil(flat.size * DELETE_SHARE)))
    cut = flat[k - 1]
    return (1.0 - (cam >= cut)).astype(np.float32)


def main():
    labels = lc.load_labels()
    stills = [lc.load_still(p) for p in lc.STILLS]
    x = torch.from_numpy(np.stack([s[1] for s in stills]))
    model = lc.load_model(split_head_act=True).eval()
    with torch.no_grad():
        logits = model(x).numpy()
    top1 = logits.argmax(axis=1)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in top1]
    with GradCAM(model=model, target_layers=[lc.target_layer(model)]) as cam:
        maps = cam(input_tensor=x, targets=None)
    change = CamMultImageConfidenceChange()(x, maps, targets, model)
    drop = DropInConfidence()(x, maps, targets, model)
    increase = IncreaseInConfidence()(x, maps, targets, model)
    deleted = np.stack([deletion_cam(m) for m in maps])
    deletion = CamMultImageConfidenceChange()(x, deleted, targets, model)
    cases = []
    for i, path in enumerate(lc.STILLS):
        c = int(top1[i])
        conf = float(lc.softmax(logits[i])[c])
        case = {
            "image": path,
            "class": c,
            "label": labels[c],
            "confidence": conf,
            "cam_mult": float(np.ravel(change[i])[0]),
            "drop_in_confidence": float(np.ravel(drop[i])[0]),
            "increase_in_confidence": float(np.ravel(increase[i])[0]),
            "deletion": float(np.ravel(deletion[i])[0]),
            "deleted_pixels": int((deleted[i] == 0).sum()),
        }
        cases.append(case)
        print(f"{path:28s} {labels[c]:24s} conf {conf:.6f} cam_mult {case['cam_mult']:+.6f} "
              f"deletion {case['deletion']:+.6f} ({case['deleted_pixels']} px)")
    doc = {
        "model": "models/efficientnet_lite0.onnx",
        "generator": "tools/make_faithfulness_fixtures.py",
        "method": "gradcam",
        "delete_share": DELETE_SHARE,
        "torch_version": torch.__version__,
        "cases": cases,
    }
    with open(lc.repo_path(OUT), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
