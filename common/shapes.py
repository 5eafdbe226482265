"""Generated shapes: the one embedded default dataset behind every demo and test (detection, segmentation, MIM).

A scene is a smooth, noisy, greyish background with a few filled shapes of SHAPE_CLASSES, each randomly sized,
placed and rotated, its colour jittered around its class colour with its own texture, so a model must use
both shape and colour. The detection demo writes scenes as COCO polygons (eva02.det.demo), the segmentation
demo as ADE label maps (eva02.seg.demo), the MIM demo as plain images (eva02.backbone.mim.demo).
numpy only; same seed, same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["SHAPE_CLASSES", "SHAPE_COLOURS", "Shape", "shape_polygon", "polygon_mask", "draw_scene"]

SHAPE_CLASSES = ("disk", "square", "triangle", "cross")
SHAPE_COLOURS = ((220, 40, 40), (40, 180, 60), (50, 80, 230), (240, 200, 30))  # RGB, one per class


@dataclass
class Shape:
    """One drawn shape: class index into SHAPE_CLASSES, outline (K, 2) as (x, y), pixel mask (H, W) bool
    (what is visible of it once later shapes are drawn over it)."""

    label: int
    polygon: np.ndarray
    mask: np.ndarray


def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(K, 2) outline (x, y), counter-clockwise in image coordinates, of a shape of circumradius r at (cx, cy)
    rotated by `angle` radians. A disk is a 32-gon; a cross has arms a third of r wide."""
    if kind == "cross":
        a = r / 3  # half the arm width; corners of the plus sign, walking around it
        local = np.array([(r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a),
                          (-a, -r), (a, -r), (a, -a)])
    else:
        n = {"disk": 32, "square": 4, "triangle": 3}[kind]
        t = np.arange(n) * 2 * np.pi / n + (np.pi / 4 if kind == "square" else 0.0)
        local = r * np.stack([np.cos(t), np.sin(t)], axis=1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return local @ rot.T + (cx, cy)


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside the polygon (even-odd rule, any simple polygon)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = np.zeros((height, width), bool)
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for xa, ya, xb, yb in zip(x0, y0, x1, y1):
        crosses = (ya > ys) != (yb > ys)  # the edge spans this row; where along it is the row met?
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = xa + (ys - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (xs < x_at)
    return inside


def _texture(rng: np.random.Generator, size: int, waves: int = 3) -> np.ndarray:
    """(size, size) smooth field in [0, 1] (a few random plane waves) plus fine noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    field = sum(np.sin(2 * np.pi * (fx * xx + fy * yy) + p) for fx, fy, p in rng.uniform(-1.5, 1.5, (waves, 3)))
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    return np.clip(field + rng.normal(0, 0.06, (size, size)), 0, 1)


def draw_scene(rng: np.random.Generator, size: int, max_shapes: int = 4, overlap: bool = True,
               labels: Sequence[int] | None = None) -> tuple[np.ndarray, list[Shape]]:
    """One (size, size, 3) uint8 RGB image and its shapes, in drawing order; `labels`: the SHAPE_CLASSES
    indexes to draw (default all).

    Circumradius 10-24% of the side, fully inside the image. overlap=False places each shape clear of the
    earlier ones (up to 20 tries, else it is left out), so every mask is whole (detection);
    overlap=True lets later shapes cover earlier ones, and a shape's mask is what stays visible (segmentation).
    """
    grey = rng.uniform(40, 160)
    image = grey + rng.uniform(-25, 25, 3) + 70 * (_texture(rng, size)[..., None] - 0.5)
    shapes: list[Shape] = []
    occupied = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(1 if overlap else 20):
            r = rng.uniform(0.10, 0.24) * size
            cx, cy = rng.uniform(r, size - r, size=2)
            label = int(rng.integers(len(SHAPE_CLASSES))) if labels is None else int(labels[rng.integers(len(labels))])
            polygon = shape_polygon(SHAPE_CLASSES[label], cx, cy, r, rng.uniform(0, 2 * np.pi))
            mask = polygon_mask(polygon, size, size)
            if overlap or not (mask & occupied).any():
                break
        else:
            continue
        colour = 0.7 * np.array(SHAPE_COLOURS[label]) + 0.3 * rng.uniform(0, 255, 3)
        shade = 0.75 + 0.25 * _texture(rng, size)[mask]
        image[mask] = colour * shade[:, None]
        for earlier in shapes:
            earlier.mask &= ~mask
        occupied |= mask
        shapes.append(Shape(label, polygon, mask))
    return np.clip(image, 0, 255).astype(np.uint8), [s for s in shapes if s.mask.any()]
