#!/usr/bin/env python
"""Run an EVA-02 detector on one image or a folder of images; save drawn predictions and a COCO json.

    .venv/bin/python tools/infer_det.py --config-file configs/demo/eva02_Ti_det.py \
        --weights output/demo_det/model_final.pth --input photos/ --output output/infer [--score-thresh 0.5] \
        [--device cpu] [--use-ema] [--unsafe-pickle] [--allow-partial] [key=value ...]

Writes DIR/<image stem>.png (the image with its predictions drawn by detectron2's Visualizer) and
DIR/predictions.json in the COCO dataset layout: `images` (id, file_name, height, width), `annotations`
(image_id, category_id, bbox xywh, score, RLE segmentation, area), `categories`, plus `failed` (file, error).
Category ids are the dataset's own (its `thing_dataset_id_to_contiguous_id`) or class index + 1.
A missing or unreadable image is reported and skipped; the summary says how many failed, and the exit status
is then 1 (eva02.backbone.cli's convention). Every model weight must be in the checkpoint, and its class count
must be the config's, unless --allow-partial. key=value are LazyConfig overrides (e.g.
`model.roi_heads.nms_method=soft_linear`; a key the config does not have is an error). Runs on the CPU when no
GPU exists.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import pycocotools.mask as mask_util
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from eva02.backbone.checkpoint import atomic_write
from eva02.backbone.cli import EXIT_OK, EXIT_PARTIAL, UsageError, add_common_args, list_images, run_tool
from eva02.det.config import load_config
from eva02.det.engine import setup_datasets
from eva02.det.evaluation import dataset_id_map, to_coco_results
from eva02.det.predictor import Predictor, test_dataset_metadata

logger = logging.getLogger("eva02.infer")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, "config", "weights", "input", "output", "device", "unsafe_pickle")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="drop detections below this score (sets every box predictor's test_score_thresh)")
    parser.add_argument("--use-ema", action="store_true", help="load the checkpoint's EMA weights (ema_state)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="run even if the checkpoint leaves model weights at their initial values")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="LazyConfig overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="eva02")
    setup_logger(name="detectron2", abbrev_name="d2")
    images = list_images(args.input)
    cfg = load_config(args.config_file, args.overrides)
    setup_datasets(cfg)  # class names for drawing and the category ids of the json
    metadata = test_dataset_metadata(cfg)
    num_classes = cfg.model.roi_heads.num_classes
    if len(metadata.get("thing_classes", [None] * num_classes)) != num_classes:
        raise UsageError(f"{args.config_file}: model.roi_heads.num_classes={num_classes} but its test dataset "
                         f"{metadata.name} has {len(metadata.thing_classes)} classes; set one to the other")
    predictor = Predictor(cfg, args.weights, args.device, args.score_thresh, args.use_ema,
                          weights_only=not args.unsafe_pickle, allow_partial=args.allow_partial)
    class_to_id = dataset_id_map(metadata) or {i: i + 1 for i in range(num_classes)}
    class_names = metadata.get("thing_classes", [str(i) for i in range(num_classes)])

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    records, annotations, failed, drawn_names = [], [], [], set()
    for image_id, path in enumerate(tqdm(images, desc="infer", unit="img"), start=1):
        try:
            image = read_image(str(path), format=predictor.input_format)
        except (OSError, ValueError, SyntaxError) as error:  # missing, truncated or not an image (PIL's errors)
            tqdm.write(f"skipped {path}: {type(error).__name__}: {error}")
            failed.append({"file_name": str(path), "error": f"{type(error).__name__}: {error}"})
            continue
        instances = predictor(image)
        records.append({"id": image_id, "file_name": str(path), "height": image.shape[0], "width": image.shape[1]})
        for result in to_coco_results(instances, image_id, class_to_id):
            segmentation = result.get("segmentation")
            area = mask_util.area(segmentation) if segmentation else result["bbox"][2] * result["bbox"][3]
            annotations.append({"id": len(annotations) + 1, **result, "area": float(area)})
        rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
        drawn = Visualizer(rgb, metadata).draw_instance_predictions(instances).get_image()
        name = path.stem if path.stem not in drawn_names else f"{path.stem}_{image_id}"
        drawn_names.add(name)
        cv2.imwrite(str(out / f"{name}.png"), drawn[:, :, ::-1])

    categories = [{"id": class_to_id[i], "name": class_names[i]} for i in range(num_classes)]
    json_path = out / "predictions.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(
        {"images": records, "annotations": annotations, "categories": categories, "failed": failed})))
    print(f"{len(records)} of {len(images)} images processed, {len(failed)} failed, {len(annotations)} detections "
          f"(score >= {args.score_thresh}); drawn images and {json_path} in {out}")
    for failure in failed:
        print(f"  failed: {failure['file_name']} ({failure['error']})")
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
