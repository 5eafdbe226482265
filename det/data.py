"""Datasets: the registered detectron2 names, with clear errors for missing files.

Registered names below `$DETECTRON2_DATASETS` (default `./datasets`), as detectron2 lays them out:
  coco_2017_{train,val,test-dev}, lvis_v1_{train,val}  (detectron2's own builtins, wrapped with a file check)
  objects365_v2_{train,val}                             (added here)
A dataset whose json or image folder is missing raises FileNotFoundError naming the expected path and layout
when it is first loaded (not at import, so unrelated runs never need the files).

`check_training_dataset` runs once before the first training iteration, with this rule:
  - an image file the annotations name but the folder lacks stops the run (count and first files named): a
    dataset with holes is the wrong dataset;
  - a degenerate annotation (box width or height <= 0, a polygon of fewer than 3 points) is dropped and counted;
    its image stays (detectron2 already leaves out images without any annotation, and says how many);
  - no annotation left at all stops the run.
An image that exists but cannot be decoded is skipped when the loader meets it, with a warning naming it
(eva02.det.unreadable.SkipUnreadable): decoding every image up front would cost minutes on COCO.
"""
from __future__ import annotations

import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

__all__ = ["DATASET_LAYOUT", "check_training_dataset", "register_all"]

logger = logging.getLogger(__name__)

DATASET_LAYOUT = """\
$DETECTRON2_DATASETS/
  coco/annotations/instances_{train,val}2017.json, image_info_test-dev2017.json
  coco/{train,val,test}2017/*.jpg
  lvis/lvis_v1_{train,val}.json              (images: the coco/{train,val}2017 folders)
  objects365/annotations/zhiyuan_objv2_{train,val}.json
  objects365/{train,val}/<file_name of each json image entry>"""

_O365 = {
    "objects365_v2_train": ("objects365/train", "objects365/annotations/zhiyuan_objv2_train.json"),
    "objects365_v2_val": ("objects365/val", "objects365/annotations/zhiyuan_objv2_val.json"),
}
_CHECKED = ("coco_2017_train", "coco_2017_val", "coco_2017_test-dev", "lvis_v1_train", "lvis_v1_val",
            *_O365)


def _datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _checked_loader(name: str, load):
    """Wrap a dataset loader so a missing json or image folder names the expected path and layout."""

    def load_checked():
        meta = MetadataCatalog.get(name)
        for what, path in (("annotation file", meta.json_file), ("image folder", meta.image_root)):
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"dataset '{name}': {what} not found: {path}\n"
                    f"Set DETECTRON2_DATASETS (now {_datasets_root()!r}) to a folder laid out as:\n{DATASET_LAYOUT}")
        return load()

    return load_checked


def register_all() -> None:
    """Register objects365_v2_{train,val} and wrap the COCO/LVIS builtins with the file check. Idempotent."""
    root = _datasets_root()
    for name, (image_root, json_file) in _O365.items():
        if name not in DatasetCatalog.list():
            # 365 class names come from the json when it is loaded (thing_classes is set by load_coco_json).
            register_coco_instances(name, {}, os.path.join(root, json_file), os.path.join(root, image_root))
    for name in _CHECKED:
        load = DatasetCatalog[name]  # the registered function itself (DatasetCatalog.get would call it)
        if getattr(load, "_eva02_checked", False):
            continue
        DatasetCatalog.remove(name)
        wrapped = _checked_loader(name, load)
        wrapped._eva02_checked = True
        DatasetCatalog.register(name, wrapped)


def _degenerate(annotation: dict) -> bool:
    _, _, width, height = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYWH_ABS)
    polygons = annotation.get("segmentation")
    return width <= 0 or height <= 0 or (isinstance(polygons, list) and any(len(p) < 6 for p in polygons))


def check_training_dataset(dataset_dicts: list[dict], name: str) -> list[dict]:
    """Apply the module docstring's rule to a training set's dicts (in place); returns them."""
    missing = [d["file_name"] for d in dataset_dicts if not os.path.isfile(d["file_name"])]
    if missing:
        raise FileNotFoundError(f"training set {name}: {len(missing)} of {len(dataset_dicts)} image files named in "
                                f"its annotations do not exist (first: {', '.join(missing[:3])}); fix the image "
                                f"folder or the annotation file")
    dropped = 0
    for record in dataset_dicts:
        kept = [a for a in record.get("annotations", []) if not _degenerate(a)]
        dropped += len(record.get("annotations", [])) - len(kept)
        record["annotations"] = kept
    if dropped:
        logger.warning(f"training set {name}: dropped {dropped} degenerate annotations (box width or height <= 0, "
                       "or a polygon of fewer than 3 points)")
    if not any(record["annotations"] for record in dataset_dicts):
        raise ValueError(f"training set {name}: no usable annotation in {len(dataset_dicts)} images")
    return dataset_dicts
