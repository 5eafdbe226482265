#!/usr/bin/env python
"""Segment images with a segmentor and save coloured overlays with a legend.

    python tools/infer_seg.py --config-file CONFIG --weights CHECKPOINT --input IMG_OR_DIR --output DIR \
        [--data DATA] [--batch-size N] [--tta] [--opacity 0.5] [--device cpu] [--allow-partial] [--unsafe-pickle] \
        [KEY=VALUE ...]

The inference convention of eva02.common.cli. CHECKPOINT: one of ours or a released official EVA-02 UperNet
(read by eva02.seg.load_segmentor_checkpoint; a model weight it leaves unloaded stops the run unless
--allow-partial is given). --data DATA: a model trained on your own data (tools/train_seg.py --data): the heads
are sized for, and the legend names, the classes of DATA/classes.txt (the image folders are not needed).
--tta: the config's multi-scale + flip test-time augmentation; --batch-size: images per forward pass.
For every image NAME.ext, DIR/NAME.png holds the image blended with the prediction in the class palette and a
legend of the classes present, DIR/NAME_labels.png the raw label map (class index per pixel), and
DIR/results.json lists them ("images": file_name, drawn, labels) and the unreadable images (missing, not an
image, or truncated: each file is decoded to its last byte first), which are reported and skipped; the exit
status is then 1. KEY=VALUE: config overrides, as tools/test_seg.py takes them (e.g.
model.test_cfg.mode=slide); a key the config does not have is an error naming the closest one.
"""
from __future__ import annotations

import argparse
import sys

from eva02.common.cli import InferenceResults, add_inference_args, list_images, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

import cv2
import numpy as np
from tqdm import tqdm

from eva02.seg.datasets import unreadable_image
from eva02.seg.predictor import SegPredictor, overlay
from eva02.seg.run import read_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Segment images with an EVA-02 segmentor")
    add_inference_args(p)
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the colour mask in the overlay")
    p.add_argument("--data", metavar="DIR", help="own data the model was trained on: classes from DIR/classes.txt")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    images = list_images(args.input)
    cfg = read_config(args.config_file, args.overrides, args.data)  # own data: classes from DATA/classes.txt
    predictor = SegPredictor(cfg, args.weights, args.device, weights_only=not args.unsafe_pickle,
                             strict=not args.allow_partial, tta=args.tta)
    print(predictor.load_summary)
    results = InferenceResults(args.output, args.config_file, args.weights)
    dtype = np.uint16 if len(predictor.classes) > 255 else np.uint8

    def flush(batch: list) -> None:
        if not batch:
            return
        for (path, img), labels in zip(batch, predictor.predict([img for _, img in batch], len(batch))):
            name = results.name_for(path)
            cv2.imwrite(str(results.folder / f"{name}.png"),
                        overlay(img, labels, predictor.palette, predictor.classes, args.opacity))
            cv2.imwrite(str(results.folder / f"{name}_labels.png"), labels.astype(dtype))
            results.add(path, f"{name}.png", labels=f"{name}_labels.png")
        batch.clear()

    batch: list = []
    for path in tqdm(images, desc="segmenting", unit="img"):
        problem = unreadable_image(str(path))  # cv2.imread alone would segment the part of a truncated file
        img = None if problem else cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            reason = problem[len(str(path)):].strip()[1:-1] if problem else "cv2 cannot decode it"
            results.skip(path, reason)
            continue
        batch.append((path, img))
        if len(batch) == args.batch_size:
            flush(batch)
    flush(batch)
    return results.finish(f" (batch size {args.batch_size}{', TTA' if args.tta else ''})")


if __name__ == "__main__":
    sys.exit(run_tool(main))
