"""Embedded default data of the segmentation demo and tests: the generated shapes (eva02.common.shapes) as a
small dataset in ADE20K's layout, and `ShapesDataset`, the mmseg dataset that reads (and first writes) it.
Configs that use it import this module: `custom_imports = dict(imports=["eva02.seg", "eva02.seg.demo"])`.

    ROOT/images/{training,validation}/NNNNN.jpg
    ROOT/annotations/{training,validation}/NNNNN.png   uint8 labels, ADE convention (reduce_zero_label):
        0 = unlabeled (a thin band on every shape boundary, ignored in training and evaluation),
        1 = background, 2.. = the shape classes of SHAPES_CLASSES[1:].
Shapes overlap; a label map holds what stays visible of each.

`make_shapes_own_data` writes the same scenes as your own data would be laid out (eva02.seg.own_data: mmseg's
custom layout, classes.txt, labels 0.. with 255 = ignore), for any subset of the classes.
"""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS
from tqdm import tqdm

from eva02.common.shapes import SHAPE_CLASSES, SHAPE_COLOURS, draw_scene

from .datasets import CheckedADE20KDataset, LayoutCheck

__all__ = ["SHAPES_CLASSES", "SHAPES_PALETTE", "make_shapes_dataset", "make_shapes_own_data", "ShapesDataset"]

SHAPES_CLASSES = ("background", *SHAPE_CLASSES)
SHAPES_PALETTE = [[120, 120, 120], *(list(c) for c in SHAPE_COLOURS)]


def _sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (BGR image (size, size, 3) uint8, ADE label map (size, size) uint8) pair."""
    rgb, shapes = draw_scene(rng, size, max_shapes=4, overlap=True)
    label = np.ones((size, size), np.uint8)
    for shape in shapes:
        label[shape.mask] = shape.label + 2  # ADE convention: 0 unlabeled, 1 background
    # ADE-style "unlabeled" band where classes meet: ambiguous boundary pixels, ignored.
    edges = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    label[edges] = 0
    return np.ascontiguousarray(rgb[:, :, ::-1]), label


def make_shapes_dataset(root: str, num_train: int = 400, num_val: int = 50, size: int = 128,
                        seed: int = 0, progress: bool = True) -> str:
    """Write the dataset under `root` (ADE layout, see module doc); returns root.

    A split whose folders already exist is kept, so repeated runs reuse the data. Each split is written to a
    temporary folder and renamed into place, so concurrent callers (DDP ranks) never see half a split."""
    for split_id, (split, count) in enumerate((("training", num_train), ("validation", num_val))):
        img_dir = os.path.join(root, "images", split)
        ann_dir = os.path.join(root, "annotations", split)
        if os.path.isdir(img_dir) and os.path.isdir(ann_dir):
            continue
        rng = np.random.default_rng([seed, split_id])  # each split reproducible on its own
        tmp = os.path.join(root, f".tmp-{split}-{os.getpid()}")
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "annotations"))
        for i in tqdm(range(count), desc=f"shapes {split}", disable=not progress):
            img, label = _sample(rng, size)
            cv2.imwrite(os.path.join(tmp, "images", f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(os.path.join(tmp, "annotations", f"{i:05d}.png"), label)
        for kind, final in (("annotations", ann_dir), ("images", img_dir)):  # images last: they mark completion
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                os.rename(os.path.join(tmp, kind), final)
            except OSError:  # another process finished this split first
                if not os.path.isdir(final):
                    raise
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def make_shapes_own_data(root: str, classes: tuple[str, ...] = SHAPES_CLASSES, num_train: int = 400,
                         num_val: int = 50, size: int = 128, seed: int = 0, progress: bool = True) -> str:
    """Write generated scenes under `root` in the own-data layout (eva02.seg.own_data); returns root.

        root/classes.txt                 `classes`, one per line (any of SHAPES_CLASSES, in any order)
        root/img_dir/{train,val}/NNNNN.jpg
        root/ann_dir/{train,val}/NNNNN.png   class index into `classes`; 255 = ignore: the boundary bands and the
                                             pixels of shapes whose class is not listed
    """
    unknown = sorted(set(classes) - set(SHAPES_CLASSES))
    if unknown:
        raise ValueError(f"make_shapes_own_data: {unknown} are no shapes classes ({', '.join(SHAPES_CLASSES)})")
    lut = np.full(256, 255, np.uint8)  # ADE label (0 unlabeled, 1 background, 2.. shapes) -> own label
    for ade, name in enumerate(SHAPES_CLASSES, start=1):
        if name in classes:
            lut[ade] = classes.index(name)
    os.makedirs(root, exist_ok=True)
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([seed, split_id])
        os.makedirs(os.path.join(root, "img_dir", split), exist_ok=True)
        os.makedirs(os.path.join(root, "ann_dir", split), exist_ok=True)
        for i in tqdm(range(count), desc=f"shapes {split}", disable=not progress):
            img, label = _sample(rng, size)
            cv2.imwrite(os.path.join(root, "img_dir", split, f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(os.path.join(root, "ann_dir", split, f"{i:05d}.png"), lut[label])
    with open(os.path.join(root, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in classes))
    return root


@DATASETS.register_module()
class ShapesDataset(LayoutCheck, BaseSegDataset):
    """The generated demo dataset (this module), ADE layout and label convention.

    generate: keyword arguments of make_shapes_dataset (num_train, num_val, size, seed); when given, the data
    is written under data_root first unless already there, so the demo needs no download."""

    METAINFO = dict(classes=SHAPES_CLASSES, palette=SHAPES_PALETTE)
    LAYOUT = CheckedADE20KDataset.LAYOUT

    def __init__(self, generate: dict | None = None, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = True, **kwargs):
        if generate is not None:
            make_shapes_dataset(kwargs.get("data_root") or ".", **generate)
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         **kwargs)
