"""Segment images with a trained segmentor and save coloured overlays with a legend.

    python tools/infer_seg.py CONFIG CHECKPOINT --input IMG_OR_DIR --output DIR [--opacity 0.5] [--device cpu]

For every image, DIR/NAME.png holds the image blended with the prediction in the dataset palette and a legend
of the classes present; DIR/NAME_labels.png the raw label map (class index per pixel). Unreadable images are
reported and skipped; the exit status is 1 if any image failed.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

import cv2
import numpy as np
from mmseg.apis import inference_model, init_model
from tqdm import tqdm

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Segment images with an EVA-02 segmentor")
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="folder for the overlays")
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the colour mask in the overlay")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def list_images(path: str) -> list[str]:
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        sys.exit(f"--input {path}: no such file or folder")
    files = sorted(osp.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        sys.exit(f"--input {path}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
    return files


def overlay(img: np.ndarray, labels: np.ndarray, palette: np.ndarray, classes: list[str], opacity: float) -> np.ndarray:
    """BGR image (H, W, 3) + label map (H, W) -> BGR overlay with a legend panel on the right (H', W + L, 3)."""
    color = palette[labels][..., ::-1]  # palette is RGB
    blend = (img * (1 - opacity) + color * opacity).astype(np.uint8)
    present = [int(c) for c in np.unique(labels)]
    row, pad = 22, 8
    width = 24 + max(cv2.getTextSize(classes[c], cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] for c in present) + 2 * pad
    height = max(blend.shape[0], pad * 2 + row * len(present))
    canvas = np.full((height, blend.shape[1] + width, 3), 255, np.uint8)
    canvas[: blend.shape[0], : blend.shape[1]] = blend
    x0 = blend.shape[1] + pad
    for i, c in enumerate(present):
        y = pad + i * row
        cv2.rectangle(canvas, (x0, y), (x0 + 16, y + 16), tuple(int(v) for v in palette[c][::-1]), -1)
        cv2.putText(canvas, classes[c], (x0 + 22, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            sys.exit(f"file not found: {path}")
    images = list_images(args.input)
    model = init_model(args.config, args.checkpoint, device=args.device)
    classes = list(model.dataset_meta["classes"])
    palette = np.asarray(model.dataset_meta["palette"], np.uint8)
    os.makedirs(args.output, exist_ok=True)
    failed = []
    for path in tqdm(images, desc="segmenting", unit="img"):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            tqdm.write(f"skipping {path}: not a readable image")
            failed.append(path)
            continue
        labels = inference_model(model, img).pred_sem_seg.data[0].cpu().numpy().astype(np.int64)
        stem = osp.splitext(osp.basename(path))[0]
        cv2.imwrite(osp.join(args.output, f"{stem}.png"), overlay(img, labels, palette, classes, args.opacity))
        cv2.imwrite(osp.join(args.output, f"{stem}_labels.png"), labels.astype(np.uint16 if len(classes) > 255 else np.uint8))
    print(f"{len(images) - len(failed)} of {len(images)} images segmented -> {args.output}")
    if failed:
        print(f"{len(failed)} unreadable: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
