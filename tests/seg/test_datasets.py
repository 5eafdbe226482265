"""Dataset layout errors, unreadable images, and the generated demo data."""
import logging
import os

import cv2
import numpy as np
import pytest
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

from eva02.seg.demo import SHAPES_CLASSES, make_shapes_dataset


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope("mmseg")


def ade(data_root, split="validation", **kw):
    return DATASETS.build(dict(type="CheckedADE20KDataset", data_root=str(data_root),
                               data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"),
                               pipeline=[], **kw))


def test_missing_data_root_names_the_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        ade(tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "images" / "validation") in msg
    assert "annotations/training/*.png" in msg and "data_root" in msg


def test_empty_image_folder_is_an_error(tmp_path):
    for d in ("images/validation", "annotations/validation"):
        (tmp_path / d).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no '\\*.jpg' images"):
        ade(tmp_path)


def test_coco_stuff_layout_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="_labelTrainIds.png"):
        DATASETS.build(dict(type="CheckedCOCOStuffDataset", data_root=str(tmp_path),
                            data_prefix=dict(img_path="images/val2017", seg_map_path="annotations/val2017")))


def test_unreadable_images_are_reported_and_skipped(tmp_path):
    root = make_shapes_dataset(str(tmp_path / "shapes"), num_train=2, num_val=3, size=96, progress=False)
    bad = os.path.join(root, "images", "validation", "00001.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    truncated = os.path.join(root, "images", "validation", "00002.jpg")
    whole = open(truncated, "rb").read()
    with open(truncated, "wb") as f:
        f.write(whole[: len(whole) // 2])
    assert cv2.imread(truncated) is not None  # decoded in part by cv2: the check must not rely on it
    records = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        ds = ade(root, check_images=True)
    finally:
        logger.removeHandler(handler)
    assert [os.path.basename(d["img_path"]) for d in ds] == ["00000.jpg"]
    assert any(f"skipping unreadable {bad}" in r.getMessage() for r in records)
    assert [problem.split(" (")[0] for problem in ds.unreadable] == [bad, truncated]
    assert "truncated" in ds.unreadable[1]
    assert len(ade(root)) == 3  # without the check the files are listed


def test_generated_shapes_follow_the_ade_convention(tmp_path):
    root = make_shapes_dataset(str(tmp_path / "s"), num_train=3, num_val=2, size=48, progress=False)
    labels = cv2.imread(os.path.join(root, "annotations", "training", "00000.png"), cv2.IMREAD_UNCHANGED)
    img = cv2.imread(os.path.join(root, "images", "training", "00000.jpg"))
    assert labels.shape == img.shape[:2] == (48, 48) and labels.dtype == np.uint8
    values = set(np.unique(labels).tolist())
    assert 0 in values and 1 in values  # boundary band (ignored) and background
    assert values <= set(range(len(SHAPES_CLASSES) + 1))
    ds = DATASETS.build(dict(type="ShapesDataset", data_root=root, pipeline=[
        dict(type="LoadAnnotations")], data_prefix=dict(img_path="images/training", seg_map_path="annotations/training")))
    seg = ds[0]["gt_seg_map"]
    assert set(np.unique(seg).tolist()) <= set(range(len(SHAPES_CLASSES))) | {255}  # reduce_zero_label
    # regenerating with the same seed is identical; existing data is kept
    again = make_shapes_dataset(str(tmp_path / "t"), num_train=3, num_val=2, size=48, progress=False)
    assert np.array_equal(cv2.imread(os.path.join(again, "annotations", "training", "00000.png"), 0), labels)
