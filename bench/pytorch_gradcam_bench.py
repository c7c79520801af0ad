"""Peer benchmark: the same job as `gradcamd` on a video file, done with
pytorch-grad-cam on CPU, for comparing throughput.

Per frame: decode (cv2.VideoCapture) -> resize the whole frame to 224x224
(INTER_LINEAR), BGR->RGB, (rgb - 127) / 128 -> GradCAM (pytorch-grad-cam, top-1
class, target = the head's ReLU6 output [N,1280,7,7], batches of --batch-size)
-> CAM (pytorch-grad-cam's normalized 224x224 map) resized to the frame size
(INTER_LINEAR) -> show_cam_on_image math (JET heat map, 0.5 * heat + 0.5 * frame,
divided by its max) -> label and score drawn with cv2.putText -> encoded with
cv2.VideoWriter ('mp4v') to --out.

Model: the EfficientNet-Lite0 torch model behind models/efficientnet_lite0.onnx
(tools/lite0_common.py, with the head's ReLU6 split off from the stem's).

Prints one JSON line:
  {"tool":"pytorch-grad-cam","video":...,"frames":N,"seconds":...,"fps":...,
   "batch_size":...,"threads":torch.get_num_threads()}
"seconds" covers decode + inference + CAM + overlay + encode, from the first
read to the writer's release; model loading and one warm-up GradCAM call on
a zero batch are not included.

Run (paths relative to the repo root):
  /tmp/pyenv/venv/bin/python bench/pytorch_gradcam_bench.py \
      --video .deps/media/bikes.mp4 --out out/bench_bikes_pgc.mp4 \
      [--batch-size 8] [--max-frames N] [--threads T]

Dev-time only; never part of gradcamd or `make test`.
"""

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import lite0_common as lc  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402


def overlay(frame_bgr, cam):
    """pytorch_grad_cam.utils.image.show_cam_on_image(frame/255, cam, use_rgb=False)."""
    heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET).astype(np.float32) / 255
    out = 0.5 * heat + 0.5 * (frame_bgr.astype(np.float32) / 255)
    out = out / np.max(out)
    return np.uint8(255 * out)


def draw_label(img, text):
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, img.shape[1] / 1000)
    thick = 1 if scale < 0.8 else 2
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    cv2.rectangle(img, (0, 0), (w + 8, h + base + 8), (0, 0, 0), -1)
    cv2.putText(img, text, (4, h + 4), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def process(cam, labels, frames, writer):
    x = torch.from_numpy(np.stack([lc.preprocess_bgr(f) for f in frames]))
    cams = cam(input_tensor=x, targets=None)  # [B,224,224], normalized to 0..1
    probs = torch.softmax(cam.outputs.detach(), dim=1)
    score, cls = probs.max(dim=1)
    for f, c224, k, p in zip(frames, cams, cls.tolist(), score.tolist()):
        h, w = f.shape[:2]
        out = overlay(f, cv2.resize(c224, (w, h), interpolation=cv2.INTER_LINEAR))
        draw_label(out, f"{labels[k].split(',')[0]} {p:.2f}")
        writer.write(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-frames", type=int, default=0, help="0 = all")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    labels = lc.load_labels()
    model = lc.load_model(split_head_act=True)
    cam = GradCAM(model=model, target_layers=[lc.target_layer(model)])

    # warm-up (not timed): first-call allocations and kernel selection
    cam(input_tensor=torch.zeros(args.batch_size, 3, lc.INPUT_SIZE, lc.INPUT_SIZE), targets=None)

    cap = cv2.VideoCapture(lc.repo_path(args.video))
    if not cap.isOpened():
        sys.exit(f"cannot open {args.video}")
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    out_path = lc.repo_path(args.out)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    writer = None

    n, batch = 0, []
    t0 = time.perf_counter()
    while not args.max_frames or n < args.max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (w, h))
            if not writer.isOpened():
                sys.exit(f"cannot write {args.out}")
        batch.append(frame)
        n += 1
        if len(batch) == args.batch_size:
            process(cam, labels, batch, writer)
            batch = []
    if batch:
        process(cam, labels, batch, writer)
    cap.release()
    if writer is not None:
        writer.release()
    seconds = time.perf_counter() - t0
    cam.activations_and_grads.release()

    print(json.dumps({"tool": "pytorch-grad-cam", "video": args.video, "frames": n,
                      "seconds": round(seconds, 3), "fps": round(n / seconds, 2) if seconds > 0 else None,
                      "batch_size": args.batch_size, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
