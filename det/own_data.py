"""Your own detection data: annotations + image folder for training and one for validation, on any of our
detection configs, without code. The annotations are a COCO-format json, or YOLO / Pascal VOC / LabelMe / CVAT
files, converted to a COCO json in the run folder first (prepare_own_data, eva02.common.formats).

    tools/train_det.py --config-file configs/coco/eva02_B_bsl.py --weights W.pth \
        --train-data train.json train_images/ --val-data val.json val_images/

or, in a config of your own that inherits one of ours (tools/train_det.py --config-file my_config.py):

    from detectron2.config import LazyConfig
    from eva02.det.own_data import use_own_data
    globals().update(LazyConfig.load("configs/coco/eva02_B_bsl.py"))   # model, dataloader, optimizer, train, ...
    use_own_data(model, dataloader, ("train.json", "train_images"), ("val.json", "val_images"))

Data without masks (boxes only, e.g. YOLO or VOC boxes) trains and evaluates boxes: the mask branch is left out.
The class names and their number come from the training json's `categories` (sorted by id, as detectron2
reads them); the validation json must list the same. The datasets are registered as `own_train` / `own_val`
when the run starts (the config's `dataloader.setup`), so the saved `config.yaml` of the run evaluates and
predicts on the same data again. The class-specific head layers are re-laid when the starting checkpoint was
trained for other classes (eva02.det.checkpoint; reported in the log).

What is checked, before anything trains (`check_coco_json`), each problem named by file, annotation id and
image:
  - an annotation whose category_id is not in `categories`, or whose image_id names no image: error;
  - a box that is not 4 finite numbers, or has zero width / height; a polygon with an odd number of
    coordinates, fewer than 3 points or non-finite values: in the training json the annotation is dropped and
    counted in one warning; in the validation json (the ground truth you are scored against, which we do not
    change silently) an error;
  - image files are checked when training starts (eva02.det.data.check_training_dataset: a missing file stops
    the run; an undecodable one is skipped by name when met).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from detectron2.config import LazyCall as L
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from eva02.common.cli import UsageError

from .checkpoint import stored_classes
from .evaluation import COCOEvaluator

__all__ = ["OWN_TRAIN", "OWN_VAL", "CocoJsonReport", "check_coco_json", "read_classes", "register_own_data",
           "use_own_data", "prepare_own_data", "mask_kinds", "OwnFedLossClassWeights"]

logger = logging.getLogger(__name__)
OWN_TRAIN, OWN_VAL = "own_train", "own_val"


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such annotation file (a COCO-format json is expected)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not a readable json ({error})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UsageError(f"{path}: no '{key}' list; a COCO-format json has 'images', 'annotations', 'categories'")
    return data


def _categories(data: dict, path: str) -> list[dict]:
    categories = sorted(data["categories"], key=lambda c: c.get("id", -1))
    for c in categories:
        if not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise UsageError(f"{path}: category {c} needs an integer 'id' and a string 'name'")
    if not categories:
        raise UsageError(f"{path}: 'categories' is empty")
    names = [c["name"] for c in categories]
    if len(set(names)) < len(names) or len({c["id"] for c in categories}) < len(categories):
        raise UsageError(f"{path}: category ids and names must be unique")
    return categories


def read_classes(json_file: str) -> list[str]:
    """Class names of a COCO-format json, in category-id order (detectron2's contiguous class order)."""
    return [c["name"] for c in _categories(_read_json(json_file), json_file)]


def _box_problem(bbox) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return f"bbox {bbox!r} is not [x, y, width, height]"
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox {bbox} is not finite"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox {bbox} has zero area"
    return None


def _polygon_problem(segmentation) -> str | None:
    if segmentation is None or segmentation == [] or isinstance(segmentation, dict):
        return None  # no mask (CVAT's COCO export writes [] for a box), or RLE (pycocotools checks it)
    if not isinstance(segmentation, list) or not segmentation:
        return f"segmentation {str(segmentation)[:40]} is neither polygons nor RLE"
    for poly in segmentation:
        if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
            return f"polygon {str(poly)[:40]} is not a list of numbers"
        if len(poly) % 2 or len(poly) < 6:
            return f"polygon of {len(poly)} coordinates (needs an even count, 3 points or more)"
        if not all(math.isfinite(v) for v in poly):
            return "polygon with non-finite coordinates"
    return None


@dataclass
class CocoJsonReport:
    """What check_coco_json found: the class names, and the annotations to leave out (id -> problem)."""

    classes: list[str]
    category_ids: list[int]
    bad: dict = field(default_factory=dict)


def check_coco_json(json_file: str, split: str) -> CocoJsonReport:
    """The checks of the module docstring on one json; split "train" drops bad annotations (returned in
    `bad`, warned once), "val" makes them an error. UsageError names file, annotation id and image."""
    data = _read_json(json_file)
    categories = _categories(data, json_file)
    category_ids = {c["id"] for c in categories}
    images = {img.get("id"): img for img in data["images"]}
    for img in data["images"]:
        if "file_name" not in img or "id" not in img:
            raise UsageError(f"{json_file}: image entry {str(img)[:80]} needs 'id' and 'file_name'")
    bad = {}
    for index, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", f"#{index}")
        if ann.get("category_id") not in category_ids:
            raise UsageError(f"{json_file}: annotation {ann_id} has category_id {ann.get('category_id')!r}, which "
                             f"'categories' does not list (ids {sorted(category_ids)[:10]}...)")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise UsageError(f"{json_file}: annotation {ann_id} has image_id {ann.get('image_id')!r}, which "
                             "'images' does not list")
        problem = _box_problem(ann.get("bbox")) or _polygon_problem(ann.get("segmentation"))
        if problem:
            bad[ann_id] = f"{problem} (image {image['file_name']})"
    if bad:
        listed = "; ".join(f"annotation {k}: {v}" for k, v in list(bad.items())[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        if split == "val":
            raise UsageError(f"{json_file}: {len(bad)} broken ground-truth annotations ({listed}{more}); fix or "
                             "remove them (a validation set is not changed silently)")
        if any(isinstance(k, str) for k in bad):
            raise UsageError(f"{json_file}: annotations without an 'id' are broken ({listed}); give every "
                             "annotation an id")
        logger.warning(f"{json_file}: {len(bad)} of {len(data['annotations'])} annotations left out of training "
                       f"({listed}{more})")
    return CocoJsonReport([c["name"] for c in categories], sorted(category_ids), bad)


def _load(json_file: str, image_root: str, name: str, bad: dict) -> list[dict]:
    records = load_coco_json(json_file, image_root, name, extra_annotation_keys=["id"])
    for record in records:
        record["annotations"] = [a for a in record.get("annotations", []) if a.get("id") not in bad]
    return records


def register_own_data(train: tuple[str, str] | None, val: tuple[str, str], prefix: str = "own") -> list[str]:
    """Check the jsons (check_coco_json) and register `{prefix}_train` (unless train is None) and `{prefix}_val`,
    replacing earlier registrations. train, val: (json file, image folder). Returns the names registered."""
    names, reports = [], {}
    for split, pair in (("train", train), ("val", val)):
        if pair is None:
            continue
        json_file, image_root = pair
        if not os.path.isdir(image_root):
            raise UsageError(f"{image_root}: no such image folder ({split} images of {json_file})")
        reports[split] = report = check_coco_json(json_file, split)
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda j=json_file, r=image_root, n=name, b=report.bad: _load(j, r, n, b))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                      thing_classes=report.classes)
        names.append(name)
    if train is not None and (reports["train"].category_ids, reports["train"].classes) != \
            (reports["val"].category_ids, reports["val"].classes):
        raise UsageError(f"{train[0]} and {val[0]} list different categories ({reports['train'].classes} vs "
                         f"{reports['val'].classes}); both must have the same ids and names")
    return names


class OwnFedLossClassWeights:
    """Federated-loss class weights (the LVIS configs') from your training json: image count per class ** power."""

    def __init__(self, json_file: str, power: float = 0.5):
        self.json_file, self.power = json_file, power

    def __call__(self) -> torch.Tensor:
        data = _read_json(self.json_file)
        ids = [c["id"] for c in _categories(data, self.json_file)]
        images = {cid: set() for cid in ids}
        for ann in data["annotations"]:
            images[ann["category_id"]].add(ann["image_id"])
        return torch.tensor([max(len(images[cid]), 1) for cid in ids], dtype=torch.float32) ** self.power


def prepare_own_data(train: tuple[str, str] | None, val: tuple[str, str], out_dir: str, fmt: str | None = None,
                     checkpoint: str | None = None,
                     weights_only: bool = True) -> tuple[tuple[str, str] | None, tuple[str, str], list[str]]:
    """The (COCO json, image folder) pairs for use_own_data from data in any format of eva02.common.formats: a
    COCO json stays as it is; other formats are converted into OUT_DIR/own_data/{train,val}.json on the main
    process while the others wait. The validation set takes the training set's class list; without a training
    set, the class list stored in `checkpoint` (the one evaluated), read only when a conversion needs it. fmt: the
    format of both, None to detect each. Returns the two pairs and one line per conversion for the log."""
    from detectron2.utils import comm

    from eva02.common.formats import convert_to_coco, detect_format

    pairs, notes, classes = {}, [], None
    for split, pair in (("train", train), ("val", val)):
        if pair is None:
            pairs[split] = None
            continue
        annotations, images = map(str, pair)
        kind = fmt or detect_format(annotations)
        if kind == "coco":
            pairs[split] = (annotations, images)
            continue
        out = os.path.join(out_dir, "own_data", f"{split}.json")
        if train is None and checkpoint:  # a checkpoint's classes order formats that state none (VOC, LabelMe)
            classes = stored_classes(checkpoint, weights_only)
        if comm.is_main_process():
            conversion = convert_to_coco(annotations, images, out, kind, classes=classes, split=split)
            notes.append(f"own data: {split} set {conversion.summary()}")
        comm.synchronize()
        pairs[split] = (out, os.path.abspath(images))
        classes = classes or read_classes(out)
    return pairs["train"], pairs["val"], notes


def mask_kinds(json_file: str) -> set[str]:
    """The kinds of mask the objects (not crowd regions) of a COCO json carry: "polygon", "rle"; empty: boxes."""
    return {("rle" if isinstance(a["segmentation"], dict) else "polygon") for a in _read_json(json_file)["annotations"]
            if a.get("segmentation") and not a.get("iscrowd", 0)}


def _boxes_only(model, dataloader) -> None:
    """No masks in the data: the ROI heads without their mask branch (and maskness rescoring), the training
    mapper without instance masks; evaluation then scores boxes only."""
    model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
    if "maskness_thresh" in model.roi_heads:
        model.roi_heads.maskness_thresh = None
    dataloader.train.mapper.update(use_instance_mask=False, recompute_boxes=False)


def use_own_data(model, dataloader, train: tuple[str, str] | None, val: tuple[str, str]) -> list[str]:
    """Point a detection config (its `model` and `dataloader` nodes) at your COCO-format data: datasets
    registered at run start, num_classes from the json (the training one; without one, for evaluation or
    inference only, the validation one), COCO evaluation (also for the LVIS configs, whose federated loss then
    weighs your classes by your image counts); without masks in the data, no mask branch (model.roi_heads.mask_head
    None); with RLE masks, bitmask training. train, val: (json file, image folder). Returns the class names."""
    train = tuple(map(str, train)) if train is not None else None
    val = tuple(map(str, val))
    classes = read_classes((train or val)[0])
    dataloader.setup = L(register_own_data)(train=train, val=val)
    if train is not None:
        dataloader.train.dataset.names = OWN_TRAIN
    dataloader.test.dataset.names = OWN_VAL
    dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
    model.roi_heads.num_classes = len(classes)
    masks = mask_kinds((train or val)[0])
    if not masks:
        _boxes_only(model, dataloader)
    elif "rle" in masks:  # RLE objects (converted data): detectron2 trains them as bitmasks, not polygons
        dataloader.train.mapper.instance_mask_format = "bitmask"
    for predictor in model.roi_heads.box_predictors:
        if predictor.get("use_fed_loss") and train is not None:
            power = predictor.get_fed_loss_cls_weights.get("power", 0.5)
            predictor.get_fed_loss_cls_weights = L(OwnFedLossClassWeights)(json_file=train[0], power=power)
            # detectron2 samples up to fed_loss_num_classes (default 50) classes without replacement
            predictor.fed_loss_num_classes = min(predictor.get("fed_loss_num_classes", 50), len(classes))
    return classes
