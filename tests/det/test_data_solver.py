"""Generated shapes data, dataset registration errors, and the optimizer's layer-decay groups."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from pycocotools import mask as mask_util

from eva02.common.shapes import SHAPE_CLASSES
from eva02.det.data import DATASET_LAYOUT, register_all
from eva02.det.demo import make_shapes_dataset
from eva02.det.lvis import FedLossClassWeights, NUM_LVIS_CLASSES
from eva02.det.solver import layer_decay_param_groups


def test_shapes_dataset_is_deterministic_and_consistent(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", num_train=4, num_val=2, image_size=96, seed=3)
    b = make_shapes_dataset(tmp_path / "b", num_train=4, num_val=2, image_size=96, seed=3)
    ja, jb = (json.loads(open(p["train_json"]).read()) for p in (a, b))
    assert ja == jb and len(ja["images"]) == 4 and [c["name"] for c in ja["categories"]] == list(SHAPE_CLASSES)
    assert ja["annotations"], "no shapes drawn"
    for ann in ja["annotations"]:
        rle = mask_util.frPyObjects(ann["segmentation"], 96, 96)
        x, y, w, h = mask_util.toBbox(mask_util.merge(rle))
        assert np.allclose([x, y, w, h], ann["bbox"], atol=1.5), ann  # box = extent of the polygon mask
        assert ann["area"] == pytest.approx(float(mask_util.area(mask_util.merge(rle))), rel=0.15)


def test_missing_dataset_names_path_and_layout(tmp_path, monkeypatch):
    register_all()
    for name in ("coco_2017_val", "lvis_v1_val", "objects365_v2_val", "coco_2017_test-dev"):
        with pytest.raises(FileNotFoundError) as err:
            DatasetCatalog.get(name)
        assert name in str(err.value) and DATASET_LAYOUT in str(err.value) and ".json" in str(err.value)


def test_layer_decay_groups(make_config, tmp_path):
    """lr = base * rate ** (depth + 1 - layer id); weight decay on every parameter (official detection rule)."""
    from eva02.det.engine import build_model

    cfg = make_config("configs/coco/eva02_B_bsl.py", tmp_path)
    model = build_model(cfg, "cpu")
    groups = layer_decay_param_groups(model, base_lr=1e-4, weight_decay=0.1, lr_decay_rate=0.7)
    lr_of = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert all(g["weight_decay"] == 0.1 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    depth = 2
    assert lr_of["backbone.net.pos_embed"] == pytest.approx(1e-4 * 0.7 ** (depth + 1))
    assert lr_of["backbone.net.blocks.1.norm1.weight"] == pytest.approx(1e-4 * 0.7 ** (depth - 1))
    assert lr_of["roi_heads.box_predictor.2.cls_score.weight"] == pytest.approx(1e-4)
    assert lr_of["backbone.simfp_2.0.weight"] == pytest.approx(1e-4)


def test_fed_loss_weights_are_lvis_image_counts_sqrt():
    w = FedLossClassWeights(0.5)()
    assert w.shape == (NUM_LVIS_CLASSES,) == (1203,)
    from detectron2.data.datasets.lvis_v1_category_image_count import LVIS_CATEGORY_IMAGE_COUNT
    first = min(LVIS_CATEGORY_IMAGE_COUNT, key=lambda c: c["id"])
    assert w[0] == pytest.approx(first["image_count"] ** 0.5) and torch.all(w >= 1)


def test_training_set_check_fails_on_missing_files_and_drops_degenerate_annotations(tmp_path, caplog):
    from detectron2.structures import BoxMode

    from eva02.det.data import check_training_dataset

    present = tmp_path / "a.png"
    present.write_bytes(b"")

    def record(name, *annotations):
        return {"file_name": str(tmp_path / name), "annotations": [
            {"bbox": list(box), "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": polygons}
            for box, polygons in annotations]}

    square = [[0, 0, 4, 0, 4, 4, 0, 4]]
    dicts = [record("a.png", ((0, 0, 4, 4), square), ((1, 1, 0, 5), square), ((0, 0, 3, 3), [[0, 0, 3, 3]])),
             record("a.png", ((2, 2, 4, 4), square))]
    checked = check_training_dataset(dicts, "toy")
    assert [len(r["annotations"]) for r in checked] == [1, 1]  # the zero-width box and the 2-point polygon
    assert "dropped 2 degenerate annotations" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"toy: 2 of 3 image files .*gone.png"):
        check_training_dataset([dicts[0], record("gone.png"), record("gone2.png")], "toy")
    with pytest.raises(ValueError, match="toy: no usable annotation in 1 images"):
        check_training_dataset([record("a.png", ((0, 0, 0, 0), square))], "toy")
