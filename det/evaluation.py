"""COCO results: model outputs as COCO result entries with the dataset's category ids, the test-dev server
submission (json + zip), and the evaluator a dataset asks for."""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances

from eva02.common.files import atomic_write

from .lvis import LVISEvaluator
from .unreadable import LeavesOutUnreadable

__all__ = ["COCOEvaluator", "SERVER_MAX_DETS_PER_IMAGE", "build_evaluator", "dataset_id_map", "to_coco_results",
           "top_per_image", "write_coco_results"]

logger = logging.getLogger(__name__)

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


class COCOEvaluator(LeavesOutUnreadable, D2COCOEvaluator):
    """detectron2's COCOEvaluator, leaving unreadable images out of the metric
    (eva02.det.unreadable.LeavesOutUnreadable)."""

    def _dataset_image_ids(self) -> list:
        return self._coco_api.getImgIds()

    def _evaluate_images(self, img_ids):
        return D2COCOEvaluator.evaluate(self, img_ids=img_ids)


def build_evaluator(dataset_name: str, output_dir: str):
    """The COCO evaluator, or the LVIS one for datasets whose evaluator_type is "lvis" (both eva02's: numpy-2
    safe, unreadable images left out and counted). Under DDP the predictions of every process are gathered and
    scored once, on the main process."""
    lvis = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "coco") == "lvis"
    return (LVISEvaluator if lvis else COCOEvaluator)(dataset_name, output_dir=output_dir)
