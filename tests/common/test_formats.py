"""Own data in YOLO / Pascal VOC / LabelMe / CVAT files (eva02.common.formats, eva02.seg.own_formats): files
written by hand from a generated COCO dataset (tests/support/hand_formats.py, no library), converted, and the
classes, boxes and mask areas compared with the source objects."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from eva02.common import formats
from eva02.common.cli import UsageError
from eva02.common.formats import convert_to_coco, detect_format
from eva02.det.demo import make_shapes_dataset
from hand_formats import objects_by_image, polygon_area, write_split
from tool_process import run_tool

SOURCE_ORDER = ["disk", "square", "triangle", "cross"]  # make_shapes_dataset's category ids 1..4


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    paths = make_shapes_dataset(tmp / "coco", num_train=6, num_val=3, image_size=64, seed=5)
    coco = {split: json.loads(Path(paths[f"{split}_json"]).read_text()) for split in ("train", "val")}
    return tmp, paths, coco


def written(source, fmt, split="train"):
    """The source split written by hand in fmt (once per module): (ANNOTATIONS, IMAGES)."""
    tmp, paths, coco = source
    folder = tmp / f"{fmt}_{split}"
    if not folder.exists():
        _WRITTEN[folder] = write_split(fmt, coco[split], paths[f"{split}_images"], folder)
    return _WRITTEN[folder]


_WRITTEN = {}


def decoded(segmentation) -> np.ndarray:
    """A compressed COCO RLE, decoded by pycocotools."""
    return mask_utils.decode(dict(segmentation, counts=segmentation["counts"].encode()))


@pytest.mark.parametrize("fmt", ["yolo", "voc", "labelme", "cvat"])
def test_each_format_converts_to_the_source_objects(source, fmt, tmp_path):
    tmp, paths, coco = source
    annotations, images = written(source, fmt)
    assert detect_format(str(annotations)) == fmt
    conversion = convert_to_coco(str(annotations), str(images), str(tmp_path / "train.json"))
    out = json.loads((tmp_path / "train.json").read_text())
    # classes: the stated list where the format has one (YOLO's yaml, CVAT's labels), else the sorted names
    stated = fmt in ("yolo", "cvat")
    assert conversion.classes == (SOURCE_ORDER if stated else sorted(SOURCE_ORDER))
    assert [c["name"] for c in sorted(out["categories"], key=lambda c: c["id"])] == conversion.classes
    want, got = objects_by_image(coco["train"]), objects_by_image_any(out)
    assert sorted(got) == sorted(want) and conversion.images == len(want)
    for file_name, (image, objects) in want.items():
        converted = got[file_name]
        assert Counter(name for name, _, _ in objects) == Counter(a["name"] for a in converted)
        for name, polygon, box in objects:
            match = min((a for a in converted if a["name"] == name), key=lambda a: np.abs(
                np.subtract(a["bbox"], box)).sum())
            tolerance = 1.0 if fmt == "voc" else 0.01  # VOC: whole-pixel boxes; others: the polygon's extent
            np.testing.assert_allclose(match["bbox"], box, atol=tolerance)
            assert match["iscrowd"] == 0
            if fmt == "voc":
                assert "segmentation" not in match  # boxes only
                continue
            # the mask covers the polygon: its area within a one-pixel band along the outline
            perimeter = sum(np.hypot(*np.subtract(polygon[i], polygon[i - 1])) for i in range(len(polygon)))
            mask = decoded(match["segmentation"])
            assert mask.shape == (image["height"], image["width"]) and mask.sum() == match["area"]
            assert abs(match["area"] - polygon_area(polygon)) <= perimeter, (name, match["area"])
            ys, xs = np.nonzero(mask)  # the pixels lie in the source box (to the pixel rasterization rounds to)
            assert box[0] - 1 <= xs.min() and xs.max() <= box[0] + box[2] + 1
            assert box[1] - 1 <= ys.min() and ys.max() <= box[1] + box[3] + 1
    if fmt == "cvat":
        assert conversion.other_shapes == Counter(polyline=1)  # the hand-written polyline: counted, not converted


def objects_by_image_any(coco: dict) -> dict:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_id = {img["id"]: img["file_name"] for img in coco["images"]}
    out = {name: [] for name in by_id.values()}
    for a in coco["annotations"]:
        out[by_id[a["image_id"]]].append(dict(a, name=names[a["category_id"]]))
    return out


def test_validation_set_uses_the_training_classes_and_voc_difficult_is_ignored_there(source, tmp_path):
    train = convert_to_coco(*map(str, written(source, "voc")), str(tmp_path / "train.json"))
    val_ann, val_images = written(source, "voc", "val")
    val = convert_to_coco(str(val_ann), str(val_images), str(tmp_path / "val.json"), classes=train.classes,
                          split="val")
    assert val.classes == train.classes
    out = json.loads((tmp_path / "val.json").read_text())
    first = {}  # the hand writer marks each image's first object difficult
    for a in out["annotations"]:
        first.setdefault(a["image_id"], a)
    assert all(a["iscrowd"] == (a is first[a["image_id"]]) for a in out["annotations"])
    trained = json.loads((tmp_path / "train.json").read_text())
    assert {a["iscrowd"] for a in trained["annotations"]} == {0}  # in training, ordinary objects
    with pytest.raises(UsageError, match=r"classes \['cross'\] are not in the training set's class list"):
        convert_to_coco(str(val_ann), str(val_images), str(tmp_path / "v2.json"), classes=["disk", "square", "triangle"])


def test_a_multi_part_labelme_object_is_one_object_and_never_a_crowd(tmp_path):
    """supervision's COCO writer would mark a two-part mask iscrowd=1 (an ignore region); we write 0."""
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    parts = [[[2, 2], [10, 2], [10, 10], [2, 10]], [[20, 5], [30, 5], [30, 20], [20, 20]]]
    shapes = [{"label": "car", "points": p, "group_id": 1, "shape_type": "polygon", "flags": {}} for p in parts]
    (tmp_path / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": "a.png", "imageData": None,
                                                 "imageHeight": 30, "imageWidth": 40}))
    convert_to_coco(str(tmp_path), str(tmp_path), str(tmp_path / "out.json"))
    (annotation,) = json.loads((tmp_path / "out.json").read_text())["annotations"]
    assert annotation["iscrowd"] == 0
    np.testing.assert_allclose(annotation["bbox"], [2, 2, 28, 18])
    mask = decoded(annotation["segmentation"])
    assert annotation["area"] == mask.sum() == 9 * 9 + 11 * 16  # both parts' pixels, outlines included
    assert mask[2:11, 2:11].all() and mask[5:21, 20:31].all()


