"""Fine-tuning on your own data: mmseg's custom folder layout, class names from a text file, no code.

    DATA/classes.txt                 one class name per line; line 1 is label 0, line 2 label 1, ...
    DATA/img_dir/train/*.jpg|png     DATA/ann_dir/train/*.png   (label map of img_dir/train/NAME.* is NAME.png)
    DATA/img_dir/val/*.jpg|png       DATA/ann_dir/val/*.png

Label maps are single-channel PNGs holding the class index of each pixel, 255 = ignore (no reduce_zero_label).

`OwnSegDataset` (mmseg DATASETS) reads such a folder: classes from classes.txt, a generated palette, and a check of
every label map when the dataset is built (a map with a value that is no class, or not single-channel, is left
out with one warning that names it; an image without label map is an error). `use_own_data(cfg, DATA)` rewrites
any of this project's segmentation configs (UperNet or Mask2Former) to train, validate and test on DATA:

    cfg = Config.fromfile("configs/ade20k/upernet_eva02_B_512.py")
    classes = use_own_data(cfg, "DATA")        # what tools/*_seg.py --data DIR do
"""
from __future__ import annotations

import colorsys
import logging
import os
import os.path as osp
from collections.abc import MutableMapping, Sequence

import numpy as np
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS
from PIL import Image
from tqdm import tqdm

from .datasets import LayoutCheck

