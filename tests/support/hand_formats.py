"""Annotation files written by hand from a COCO json, the way each tool lays them out (string templates, no
library), for the own-data format tests: the independent writer the readers are checked against.

Each writer takes the COCO dict of one split (polygon objects; make_shapes_dataset's) and writes the objects of
every image as that format's files; `write_split(fmt, coco, images, folder)` returns (ANNOTATIONS, IMAGES) as a
user passes them to --train-data / --val-data.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

__all__ = ["write_split", "data_args", "FORMAT_WRITERS", "objects_by_image", "polygon_area"]


def objects_by_image(coco: dict) -> dict:
    """file_name -> (image dict, [(class name, polygon [(x, y), ...], bbox [x, y, w, h])])."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    objects = defaultdict(list)
    for a in coco["annotations"]:
        flat = a["segmentation"][0]
        objects[a["image_id"]].append((names[a["category_id"]], list(zip(flat[::2], flat[1::2])), a["bbox"]))
    return {img["file_name"]: (img, objects[img["id"]]) for img in coco["images"]}


def polygon_area(points) -> float:
    """Shoelace area of a polygon [(x, y), ...]."""
    xs, ys = zip(*points)
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def _yolo(coco, images, folder):
    """Ultralytics YOLO segmentation: labels/NAME.txt "class x1 y1 x2 y2 ..." normalized; data.yaml names."""
    labels = folder / "labels"
    labels.mkdir(parents=True)
    classes = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    (folder / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(classes)))
    for file_name, (img, objects) in objects_by_image(coco).items():
        w, h = img["width"], img["height"]
        lines = [f"{classes.index(name)} " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in poly)
                 for name, poly, _ in objects]
        (labels / (Path(file_name).stem + ".txt")).write_text("\n".join(lines) + "\n")
    return labels, images


def _voc(coco, images, folder):
    """Pascal VOC: Annotations/NAME.xml, 1-based inclusive pixel boxes; the first object marked difficult."""
    out = folder / "Annotations"
    out.mkdir(parents=True)
    for file_name, (img, objects) in objects_by_image(coco).items():
        parts = []
        for k, (name, _, (x, y, bw, bh)) in enumerate(objects):
            # a box covering pixels x..x+w-1 is written xmin = x + 1, xmax = x + w (VOC devkit convention)
            parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                         f"<difficult>{int(k == 0)}</difficult><bndbox><xmin>{round(x) + 1}</xmin>"
                         f"<ymin>{round(y) + 1}</ymin><xmax>{round(x + bw)}</xmax><ymax>{round(y + bh)}</ymax>"
                         "</bndbox></object>")
        (out / (Path(file_name).stem + ".xml")).write_text(
            f"<annotation><folder>JPEGImages</folder><filename>{file_name}</filename><size>"
            f"<width>{img['width']}</width><height>{img['height']}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{''.join(parts)}</annotation>")
    return out, images


def _labelme(coco, images, folder):
    """LabelMe: one NAME.json per image beside a copy of the image (its usual layout), polygon shapes."""
    folder.mkdir(parents=True)
    for file_name, (img, objects) in objects_by_image(coco).items():
        shutil.copy(os.path.join(images, file_name), folder / file_name)
        shapes = [{"label": name, "points": [[x, y] for x, y in poly], "group_id": None, "description": "",
                   "shape_type": "polygon", "flags": {}} for name, poly, _ in objects]
        (folder / (Path(file_name).stem + ".json")).write_text(json.dumps(
            {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": file_name, "imageData": None,
             "imageHeight": img["height"], "imageWidth": img["width"]}))
    return folder, folder


def _cvat(coco, images, folder):
    """CVAT for images 1.1: annotations.xml with the task's labels, polygons, and one polyline (no instance)."""
    folder.mkdir(parents=True)
    classes = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    labels = "".join(f"<label><name>{n}</name><color>#ff0000</color><type>any</type><attributes/></label>"
                     for n in classes)
    body = []
    for i, (file_name, (img, objects)) in enumerate(objects_by_image(coco).items()):
        shapes = "".join(f'<polygon label="{name}" source="manual" occluded="0" points="'
                         + ";".join(f"{x:.2f},{y:.2f}" for x, y in poly) + '" z_order="0"></polygon>'
                         for name, poly, _ in objects)
        if i == 0:
            shapes += f'<polyline label="{classes[0]}" occluded="0" points="1.0,1.0;5.0,5.0" z_order="0"/>'
        body.append(f'<image id="{i}" name="{file_name}" width="{img["width"]}" height="{img["height"]}">'
                    f"{shapes}</image>")
    (folder / "annotations.xml").write_text(
        f'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta><task><id>1</id>'
        f"<name>shapes</name><labels>{labels}</labels></task></meta>{''.join(body)}</annotations>")
    return folder / "annotations.xml", images


FORMAT_WRITERS = {"yolo": _yolo, "voc": _voc, "labelme": _labelme, "cvat": _cvat}


def write_split(fmt: str, coco: dict, images, folder) -> tuple[Path, Path]:
    """The split's objects written in `fmt` under folder; returns (ANNOTATIONS, IMAGES)."""
    annotations, image_folder = FORMAT_WRITERS[fmt](coco, str(images), Path(folder))
    return Path(annotations), Path(image_folder)


def data_args(folder, seed: int):
    """Generated shapes (6 training, 3 validation images of 64 px; eva02.det.demo) in folder, and a function
    fmt -> the --train-data / --val-data arguments of them written in fmt (written once)."""
    from eva02.det.demo import make_shapes_dataset

    folder = Path(folder)
    paths = make_shapes_dataset(folder / "coco", num_train=6, num_val=3, image_size=64, seed=seed)
    cache = {}

    def written(fmt: str) -> list:
        if fmt not in cache:
            cache[fmt] = []
            for split in ("train", "val"):
                coco = json.loads(Path(paths[f"{split}_json"]).read_text())
                cache[fmt] += [f"--{split}-data",
                               *write_split(fmt, coco, paths[f"{split}_images"], folder / f"{fmt}_{split}")]
        return cache[fmt]

    return written
