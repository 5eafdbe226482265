"""Own segmentation data in the formats people hold, written into the custom layout of eva02.seg.own_data
(classes.txt, img_dir/{train,val}, ann_dir/{train,val}) that the segmentation tools then read.

- Instance annotations (COCO json, YOLO polygons, LabelMe, CVAT; read by eva02.common.formats through
  supervision): `instances_to_layout` rasterizes them into label maps. classes.txt is "background" then the
  data's classes (a class named background / _background_ in the data is that label instead); each object's
  pixels get its class, in file order (a later object covers an earlier one, as LabelMe's own label export
  paints); crowd regions (COCO iscrowd) are 255 (ignored); pixels no object covers are background.
  Boxes without masks carry no pixel labels: an error.
- A Pascal VOC segmentation folder (JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt):
  `voc_to_layout` links images and label maps into the layout. Class names from its labelmap.txt (CVAT /
  Datumaro exports) or VOC's 21 (mmseg's PascalVOCDataset). Index PNGs (VOC's palette images) are used as they
  are; colour PNGs (CVAT's export) are mapped to indices by the labelmap's / VOC's colours, the VOC border colour
  and unknown colours to 255 (counted in the log, by file).
Images are linked, not copied; the label maps are the only pixels written.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from mmengine.logging import print_log
from PIL import Image
from tqdm import tqdm

from eva02.common.cli import UsageError
from eva02.common.files import atomic_write
from eva02.common.formats import read_instances

__all__ = ["BACKGROUND_NAMES", "instances_to_layout", "is_voc_segmentation", "voc_to_layout", "seg_data_root"]

BACKGROUND_NAMES = ("background", "_background_")
VOC_VOID = (224, 224, 192)  # VOC's object-border colour: ignored
_UNCOVERED = 254  # label value of pixels no object covers while writing; the background class's at the end


def _fresh_layout(root: str) -> None:
    for sub in ("img_dir", "ann_dir"):
        shutil.rmtree(osp.join(root, sub), ignore_errors=True)
    os.makedirs(root, exist_ok=True)


def _link_image(image: str, root: str, split: str) -> None:
    target = osp.join(root, "img_dir", split, osp.basename(image))
    os.makedirs(osp.dirname(target), exist_ok=True)
    if osp.lexists(target):
        raise UsageError(f"{image}: two images named {osp.basename(image)} in the {split} set")
    os.symlink(osp.abspath(image), target)


def _write_label(label: np.ndarray, root: str, split: str, stem: str) -> None:
    path = osp.join(root, "ann_dir", split, stem + ".png")
    atomic_write(path, lambda tmp: Image.fromarray(label).save(tmp, format="PNG"))


def _write_classes(root: str, classes: list[str]) -> None:
    atomic_write(osp.join(root, "classes.txt"), lambda tmp: Path(tmp).write_text("\n".join(classes) + "\n"))


def instances_to_layout(train: tuple[str, str], val: tuple[str, str], root: str, fmt: str | None = None) -> list[str]:
    """Rasterize instance annotations (train and val: (ANNOTATIONS, IMAGES), any format of eva02.common.formats)
    into the custom layout at root (module doc). Returns the class names written to classes.txt."""
    _fresh_layout(root)
    ids: dict[str, int] = {}  # class name -> label value while writing (first seen); renumbered at the end
    stated = None
    written = {"train": [], "val": []}
    for split, (source, images) in (("train", train), ("val", val)):
        skipped, other = {}, Counter()
        names, stream = read_instances(str(source), str(images), fmt, skipped=skipped, other=other)
        stated = stated or names
        for image_path, detections, local in tqdm(stream, desc=f"rasterizing {split} label maps", mininterval=5):
            if len(detections) and detections.mask is None:
                raise UsageError(f"{source}: {image_path} has boxes without masks; segmentation needs polygons "
                                 "or masks")
            image = cv2.imread(image_path, cv2.IMREAD_UNCHANGED)
            if image is None:
                skipped[image_path] = "image not readable"
                continue
            label = np.full(image.shape[:2], _UNCOVERED, np.uint8)  # the background label is known at the end
            crowd = detections.data.get("iscrowd", np.zeros(len(detections), int))
            for mask, class_id, is_crowd in zip(detections.mask if len(detections) else [], detections.class_id,
                                               crowd):
                name = local[class_id]
                label[mask.astype(bool)] = 255 if is_crowd else ids.setdefault(name, len(ids))
                if len(ids) >= _UNCOVERED:
                    raise UsageError(f"{source}: more than {_UNCOVERED - 1} classes; label maps hold fewer")
            _link_image(image_path, root, split)
            _write_label(label, root, split, Path(image_path).stem)
            written[split].append(Path(image_path).stem)
        if skipped:
            listed = "; ".join(f"{k} ({v})" for k, v in list(skipped.items())[:5])
            print_log(f"{source}: {len(skipped)} files left out: {listed}", logger="current", level=30)
        if other:
            print_log(f"{source}: shapes that are no instances, not converted: "
                      + ", ".join(f"{n} {k}" for k, n in sorted(other.items())), logger="current", level=30)
        if not written[split]:
            raise UsageError(f"{source}: no image of {images} could be converted")
    found = sorted(ids)
    classes = list(stated or found)
    unknown = [n for n in found if n not in classes]
    if unknown:
        raise UsageError(f"{train[0]}: classes {unknown} are not in the data's class list ({', '.join(classes)})")
    background = next((n for n in classes if n in BACKGROUND_NAMES), None)
    if background is None:
        classes = ["background", *classes]
        background = "background"
    lut = np.arange(256, dtype=np.uint8)
    for name, value in ids.items():
        lut[value] = classes.index(name)
    lut[_UNCOVERED] = classes.index(background)
    for split, stems in written.items():
        for stem in stems:
            path = osp.join(root, "ann_dir", split, stem + ".png")
            _write_label(lut[cv2.imread(path, cv2.IMREAD_UNCHANGED)], root, split, stem)
    if len(classes) > _UNCOVERED:
        raise UsageError(f"{train[0]}: {len(classes)} classes; label maps hold at most {_UNCOVERED} here")
    _write_classes(root, classes)
    return classes


def is_voc_segmentation(folder: str) -> bool:
    return all(osp.isdir(osp.join(folder, sub)) for sub in ("JPEGImages", "SegmentationClass",
                                                              osp.join("ImageSets", "Segmentation")))


def _voc_labelmap(devkit: str) -> tuple[list[str], list[list[int]]]:
    """Class names and colours of a VOC folder: its labelmap.txt ("name:r,g,b:parts:actions" lines) or VOC's."""
    path = osp.join(devkit, "labelmap.txt")
    if not osp.isfile(path):
        from mmseg.datasets import PascalVOCDataset

        return list(PascalVOCDataset.METAINFO["classes"]), [list(c) for c in PascalVOCDataset.METAINFO["palette"]]
    names, colours = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        try:
            colours.append([int(v) for v in fields[1].split(",")])
        except (IndexError, ValueError):
            raise UsageError(f"{path}: line {number} is not name:r,g,b:parts:actions") from None
        names.append(fields[0])
    return names, colours


