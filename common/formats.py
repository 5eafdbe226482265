"""Own data in the annotation formats people hold, read through supervision (docs/own-data.md says why that
library) and written as COCO json, which both frameworks' own-data paths then read as any COCO file.

    format    ANNOTATIONS (what --train-data / --val-data name first)           IMAGES
    coco      a COCO json (also CVAT's "COCO 1.0" export)                      the image folder
    yolo      the folder of YOLO .txt labels (boxes, or polygon segments); the class names from a data.yaml /
              dataset.yaml (ultralytics), classes.txt or obj.names in that folder or up to two folders above
    voc       the folder of Pascal VOC .xml files (boxes; <polygon> where present)
    labelme   the folder of LabelMe .json files (polygons, rectangles; one folder with the images is fine)
    cvat      a "CVAT for images 1.1" annotations.xml (boxes, polygons)

`detect_format` tells them apart from the path (a flag can name it instead); `convert_to_coco` writes the COCO
json. Conversion rules, each where hand-written converters go wrong:
- Class names, not ids, carry an object's class: readers number classes per file or in order of appearance.
  The class list is the data's own where it states one (YOLO's yaml / names file, CVAT's <labels>, in that
  order), else the sorted names found in the training set; a validation set is converted with the training
  set's list, and a class that list does not have is an error naming it and the file.
- No guessed crowd flag (supervision's own COCO writer marks a mask of several parts iscrowd=1, an ignore region
  in training and evaluation): every object is iscrowd=0, except Pascal VOC objects marked `difficult` in a
  validation set, which become iscrowd=1, ignored by the COCO evaluation as the VOC one ignores them (in training
  they are ordinary objects, as detectron2 trains VOC).
- Masks are exact: polygons are rasterized at the image's size by supervision and stored as COCO RLE (the mask
  area is its pixel count; an outline polygon through pixel centres would lose half a pixel all round), so
  detection trains them as bitmasks (eva02.det.own_data). Boxes come from the source, not from the mask.
- An image whose header cannot be read, or an annotation file that does not parse, is left out and named
  (`Conversion.skipped`); shapes that are no instances (lines, points) are counted.
Big datasets are read in chunks, so memory holds the masks of CHUNK images at a time, not of all.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .cli import IMAGE_EXTENSIONS, UsageError
from .files import atomic_write

__all__ = ["FORMATS", "CHUNK", "Conversion", "add_data_args", "detect_format", "convert_to_coco", "read_instances",
           "find_yolo_classes"]

FORMATS = ("coco", "yolo", "voc", "labelme", "cvat")
CHUNK = 256  # images read per supervision call
YOLO_CLASS_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")


@dataclass
class Conversion:
    """What convert_to_coco wrote: the COCO json, its image folder, the class names (category ids 1..N in this
    order), counts, and what was left out (file: reason) or skipped (shape kind: count)."""

    json_file: str
    image_root: str
    format: str
    classes: list[str]
    images: int = 0
    annotations: int = 0
    skipped: dict = field(default_factory=dict)
    other_shapes: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{self.format} -> {self.json_file}: {self.images} images, {self.annotations} objects, "
                 f"{len(self.classes)} classes"]
        if self.skipped:
            listed = "; ".join(f"{k} ({v})" for k, v in list(self.skipped.items())[:5])
            parts.append(f"{len(self.skipped)} files left out: {listed}{'; ...' if len(self.skipped) > 5 else ''}")
        if self.other_shapes:
            parts.append("shapes that are no instances, not converted: "
                         + ", ".join(f"{n} {k}" for k, n in sorted(self.other_shapes.items())))
        return "; ".join(parts)


def add_data_args(parser, training: bool = True) -> None:
    """The training and evaluation tools' own-data flags (both frameworks): --train-data ANNOTATIONS IMAGES (when
    training), --val-data ANNOTATIONS IMAGES and --data-format (module table; default: detected)."""
    pair = dict(nargs=2, metavar=("ANNOTATIONS", "IMAGES"))
    if training:
        parser.add_argument("--train-data", **pair, help="your own training set: a COCO json, a YOLO / VOC / LabelMe "
                            "label folder or a CVAT xml, and its image folder (converted into the output folder)")
    parser.add_argument("--val-data", **pair, help="your own validation set, as --train-data (needed with it; alone "
                        "for evaluation)")
    parser.add_argument("--data-format", choices=FORMATS, help="the format of --train-data / --val-data (default: "
                        "detected from the path)")


def _files(folder: str, suffix: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, f"*{suffix}")))


def detect_format(annotations: str) -> str:
    """The format of an ANNOTATIONS path (module table); UsageError naming the path when it is none of them."""
    path = Path(annotations)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        if path.suffix.lower() == ".xml":
            return "cvat"
    elif path.is_dir():
        counts = {fmt: len(_files(annotations, suffix)) for fmt, suffix in
                  (("voc", ".xml"), ("labelme", ".json"), ("yolo", ".txt"))}
        found = max(counts, key=counts.get)
        if counts[found]:
            return found
    else:
        raise UsageError(f"{annotations}: no such file or folder")
    raise UsageError(f"{annotations}: not an annotation format read here: a COCO .json, a CVAT annotations.xml, or a "
                     "folder of Pascal VOC .xml / LabelMe .json / YOLO .txt files (or name it: --data-format)")


def find_yolo_classes(labels: str) -> str:
    """The class-names file of a YOLO labels folder (YOLO_CLASS_FILES, in it or up to two folders above)."""
    folder = Path(labels).resolve()
    for candidate in (folder, folder.parent, folder.parent.parent):
        for name in YOLO_CLASS_FILES:
            if (candidate / name).is_file():
                return str(candidate / name)
    raise UsageError(f"{labels}: YOLO labels need their class names: a data.yaml (names: [...]), classes.txt or "
                     f"obj.names (one name per line) in that folder or up to two folders above")


def _yolo_names(path: str) -> list[str]:
    if path.endswith((".yaml", ".yml")):
        from supervision.dataset.formats.yolo import _extract_class_names

        return list(_extract_class_names(file_path=path))
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or "" in names:
        raise UsageError(f"{path}: needs one class name per line, none empty")
    return names


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _linked(files: list[str], into: str) -> str:
    """A fresh folder in `into` holding links to `files` (a chunk for a reader that takes folders)."""
    folder = tempfile.mkdtemp(dir=into)
    for f in files:
        os.symlink(os.path.abspath(f), os.path.join(folder, os.path.basename(f)))
    return folder


def _images(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _difficult_flags(xml_file: str) -> list[int]:
    from defusedxml import ElementTree

    root = ElementTree.parse(xml_file).getroot()
    return [int((obj.findtext("difficult") or "0").strip() or 0) for obj in root.findall("object")]


def _read_chunks(fmt: str, annotations: str, images: str, skipped: dict, yolo_names: list[str] | None):
    """(image path, supervision Detections, class names of its class ids) of every image, read CHUNK at a time by
    supervision's reader of `fmt` (YOLO: with the class names `yolo_names`); a chunk that fails is read again
    file by file, and the files that fail alone are left out (in `skipped`)."""
    import supervision as sv

    scratch = tempfile.mkdtemp(prefix="eva02-formats-")  # the chunks' links, and YOLO's names as supervision reads
    try:
        if fmt == "yolo":
            yaml = os.path.join(scratch, "data.yaml")
            Path(yaml).write_text(json.dumps({"names": yolo_names}))  # JSON is YAML
            units = _images(images)

            def read(chunk):
                return sv.DetectionDataset.from_yolo(_linked(chunk, scratch), annotations, yaml)
        elif fmt == "voc":
            units = _images(images)

            def read(chunk):
                return sv.DetectionDataset.from_pascal_voc(_linked(chunk, scratch), annotations)
        elif fmt == "labelme":
            units = _files(annotations, ".json")

            def read(chunk):
                return sv.DetectionDataset.from_labelme(images, _linked(chunk, scratch))
        else:
            raise ValueError(fmt)
        if not units:
            raise UsageError(f"{images if fmt != 'labelme' else annotations}: no "
                             f"{'images' if fmt != 'labelme' else 'LabelMe .json files'} (format {fmt})")
        if fmt != "labelme":  # label files whose image is missing: supervision would pass them over in silence
            stems = {Path(unit).stem for unit in units}
            for label in _files(annotations, ".txt" if fmt == "yolo" else ".xml"):
                if Path(label).stem not in stems:
                    skipped[label] = f"no image of this name in {images}"
        for chunk in _chunks(units, CHUNK):
            try:
                parts = [read(chunk)]
            except Exception:  # noqa: BLE001  (readers raise anything on a bad file): find it, keep the rest
                parts = []
                for unit in chunk:
                    try:
                        parts.append(read([unit]))
                    except Exception as error:  # noqa: BLE001
                        skipped[unit] = f"{type(error).__name__}: {str(error)[:200]}"
            for dataset in parts:
                for image_path in dataset.image_paths:  # not iterating the dataset: that decodes every image
                    # the image in the user's folder, not the chunk's link to it
                    yield os.path.join(images, os.path.basename(image_path)), dataset.annotations[image_path], \
                        dataset.classes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cvat_root(xml_file: str):
    """The parsed CVAT for images xml and the label names its <labels> state, in order."""
    from defusedxml import ElementTree

    try:
        root = ElementTree.parse(xml_file).getroot()
    except ElementTree.ParseError as error:
        raise UsageError(f"{xml_file}: not a readable xml ({error})") from None
    if root.tag != "annotations":
        raise UsageError(f"{xml_file}: not a CVAT for images xml (root <{root.tag}>, expected <annotations>)")
    labels = [label.findtext("name") for label in root.iter("label") if label.findtext("name")]
    return root, list(dict.fromkeys(labels))


def _cvat_instances(root, names: list[str], xml_file: str, images: str, other: Counter, skipped: dict):
    """CVAT for images 1.1 (supervision has no reader for it; see docs/own-data.md): boxes and polygons of each
    <image> of the parsed xml, as supervision Detections (polygons rasterized by supervision)."""
    import supervision as sv

    for image in root.iter("image"):
        path = os.path.join(images, image.get("name", ""))
        try:
            width, height = int(image.get("width")), int(image.get("height"))
            boxes, class_names, masks = [], [], []
            for shape in image:
                if shape.tag == "box":
                    x0, y0, x1, y1 = (float(shape.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                    boxes.append([x0, y0, x1, y1])
                    masks.append(None)
                elif shape.tag == "polygon":
                    points = np.array([[float(v) for v in p.split(",")] for p in shape.get("points").split(";")])
                    boxes.append([*points.min(0), *points.max(0)])
                    masks.append(sv.polygon_to_mask(points, (width, height)).astype(bool))
                else:
                    other[shape.tag] += 1
                    continue
                class_names.append(shape.get("label"))
        except (TypeError, ValueError) as error:  # a missing or malformed attribute: this image only
            skipped[f"{xml_file} <image name={image.get('name')!r}>"] = f"{type(error).__name__}: {error}"
            continue
        if any(m is not None for m in masks) and any(m is None for m in masks):  # boxes beside polygons: box masks
            masks = [m if m is not None else sv.polygon_to_mask(
                np.array([[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]), (width, height)).astype(bool)
                for m, b in zip(masks, boxes)]
        local = list(dict.fromkeys(names + class_names))
        detections = sv.Detections(
            xyxy=np.array(boxes, np.float32).reshape(-1, 4),
            class_id=np.array([local.index(n) for n in class_names], int),
            mask=np.stack(masks) if masks and masks[0] is not None else None)
        yield path, detections, local


def read_instances(annotations: str, images: str, fmt: str | None = None, skipped: dict | None = None,
                   other: Counter | None = None):
    """(the class list the data states or None, a stream of (image path, Detections, class names by class id) of
    each image) of a dataset in any FORMATS, read by supervision; `images` is the image folder. What is left out
    goes to `skipped` (file: reason), shapes that are no instances to `other` (kind: count), as the stream runs."""
    fmt = fmt or detect_format(annotations)
    skipped = {} if skipped is None else skipped
    other = Counter() if other is None else other
    if fmt == "cvat":
        root, names = _cvat_root(annotations)
        return names or None, _cvat_instances(root, names, annotations, images, other, skipped)
    if fmt == "coco":
        import supervision as sv

        dataset = sv.DetectionDataset.from_coco(images, annotations)
        stream = ((path, dataset.annotations[path], dataset.classes) for path in dataset.image_paths)
        return list(dataset.classes), stream
    names = _yolo_names(find_yolo_classes(annotations)) if fmt == "yolo" else None
    return names, _read_chunks(fmt, annotations, images, skipped, names)


def _rle(mask: np.ndarray) -> tuple[dict, float]:
    """A mask as COCO's compressed RLE (pycocotools) and its pixel count: the pixels supervision rasterized,
    exactly (an outline polygon through pixel centres would lose half a pixel all round)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}, float(mask.sum())


