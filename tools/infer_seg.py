#!/usr/bin/env python
"""Segment images with a segmentor and save coloured overlays with a legend.

    python tools/infer_seg.py --config-file CONFIG --weights CHECKPOINT --input IMG_OR_DIR --output DIR \
        [--opacity 0.5] [--device cpu] [--allow-partial] [--unsafe-pickle]

CHECKPOINT: one of ours or a released official EVA-02 UperNet (read by eva02.seg.load_segmentor_checkpoint; a
model weight it leaves unloaded stops the run unless --allow-partial is given).
For every image, DIR/NAME.png holds the image blended with the prediction in the dataset palette and a legend
of the classes present; DIR/NAME_labels.png the raw label map (class index per pixel); DIR/results.json lists
what was segmented and the unreadable images (missing, not an image, or truncated: each file is decoded to its
last byte first), which are reported and skipped; the exit status is then 1 (eva02.backbone.cli's convention).
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from eva02.backbone.checkpoint import atomic_write
from eva02.backbone.cli import EXIT_OK, EXIT_PARTIAL, add_common_args, list_images, run_tool
from eva02.seg.datasets import unreadable_image
from eva02.seg.predictor import SegPredictor, overlay


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Segment images with an EVA-02 segmentor")
    add_common_args(p, "config", "weights", "input", "output", "device", "unsafe_pickle")
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the colour mask in the overlay")
    p.add_argument("--allow-partial", action="store_true", help="run even if the checkpoint leaves weights unloaded")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    images = list_images(args.input)
    predictor = SegPredictor(args.config_file, args.weights, args.device, weights_only=not args.unsafe_pickle,
                             strict=not args.allow_partial)
    print(predictor.load_summary)
    os.makedirs(args.output, exist_ok=True)
    failed, segmented = [], []
    for path in tqdm(images, desc="segmenting", unit="img"):
        problem = unreadable_image(str(path))  # cv2.imread alone would segment the part of a truncated file
        img = None if problem else cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            tqdm.write(f"skipping unreadable {problem or path}")
            failed.append(problem or str(path))
            continue
        labels = predictor(img)
        stem = osp.splitext(osp.basename(path))[0]
        cv2.imwrite(osp.join(args.output, f"{stem}.png"),
                    overlay(img, labels, predictor.palette, predictor.classes, args.opacity))
        cv2.imwrite(osp.join(args.output, f"{stem}_labels.png"),
                    labels.astype(np.uint16 if len(predictor.classes) > 255 else np.uint8))
        segmented.append({"file_name": str(path), "overlay": f"{stem}.png", "labels": f"{stem}_labels.png"})
    atomic_write(osp.join(args.output, "results.json"), lambda tmp: Path(tmp).write_text(json.dumps(
        {"segmented": segmented, "unreadable_images": len(failed), "unreadable_files": failed}, indent=1)))
    print(f"{len(segmented)} of {len(images)} images segmented, {len(failed)} unreadable -> {args.output}")
    if failed:
        print(f"{len(failed)} unreadable: {', '.join(failed)}", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