def voc_to_layout(devkit: str, root: str) -> list[str]:
    """Link a Pascal VOC segmentation folder into the custom layout at root (module doc); returns the classes."""
    classes, colours = _voc_labelmap(devkit)
    _fresh_layout(root)
    unknown = Counter()
    for split in ("train", "val"):
        listing = osp.join(devkit, "ImageSets", "Segmentation", f"{split}.txt")
        if not osp.isfile(listing):
            raise UsageError(f"{listing}: no such file (a VOC segmentation folder lists its {split} images there)")
        for stem in Path(listing).read_text().split():
            image = next((p for p in Path(devkit, "JPEGImages").glob(stem + ".*")), None)
            label_path = osp.join(devkit, "SegmentationClass", stem + ".png")
            if image is None or not osp.isfile(label_path):
                raise UsageError(f"{listing}: {stem} has no image in JPEGImages or no SegmentationClass/{stem}.png")
            _link_image(str(image), root, split)
            label = cv2.imread(label_path, cv2.IMREAD_UNCHANGED)
            if label is not None and label.ndim == 3:  # a colour PNG: colours -> indices
                rgb = label[..., 2::-1].reshape(-1, 3) if label.shape[2] >= 3 else label
                index = np.full(len(rgb), 255, np.uint8)
                known = np.zeros(len(rgb), bool)
                for value, colour in enumerate(colours):
                    hit = (rgb == colour).all(1)
                    index[hit], known[hit] = value, True
                known |= (rgb == VOC_VOID).all(1)
                if not known.all():
                    unknown[label_path] = int((~known).sum())
                _write_label(index.reshape(label.shape[:2]), root, split, stem)
            else:  # index PNG (palette or grey): mmseg reads the indices as they are
                target = osp.join(root, "ann_dir", split, stem + ".png")
                os.makedirs(osp.dirname(target), exist_ok=True)
                os.symlink(osp.abspath(label_path), target)
    if unknown:
        listed = "; ".join(f"{k} ({v} pixels)" for k, v in list(unknown.items())[:5])
        whose = "labelmap.txt" if osp.isfile(osp.join(devkit, "labelmap.txt")) else "VOC"
        print_log(f"{devkit}: colours that are no class of {whose} set to 255 (ignored) in {len(unknown)} label maps: "
                  f"{listed}", logger="current", level=30)
    _write_classes(root, classes)
    return classes