def _plain(value):
    """json.dumps default: numpy numbers and arrays (supervision's polygons) as Python values."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else str(value)


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def convert_to_coco(annotations: str, images: str, out_json: str, fmt: str | None = None,
                    classes: list[str] | None = None, split: str = "train") -> Conversion:
    """Write the dataset (any FORMATS) as a COCO json at out_json (atomically), for the image folder `images`
    (file names relative to it). classes: the class list to use (a validation set gets its training set's);
    default: the data's stated list, else the sorted names found. split "val" turns VOC `difficult` objects into
    iscrowd=1. UsageError naming the file for anything that cannot be converted."""
    fmt = fmt or detect_format(annotations)
    if fmt not in FORMATS:
        raise UsageError(f"--data-format {fmt}: choose one of {', '.join(FORMATS)}")
    if not os.path.isdir(images):
        raise UsageError(f"{images}: no such image folder (images of {annotations})")
    conversion = Conversion(out_json, os.path.abspath(images), fmt, [])
    records, coco_images = [], []
    stated, stream = read_instances(annotations, images, fmt, skipped=conversion.skipped,
                                    other=conversion.other_shapes)
    for image_path, detections, names in stream:
        try:
            width, height = _image_size(image_path)
        except (OSError, ValueError) as error:
            conversion.skipped[image_path] = f"image not readable: {error}"
            continue
        image_id = len(coco_images) + 1
        coco_images.append({"id": image_id, "file_name": os.path.relpath(image_path, images),
                            "width": width, "height": height})
        crowd = np.zeros(len(detections), int)
        if fmt == "voc" and split == "val":
            stem = Path(image_path).stem
            flags = _difficult_flags(os.path.join(annotations, stem + ".xml")) if len(detections) else []
            if len(flags) == len(detections):
                crowd = np.array(flags, int)
        for k in range(len(detections)):
            x0, y0, x1, y1 = (float(v) for v in detections.xyxy[k])
            record = {"id": len(records) + 1, "image_id": image_id, "iscrowd": int(crowd[k]),
                      "category_id": names[detections.class_id[k]],  # a name until the class list is known
                      "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}  # the source's box
            if detections.mask is not None:
                record["segmentation"], record["area"] = _rle(detections.mask[k])
            records.append(record)
    found = sorted({r["category_id"] for r in records})
    conversion.classes = list(classes or stated or found)
    unknown = [name for name in found if name not in conversion.classes]
    if unknown:
        whose = "the training set's" if classes else "the stated"
        raise UsageError(f"{annotations}: classes {unknown} are not in {whose} class list "
                         f"({', '.join(conversion.classes[:20])})")
    index = {name: i + 1 for i, name in enumerate(conversion.classes)}
    for record in records:
        record["category_id"] = index[record["category_id"]]
    if not coco_images:
        raise UsageError(f"{annotations}: no image of {images} could be converted ({conversion.summary()})")
    data = {"images": coco_images, "annotations": records,
            "categories": [{"id": i, "name": n} for n, i in index.items()],
            "info": {"description": f"converted from {fmt}: {os.path.abspath(annotations)}"}}
    atomic_write(out_json, lambda tmp: Path(tmp).write_text(json.dumps(data, default=_plain)))
    conversion.images, conversion.annotations = len(coco_images), len(records)
    return conversion
