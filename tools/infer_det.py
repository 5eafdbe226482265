#!/usr/bin/env python
"""Run an EVA-02 detector on one image or a folder of images; save drawn predictions and a COCO json.

    .venv/bin/python tools/infer_det.py --config-file configs/demo/eva02_Ti_det.py \
        --weights output/demo_det/model_final.pth --input photos/ --output output/infer [--score-thresh 0.5] \
        [--device cpu] [--batch-size N] [--tta] [--use-ema] [--unsafe-pickle] [--allow-partial] \
        [--data JSON IMAGES] [key=value ...]

The inference tools' shared convention (eva02.common.cli): OUTPUT/NAME.png is the image with its predictions
drawn by detectron2's Visualizer; OUTPUT/results.json lists the images done (with their detection count) and the
unreadable ones (missing, not an image, truncated), which are skipped and make the exit status 1.
OUTPUT/predictions.json holds the detections in the COCO dataset layout: `images` (id, file_name, height,
width), `annotations` (image_id, category_id, bbox xywh, score, RLE segmentation, area), `categories`. Category
ids are the dataset's own (its `thing_dataset_id_to_contiguous_id`) or class index + 1; class names come from
the checkpoint (ours store them), else from the config's test dataset.
Every model weight must be in the checkpoint, and its class count must be the config's, unless --allow-partial.
--data JSON IMAGES: a model fine-tuned on your own data (tools/train_det.py --train-data): the class count and
names come from that COCO json (or give the run's saved config.yaml as --config-file). --tta: the config's
test-time augmentation (dataloader.tta). key=value are LazyConfig overrides (a key the config does not have is
an error). Runs on the CPU when no GPU exists.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eva02.common.cli import InferenceResults, add_inference_args, list_images, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

import cv2
import pycocotools.mask as mask_util
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from eva02.common.files import atomic_write
from eva02.det.config import load_config
from eva02.det.engine import setup_datasets
from eva02.det.evaluation import dataset_id_map, to_coco_results
from eva02.det.own_data import use_own_data
from eva02.det.predictor import DetPredictor, test_dataset_metadata


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_inference_args(parser)
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="drop detections below this score (sets every box predictor's test_score_thresh)")
    parser.add_argument("--use-ema", action="store_true", help="load the checkpoint's EMA weights (ema_state)")
    parser.add_argument("--data", nargs=2, metavar=("JSON", "IMAGES"),
                        help="the COCO-format data a fine-tuned model was trained on: its classes (eva02.det.own_data)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="LazyConfig overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="eva02")
    setup_logger(name="detectron2", abbrev_name="d2")
    images = list_images(args.input)
    cfg = load_config(args.config_file, args.overrides)
    if args.data:
        use_own_data(cfg.model, cfg.dataloader, None, args.data)
    setup_datasets(cfg)  # class names for drawing and the category ids of the json
    predictor = DetPredictor(cfg, args.weights, args.device, args.score_thresh, args.use_ema,
                          weights_only=not args.unsafe_pickle, allow_partial=args.allow_partial, tta=args.tta)
    metadata = test_dataset_metadata(cfg)
    ids = dataset_id_map(metadata) if metadata.get("thing_classes") == predictor.class_names else None
    class_to_id = ids or {i: i + 1 for i in range(len(predictor.class_names))}
    draw_metadata = Metadata(thing_classes=predictor.class_names)

    results = InferenceResults(args.output, args.config_file, args.weights)
    records, annotations = [], []
    batch = []

    def flush():
        found = predictor.predict([image for _, image in batch], batch_size=len(batch), format=predictor.input_format)
        for (path, image), detections in zip(batch, found):
            image_id = len(records) + 1
            records.append({"id": image_id, "file_name": str(path), "height": image.shape[0], "width": image.shape[1]})
            for result in to_coco_results(detections.instances, image_id, class_to_id):
                segmentation = result.get("segmentation")
                area = mask_util.area(segmentation) if segmentation else result["bbox"][2] * result["bbox"][3]
                annotations.append({"id": len(annotations) + 1, **result, "area": float(area)})
            rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
            visualizer = Visualizer(rgb, draw_metadata)
            name = results.name_for(path)
            cv2.imwrite(str(results.folder / f"{name}.png"),
                        visualizer.draw_instance_predictions(detections.instances).get_image()[:, :, ::-1])
            results.add(path, f"{name}.png", detections=len(detections))
        batch.clear()

    for path in tqdm(images, desc="detecting", unit="img"):
        try:
            batch.append((path, read_image(str(path), format=predictor.input_format)))
        except (OSError, ValueError, SyntaxError) as error:  # missing, truncated or not an image (PIL's errors)
            results.skip(path, f"{type(error).__name__}: {error}")
        if len(batch) == args.batch_size:
            flush()
    if batch:
        flush()

    categories = [{"id": class_to_id[i], "name": name} for i, name in enumerate(predictor.class_names)]
    atomic_write(results.folder / "predictions.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {"images": records, "annotations": annotations, "categories": categories})))
    return results.finish(f" ({len(annotations)} detections, score >= {args.score_thresh}; COCO json: "
                          "predictions.json)")


if __name__ == "__main__":
    sys.exit(run_tool(main))