def _stamp(path: str) -> float:
    """The latest modification time of a file, or of a folder and the files in it (an edited label file changes
    its own time, not its folder's)."""
    if not osp.isdir(path):
        return osp.getmtime(path)
    with os.scandir(path) as entries:
        return max([osp.getmtime(path), *(entry.stat().st_mtime for entry in entries)])


def _once(root: str, sources: list[str], make) -> bool:
    """make() unless root already holds the layout made from the same sources (paths and modification times,
    _stamp): one process of a multi-process run converts, the others (waiting on a file lock) and a resumed run
    reuse it. Returns whether make() ran."""
    import fcntl
    import json

    key = json.dumps([[osp.abspath(p), _stamp(p)] for p in sources])
    marker = osp.join(root, ".converted_from")
    os.makedirs(root, exist_ok=True)
    with open(osp.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if osp.isfile(marker) and Path(marker).read_text() == key:
            return False
        make()
        atomic_write(marker, lambda tmp: Path(tmp).write_text(key))
        return True


def seg_data_root(data: str | None, work_dir: str, train: tuple[str, str] | None = None,
                  val: tuple[str, str] | None = None, fmt: str | None = None) -> str | None:
    """The custom-layout folder the tools read: --data DATA itself (None: no own data), a VOC segmentation
    folder linked into WORK_DIR/own_data (voc_to_layout), or --train-data / --val-data instance annotations
    rasterized there (instances_to_layout; val alone: evaluation of its own classes)."""
    root = osp.join(work_dir, "own_data")
    if train is not None or val is not None:
        if val is None:
            raise UsageError("--train-data needs --val-data ANNOTATIONS IMAGES too (the set validated on)")
        pairs = (train or val, val)
        if _once(root, [p for pair in pairs for p in pair], lambda: instances_to_layout(*pairs, root, fmt)):
            print(f"own data: {pairs[0][0]} and {val[0]} rasterized into {root}")
        return root
    if data is not None and is_voc_segmentation(data):
        sources = [data, *(osp.join(data, sub) for sub in ("SegmentationClass", osp.join("ImageSets", "Segmentation")))]
        if _once(root, sources, lambda: voc_to_layout(data, root)):
            print(f"own data {data}: Pascal VOC segmentation linked into {root}")
        return root
    return data
