"""A small generated segmentation dataset in ADE20K's layout, for the demo and the tests.

    ROOT/images/{training,validation}/NNNNN.jpg
    ROOT/annotations/{training,validation}/NNNNN.png   uint8 labels, ADE convention (reduce_zero_label):
        0 = unlabeled (a thin band on every shape boundary, ignored in training and evaluation),
        1 = background, 2.. = the shape classes of SHAPES_CLASSES[1:].

Each image is a textured background (smooth random colour field plus noise) with a few overlapping shapes;
a shape's class is its geometry, its fill a jittered colour around a class hue with its own texture, so a
model must use both colour and shape to get boundaries right.
"""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
from tqdm import tqdm

__all__ = ["SHAPES_CLASSES", "SHAPES_PALETTE", "make_shapes_dataset"]

SHAPES_CLASSES = ("background", "disk", "square", "triangle", "cross")
SHAPES_PALETTE = [[120, 120, 120], [220, 40, 40], [40, 180, 60], [50, 80, 230], [240, 200, 30]]
_HUES = {"disk": 0, "square": 60, "triangle": 115, "cross": 25}  # OpenCV hue (0-179) of each fill


def _texture(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] plus fine noise: (h, w)."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(field + rng.normal(0, 0.08, (h, w)).astype(np.float32), 0, 1)


def _shape_mask(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """Binary (h, w) mask of one randomly placed, sized and rotated shape."""
    mask = np.zeros((h, w), np.uint8)
    r = int(rng.uniform(0.14, 0.28) * min(h, w))
    cx, cy = int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))
    angle = rng.uniform(0, 2 * np.pi)

    def polygon(radii, n_angles):
        pts = [(cx + rad * np.cos(angle + a), cy + rad * np.sin(angle + a)) for rad, a in zip(radii, n_angles)]
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)

    if name == "disk":
        cv2.circle(mask, (cx, cy), r, 1, -1)
    elif name == "square":
        polygon([r * 1.2] * 4, np.arange(4) * np.pi / 2)
    elif name == "triangle":
        polygon([r * 1.3] * 3, np.arange(3) * 2 * np.pi / 3)
    elif name == "cross":
        arm = max(2, r // 3)
        rot = cv2.getRotationMatrix2D((cx, cy), np.degrees(angle), 1.0)
        cv2.rectangle(mask, (cx - r, cy - arm), (cx + r, cy + arm), 1, -1)
        cv2.rectangle(mask, (cx - arm, cy - r), (cx + arm, cy + r), 1, -1)
        mask = cv2.warpAffine(mask, rot, (w, h), flags=cv2.INTER_NEAREST)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return mask


def _sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (BGR image (size, size, 3) uint8, label map (size, size) uint8) pair."""
    h = w = size
    hsv = np.empty((h, w, 3), np.float32)
    hsv[..., 0] = rng.uniform(0, 180) + 30 * _texture(rng, h, w, 4)
    hsv[..., 1] = 40 + 60 * _texture(rng, h, w, 6)  # backgrounds are greyish: low saturation
    hsv[..., 2] = 60 + 150 * _texture(rng, h, w, 8)
    label = np.ones((h, w), np.uint8)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(1, len(SHAPES_CLASSES)))
        mask = _shape_mask(rng, SHAPES_CLASSES[cls], h, w).astype(bool)
        hsv[mask, 0] = (_HUES[SHAPES_CLASSES[cls]] + rng.normal(0, 6)) % 180
        hsv[mask, 1] = rng.uniform(150, 255) * (0.8 + 0.2 * _texture(rng, h, w, 5)[mask])
        hsv[mask, 2] = rng.uniform(130, 255) * (0.7 + 0.3 * _texture(rng, h, w, 7)[mask])
        label[mask] = cls + 1
    # ADE-style "unlabeled" band where classes meet: ambiguous antialiased pixels, ignored.
    edges = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    label[edges] = 0
    hsv[..., 0] %= 180
    bgr = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
    bgr = cv2.GaussianBlur(bgr, (3, 3), 0)  # soft, antialiased-looking edges
    return bgr, label


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