__all__ = ["IMAGE_SUFFIXES", "OWN_LAYOUT", "OwnSegDataset", "make_palette", "read_classes", "use_own_data"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_PREFIXES = {"train": dict(img_path="img_dir/train", seg_map_path="ann_dir/train"),
                  "val": dict(img_path="img_dir/val", seg_map_path="ann_dir/val")}
OWN_LAYOUT = ("  classes.txt                    one class name per line (line 1 = label 0)\n"
              "  img_dir/train/*.jpg|png        ann_dir/train/*.png\n"
              "  img_dir/val/*.jpg|png          ann_dir/val/*.png\n"
              "  (label maps: single-channel PNG, class index per pixel, 255 = ignore)")
CLASSES_FORMAT = "one class name per line, line 1 = label 0"


def read_classes(data_root: str | os.PathLike) -> list[str]:
    """The class names of DATA/classes.txt (one per line; blank lines at the end are ignored). ValueError or
    FileNotFoundError, in one line naming the file and the format, when it is missing, empty or malformed."""
    path = osp.join(os.fspath(data_root), "classes.txt")
    if not osp.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; own data needs DATA/classes.txt ({CLASSES_FORMAT})")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"{path} is empty; it must list the classes ({CLASSES_FORMAT})")
    if "" in lines:
        raise ValueError(f"{path}: line {lines.index('') + 1} is empty ({CLASSES_FORMAT})")
    repeated = sorted({name for name in lines if lines.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: class names listed twice: {', '.join(repeated)} ({CLASSES_FORMAT})")
    if len(lines) > 255:
        raise ValueError(f"{path}: {len(lines)} classes; label maps hold 0-254 (255 = ignore), at most 255 classes")
    return lines


def make_palette(num_classes: int) -> list[list[int]]:
    """num_classes distinct RGB colours, the same for every run: hues spaced by the golden ratio, alternating
    in saturation and brightness."""
    palette = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        saturation, value = (0.85, 0.95) if i % 2 == 0 else (0.6, 0.75)
        palette.append([int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return palette


class _CustomLayoutScan(BaseSegDataset):
    """mmseg's directory scan, for images of any of IMAGE_SUFFIXES, with an error for an image without label map."""

    def load_data_list(self) -> list[dict]:
        img_dir, ann_dir = self.data_prefix.get("img_path"), self.data_prefix.get("seg_map_path")
        data_list, missing = [], []
        for folder, _, files in os.walk(img_dir):
            for name in files:
                stem, suffix = osp.splitext(name)
                if suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                info = dict(img_path=osp.join(folder, name), label_map=self.label_map,
                            reduce_zero_label=self.reduce_zero_label, seg_fields=[])
                if ann_dir is not None:
                    label = osp.join(ann_dir, osp.relpath(folder, img_dir), stem + self.seg_map_suffix)
                    info["seg_map_path"] = osp.normpath(label)
                    if not osp.isfile(info["seg_map_path"]):
                        missing.append(f"{info['img_path']} (expected {info['seg_map_path']})")
                data_list.append(info)
        if missing:
            raise FileNotFoundError(
                f"{type(self).__name__}: {len(missing)} image(s) without label map: {'; '.join(missing[:10])}"
                f"{'; ...' if len(missing) > 10 else ''}. Every image needs a label map of the same name "
                f"(.png) in the matching ann_dir folder.")
        return sorted(data_list, key=lambda info: info["img_path"])


@DATASETS.register_module()
class OwnSegDataset(LayoutCheck, _CustomLayoutScan):
    """Your own data in mmseg's custom layout (module doc): classes from DATA/classes.txt, a generated palette.

    When built, every label map is read once (np.unique): a map holding a value that is no class index and not
    `ignore_index` (255), or with more than one channel, is left out with one warning naming the files and the
    values (an error if nothing is left). check_images=True also decodes every image (LayoutCheck)."""

    LAYOUT = OWN_LAYOUT
    IMAGES = "*" + "|*".join(IMAGE_SUFFIXES)

    def __init__(self, data_root: str, data_prefix: dict | None = None, seg_map_suffix: str = ".png", **kwargs):
        if "metainfo" in kwargs:
            raise ValueError("OwnSegDataset: the classes come from DATA/classes.txt; metainfo cannot be set")
        classes = read_classes(data_root)
        kwargs.setdefault("reduce_zero_label", False)
        super().__init__(data_root=data_root, data_prefix=data_prefix or dict(SPLIT_PREFIXES["train"]),
                         seg_map_suffix=seg_map_suffix, img_suffix=IMAGE_SUFFIXES[0],
                         metainfo=dict(classes=tuple(classes), palette=make_palette(len(classes))), **kwargs)

    def filter_data(self) -> list[dict]:
        data_list = super().filter_data()  # LayoutCheck: unreadable pairs left out when check_images
        num_classes = len(self.metainfo["classes"])
        kept, bad = [], []
        for info in tqdm(data_list, desc=f"checking {type(self).__name__} label maps", mininterval=5):
            path = info["seg_map_path"]
            try:
                with Image.open(path) as image:
                    label = np.asarray(image)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                self.unreadable.append(f"{path} ({error})")
                print_log(f"skipping unreadable {path} ({error})", logger="current", level=logging.ERROR)
                continue
            if label.ndim != 2:
                bad.append(f"{path} (not single-channel: shape {label.shape})")
                continue
            values = np.unique(label)
            wrong = values[(values >= num_classes) & (values != self.ignore_index)]
            if wrong.size:
                shown = ", ".join(str(v) for v in wrong[:10]) + (", ..." if wrong.size > 10 else "")
                bad.append(f"{path} (values {shown})")
                continue
            kept.append(info)
        folder = self.data_prefix.get("seg_map_path")
        if bad:
            print_log(f"{type(self).__name__}: {len(bad)} of {len(data_list)} samples in {folder} left out, their "
                      f"label maps hold values that are no class (classes.txt lists {num_classes}: 0-"
                      f"{num_classes - 1}; {self.ignore_index} = ignore): {'; '.join(bad[:20])}"
                      f"{f'; and {len(bad) - 20} more' if len(bad) > 20 else ''}",
                      logger="current", level=logging.WARNING)
        self.bad_labels = bad
        if not kept:
            raise ValueError(f"{type(self).__name__}: no usable sample left in {folder} ({len(bad)} with label "
                             f"values that are no class of {num_classes}, {len(self.unreadable)} unreadable)")
        return kept


def _walk(node, visit) -> None:
    if isinstance(node, MutableMapping):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for value in node:
            _walk(value, visit)


def _own_dataset(dataset: ConfigDict, data_root: str, split: str, where: str) -> ConfigDict:
    if "dataset" in dataset or "datasets" in dataset:
        raise ValueError(f"use_own_data: {where}.dataset is a dataset wrapper ({dataset.get('type')}); "
                         "own data replaces plain datasets only")
    return ConfigDict(type="OwnSegDataset", data_root=data_root, data_prefix=dict(SPLIT_PREFIXES[split]),
                      pipeline=dataset.get("pipeline", []), check_images=True)


def use_own_data(cfg: Config, data_root: str | os.PathLike) -> list[str]:
    """Rewrites a segmentation config in place to train / validate / test on DATA in the custom layout (module
    doc); returns the class names of DATA/classes.txt (which alone is read here; the folders are checked when the
    datasets are built).

    - train/val/test_dataloader.dataset: OwnSegDataset on DATA (img_dir/train, img_dir/val for val and test),
      with check_images (unreadable pairs reported and left out, the training set's included);
    - LoadAnnotations everywhere (pipelines, TTA): reduce_zero_label False (own labels start at class 0);
    - every head's num_classes (decode_head, auxiliary_head(s)) = the number of classes, and Mask2Former's
      loss_cls.class_weight: 1.0 per class + the config's no-object weight."""
    data_root = os.fspath(data_root)
    classes = read_classes(data_root)
    count = len(classes)
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "val")):
        if cfg.get(loader) is not None:
            cfg[loader].dataset = _own_dataset(cfg[loader].dataset, data_root, split, loader)

    def no_zero_reduction(node) -> None:
        if node.get("type") == "LoadAnnotations" and "reduce_zero_label" in node:
            node["reduce_zero_label"] = False

    _walk(cfg._cfg_dict, no_zero_reduction)
    heads = []
    for name in ("decode_head", "auxiliary_head"):
        head = cfg.model.get(name)
        heads += list(head) if isinstance(head, (list, tuple)) else [head] if head else []
    for head in heads:
        head.num_classes = count
        weight = (head.get("loss_cls") or {}).get("class_weight")
        if weight is not None:  # Mask2Former: one weight per class, then the no-object class
            head.loss_cls.class_weight = [1.0] * count + [weight[-1]]
    if "num_classes" in cfg:
        cfg.num_classes = count
    return classes
