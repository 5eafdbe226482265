"""Datasets: the registered detectron2 names (with clear errors for missing files) and the synthetic shapes set.

Registered names below `$DETECTRON2_DATASETS` (default `./datasets`), as detectron2 lays them out:
  coco_2017_{train,val,test-dev}, lvis_v1_{train,val}  (detectron2's own builtins, wrapped with a file check)
  objects365_v2_{train,val}                             (added here)
A dataset whose json or image folder is missing raises FileNotFoundError naming the expected path and layout
when it is first loaded (not at import, so unrelated runs never need the files).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances, register_lvis_instances

from eva02.backbone.checkpoint import atomic_write

__all__ = ["DATASET_LAYOUT", "register_all", "make_shapes_dataset", "register_shapes", "prepare_shapes",
           "SHAPE_CLASSES"]

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


# ----------------------------------------------------------------------------- synthetic shapes
SHAPE_CLASSES = ("circle", "square", "triangle")


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(K, 2) polygon vertices (x, y) of a shape with circumradius r centred at (cx, cy)."""
    n = {"circle": 32, "square": 4, "triangle": 3}[kind]
    start = angle + (np.pi / 4 if kind == "square" else 0.0)
    t = start + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _draw_image(rng: np.random.Generator, size: int, max_objects: int):
    """One image (H, W, 3) uint8 and its annotations (category index, polygon)."""
    import cv2

    background = rng.uniform(0, 90, size=3)
    img = np.clip(background + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    anns = []
    occupied = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # place without overlapping earlier shapes, so every mask is whole
            r = rng.uniform(0.08, 0.22) * size
            cx, cy = rng.uniform(r, size - r, size=2)
            kind = int(rng.integers(len(SHAPE_CLASSES)))
            poly = _shape_polygon(SHAPE_CLASSES[kind], cx, cy, r, rng.uniform(0, 2 * np.pi))
            mask = np.zeros((size, size), np.uint8)
            cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
            if not (mask.astype(bool) & occupied).any():
                break
        else:
            continue
        occupied |= mask.astype(bool)
        color = rng.uniform(130, 255, size=3)
        img[mask.astype(bool)] = color.astype(np.uint8)
        anns.append((kind, poly))
    return img, anns


def _write_split(root: Path, split: str, num: int, size: int, rng: np.random.Generator, max_objects: int,
                 lvis: bool):
    import cv2

    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        img, anns = _draw_image(rng, size, max_objects)
        file_name = f"{i:06d}.png"
        cv2.imwrite(str(img_dir / file_name), img[:, :, ::-1])  # RGB -> BGR for cv2
        image = {"id": i + 1, "file_name": file_name, "height": size, "width": size}
        if lvis:  # every class is exhaustively annotated; detectron2 finds LVIS images by their coco_url
            image.update(not_exhaustive_category_ids=[], neg_category_ids=[],
                         coco_url=f"http://shapes.invalid/{split}/{file_name}")
        images.append(image)
        for kind, poly in anns:
            x0, y0 = np.clip(poly.min(0), 0, size)
            x1, y1 = np.clip(poly.max(0), 0, size)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": kind + 1, "iscrowd": 0,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(_polygon_area(np.clip(poly, 0, size))),
                "segmentation": [np.clip(poly, 0, size).round(2).ravel().tolist()],
            })
    coco = {
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPE_CLASSES)],
    }
    if lvis:
        for c in coco["categories"]:
            c.update(frequency="f", synset=f"{c['name']}.n.01")
    json_path = root / f"{split}.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(coco)))
    return str(json_path), str(img_dir)


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def make_shapes_dataset(root, num_train: int = 400, num_val: int = 50, image_size: int = 192, seed: int = 0,
                        max_objects: int = 4, lvis: bool = False) -> dict[str, str]:
    """Write a COCO-format dataset of filled circles, squares and triangles (3 classes, polygon masks).

    Layout: root/{train,val}/NNNNNN.png and root/{train,val}.json. Shapes never overlap, lie fully inside
    the image, have circumradius 8-22% of the side and bright colours on a dark noisy background.
    lvis=True adds the LVIS json fields (category frequency, per-image negative / not-exhaustive lists) so the
    files also load as an LVIS dataset (register_shapes(..., lvis=True)) and evaluate with LVISEvaluator.
    Returns {"train_json", "train_images", "val_json", "val_images"}. Same arguments -> same files.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    train_json, train_images = _write_split(root, "train", num_train, image_size, rng, max_objects, lvis)
    val_json, val_images = _write_split(root, "val", num_val, image_size, rng, max_objects, lvis)
    return {"train_json": train_json, "train_images": train_images, "val_json": val_json, "val_images": val_images}


def register_shapes(paths: dict[str, str], prefix: str = "shapes", lvis: bool = False) -> tuple[str, str]:
    """Register `{prefix}_train` and `{prefix}_val` from make_shapes_dataset's paths (re-registering replaces
    them). Returns the two names.

    lvis=True registers them as LVIS v1 datasets (files made with lvis=True): the LVIS v1 metadata (1203
    classes, class image counts) applies and the shapes are LVIS classes 1-3; the prefix must contain "v1"
    (detectron2 picks the LVIS metadata by name)."""
    if lvis and "v1" not in prefix:
        raise ValueError(f"register_shapes(lvis=True) needs a prefix containing 'v1', got {prefix!r}")
    names = []
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        json_file, image_root = paths[f"{split}_json"], paths[f"{split}_images"]
        if lvis:  # detectron2's LVIS loader joins image_root + <split folder of coco_url>
            register_lvis_instances(name, {}, json_file, str(Path(image_root).parent) + os.sep)
            names.append(name)
            continue
        DatasetCatalog.register(name, lambda j=json_file, r=image_root, n=name: load_coco_json(j, r, n))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                      thing_classes=list(SHAPE_CLASSES))
        names.append(name)
    return names[0], names[1]


def prepare_shapes(root, num_train: int, num_val: int, image_size: int, seed: int = 0, max_objects: int = 4,
                   prefix: str = "shapes") -> tuple[str, str]:
    """Generate the shapes dataset under root (skipped when root already holds one made with the same
    arguments) and register it; returns the (train, val) dataset names. Used by the demo config's
    `dataloader.setup`."""
    root = Path(root)
    args = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, max_objects=max_objects)
    stamp = root / "arguments.json"
    paths = {"train_json": str(root / "train.json"), "train_images": str(root / "train"),
             "val_json": str(root / "val.json"), "val_images": str(root / "val")}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == args and os.path.isfile(paths["val_json"])):
        paths = make_shapes_dataset(root, **args)
        stamp.write_text(json.dumps(args))
    return register_shapes(paths, prefix)
