#!/usr/bin/env python
"""Run an EVA-02 detector on one image or a folder of images; save drawn predictions and a COCO json.

    .venv/bin/python tools/infer_det.py --config-file configs/demo/eva02_Ti_det.py \
        --weights output/demo_det/model_final.pth --input photos/ --output output/infer [--score-thresh 0.5] \
        [--device cpu] [--use-ema] [key=value ...]

Writes DIR/<image stem>.png (the image with its predictions drawn by detectron2's Visualizer) and
DIR/predictions.json in the COCO dataset layout: `images` (id, file_name, height, width), `annotations`
(image_id, category_id, bbox xywh, score, RLE segmentation, area), `categories`, plus `failed` (file, error).
Category ids are the dataset's own (its `thing_dataset_id_to_contiguous_id`) or class index + 1.
A missing or unreadable image is reported and skipped; the summary says how many failed and the exit status
is 1 only when no image could be processed. key=value are LazyConfig overrides (e.g.
`model.roi_heads.nms_method=soft_linear`). Runs on the CPU when no GPU exists.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import detectron2.data.transforms as T
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from eva02.backbone.checkpoint import atomic_write
from eva02.det.checkpoint import load_detector_weights
from eva02.det.engine import setup_datasets
from eva02.det.evaluation import dataset_id_map, to_coco_results

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
logger = logging.getLogger("eva02.infer")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="detector LazyConfig (.py)")
    parser.add_argument("--weights", required=True, help="detector checkpoint (ours or an official release)")
    parser.add_argument("--input", required=True, help="an image, or a folder of images (not recursive)")
    parser.add_argument("--output", required=True, help="folder for the drawn images and predictions.json")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="drop detections below this score (sets every box predictor's test_score_thresh)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--use-ema", action="store_true", help="load the checkpoint's EMA weights (ema_state)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value LazyConfig overrides")
    return parser.parse_args(argv)


def list_images(path: Path) -> list[Path]:
    """The image itself, or the image files of a folder (by extension, sorted; broken links included so that
    they are reported as missing)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such image or folder")
    return [path]


class Predictor:
    """The config's model in eval mode with its weights and its test-time resize; call with an image."""

    def __init__(self, cfg, weights: str, device: str, score_thresh: float, use_ema: bool):
        self.model = instantiate(cfg.model).to(device).eval()
        incompatible = load_detector_weights(self.model, weights, use_ema=use_ema)
        if incompatible is not None and incompatible.missing_keys:
            logger.warning(f"{weights}: {len(incompatible.missing_keys)} model weights missing "
                           f"(e.g. {incompatible.missing_keys[:3]}): predictions use their initial values")
        for module in self.model.modules():
            if isinstance(module, FastRCNNOutputLayers):
                module.test_score_thresh = score_thresh
        self.augmentations = T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))
        self.input_format = self.model.input_format
        self.device = device

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        """image (H, W, 3) uint8 in the model's input_format -> detectron2 Instances at image size, on the CPU."""
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1)).to(self.device)
        return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")


def test_dataset_metadata(cfg):
    names = cfg.dataloader.test.dataset.names
    return MetadataCatalog.get(names if isinstance(names, str) else names[0])


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="eva02")
    setup_logger(name="detectron2", abbrev_name="d2")
    images = list_images(Path(args.input))
    if not images:
        logger.error(f"--input {args.input}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
        return 1
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    setup_datasets(cfg)  # class names for drawing and the category ids of the json
    metadata = test_dataset_metadata(cfg)
    predictor = Predictor(cfg, args.weights, args.device, args.score_thresh, args.use_ema)
    num_classes = predictor.model.roi_heads.num_classes
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
    return 0 if records else 1


if __name__ == "__main__":
    sys.exit(main())