def test_reading_in_chunks_gives_the_same_file_and_bad_files_are_left_out_by_name(source, tmp_path, monkeypatch):
    annotations, images = written(source, "labelme")
    whole = convert_to_coco(str(annotations), str(images), str(tmp_path / "whole.json"))
    monkeypatch.setattr(formats, "CHUNK", 2)
    chunked = convert_to_coco(str(annotations), str(images), str(tmp_path / "chunked.json"))
    assert (tmp_path / "whole.json").read_text() == (tmp_path / "chunked.json").read_text()
    assert whole.images == chunked.images == 6
    broken = sorted(Path(annotations).glob("*.json"))[2]
    broken.write_text("{not json")
    partial = convert_to_coco(str(annotations), str(images), str(tmp_path / "partial.json"))
    assert partial.images == 5 and list(partial.skipped) == [str(broken)]
    assert "left out" in partial.summary() and broken.name in partial.summary()


def test_mistakes_are_one_line_naming_the_file(source, tmp_path):
    tmp, paths, coco = source
    labels, images = written(source, "yolo")
    (labels.parent / "data.yaml").rename(labels.parent / "data.yaml.away")
    try:
        with pytest.raises(UsageError, match="YOLO labels need their class names"):
            convert_to_coco(str(labels), str(images), str(tmp_path / "x.json"))
    finally:
        (labels.parent / "data.yaml.away").rename(labels.parent / "data.yaml")
    (tmp_path / "bad.xml").write_text("<annotations><image")
    with pytest.raises(UsageError, match="bad.xml: not a readable xml"):
        convert_to_coco(str(tmp_path / "bad.xml"), str(images), str(tmp_path / "x.json"))
    with pytest.raises(UsageError, match="no such file or folder"):
        detect_format(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not an annotation format read here"):
        detect_format(str(tmp_path / "empty"))


def test_convert_tool_writes_coco_and_the_segmentation_layout(source, tmp_path):
    tmp, paths, coco = source
    (train_ann, train_img), (val_ann, val_img) = written(source, "cvat"), written(source, "cvat", "val")
    data = ["--train-data", train_ann, train_img, "--val-data", val_ann, val_img]
    proc = run_tool("tools/convert_data.py", *data, "--output", tmp_path / "coco", check=True)
    assert "cvat -> " in proc.stdout and "classes (category ids 1..4): disk, square, triangle, cross" in proc.stdout
    assert json.loads((tmp_path / "coco" / "val.json").read_text())["categories"][3]["name"] == "cross"
    run_tool("tools/convert_data.py", *data, "--output", tmp_path / "seg", "--to", "seg", check=True)
    classes = (tmp_path / "seg" / "classes.txt").read_text().split()
    assert classes == ["background", *SOURCE_ORDER]
    # every label map: each class's pixel count is the area of that class's source polygons (shapes do not overlap)
    for file_name, (image, objects) in objects_by_image(coco["val"]).items():
        label = np.asarray(Image.open(tmp_path / "seg" / "ann_dir" / "val" / (Path(file_name).stem + ".png")))
        assert label.shape == (image["height"], image["width"])
        assert (tmp_path / "seg" / "img_dir" / "val" / file_name).resolve() == Path(val_img, file_name).resolve()
        for name in SOURCE_ORDER:
            polygons = [p for n, p, _ in objects if n == name]
            want = sum(polygon_area(p) for p in polygons)
            slack = sum(sum(np.hypot(*np.subtract(p[i], p[i - 1])) for i in range(len(p))) for p in polygons)
            assert abs(int((label == classes.index(name)).sum()) - want) <= slack
        assert set(np.unique(label)) <= set(range(len(classes)))
    missing = run_tool("tools/convert_data.py", "--train-data", train_ann, train_img, "--output", tmp_path / "x", "--to",
                       "seg", check=False)
    assert missing.returncode == 2 and "--to seg needs --val-data" in missing.stderr


def test_a_malformed_cvat_shape_leaves_out_its_image_only(source, tmp_path):
    annotations, images = written(source, "cvat")
    broken = tmp_path / "annotations.xml"
    broken.write_text(annotations.read_text().replace('points="', 'points="x,', 1))  # the first image's first polygon
    conversion = convert_to_coco(str(broken), str(images), str(tmp_path / "out.json"))
    first = sorted(objects_by_image(source[2]["train"]))[0]
    assert conversion.images == 5 and list(conversion.skipped) == [f"{broken} <image name={first!r}>"]
    assert conversion.skipped[f"{broken} <image name={first!r}>"].startswith("ValueError")


def test_label_files_without_their_image_are_named(source, tmp_path):
    labels, images = written(source, "yolo")
    (tmp_path / "one").mkdir()
    kept = sorted(Path(images).glob("*.png"))[0]
    (tmp_path / "one" / kept.name).symlink_to(kept)
    conversion = convert_to_coco(str(labels), str(tmp_path / "one"), str(tmp_path / "out.json"))
    assert conversion.images == 1
    assert sorted(conversion.skipped) == sorted(str(p) for p in Path(labels).glob("*.txt") if p.stem != kept.stem)
    assert all(reason == f"no image of this name in {tmp_path / 'one'}" for reason in conversion.skipped.values())
