"""Your own COCO-format data (eva02.det.own_data), fine-tuning from a detector of other classes, and detection
test-time augmentation (eva02.det.tta), through tools/train_det.py and tools/test_det.py as a user runs them."""
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data.detection_utils import read_image

from eva02.common.cli import UsageError
from eva02.det.demo import make_shapes_dataset
from eva02.det.own_data import check_coco_json
from eva02.det.predictor import DetPredictor
from tool_process import run_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/demo/eva02_Ti_det.py"
TINY = ["model.backbone.net.depth=2", "model.backbone.net.embed_dim=64", "model.backbone.net.num_heads=2",
        "model.backbone.net.mlp_hidden=170", "model.backbone.net.global_blocks=[1]",
        "model.proposal_generator.post_nms_topk=[100,10]"]
SHAPES = ["disk", "square", "triangle", "cross"]


def train_det(*args) -> subprocess.CompletedProcess:
    return run_tool(ROOT / "tools/train_det.py", *args, timeout=900)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def own_dataset(root: Path) -> dict:
    """The generated shapes as a user's own 3-class dataset: categories renamed and re-ordered (square, disk,
    star = the triangles), crosses removed; two broken training annotations (a zero-area box, a 2-point polygon)."""
    paths = make_shapes_dataset(root, num_train=6, num_val=3, image_size=64, seed=3)
    new_ids = {2: 1, 1: 2, 3: 3}  # square -> 1, disk -> 2, triangle -> 3 ("star")
    for split in ("train", "val"):
        data = json.loads(Path(paths[f"{split}_json"]).read_text())
        data["categories"] = [{"id": 1, "name": "square"}, {"id": 2, "name": "disk"}, {"id": 3, "name": "star"}]
        data["annotations"] = [dict(a, category_id=new_ids[a["category_id"]]) for a in data["annotations"]
                               if a["category_id"] in new_ids]
        if split == "train":
            data["annotations"][0]["bbox"][2] = 0.0
            data["annotations"][1]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
        write_json(Path(paths[f"{split}_json"]), data)
    return paths


def test_check_coco_json_names_each_broken_entry(tmp_path, caplog):
    image = {"id": 7, "file_name": "a.png", "height": 10, "width": 10}
    good = {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 5, 1, 5, 5]]}
    broken = [dict(good, id=2, bbox=[1, 1, 0, 3]), dict(good, id=3, segmentation=[[1, 1, 5, 1, 5]]),
              dict(good, id=4, bbox=[1, float("nan"), 2, 2]), dict(good, id=5, segmentation=[[1, 1, 2, 2]])]
    data = {"images": [image], "annotations": [good, *broken], "categories": [{"id": 1, "name": "thing"}]}
    path = write_json(tmp_path / "train.json", data)
    with caplog.at_level(logging.WARNING):
        report = check_coco_json(str(path), "train")
    assert sorted(report.bad) == [2, 3, 4, 5] and report.classes == ["thing"]
    assert "4 of 5 annotations left out of training" in caplog.text and "annotation 3: polygon of 5" in caplog.text
    assert "zero area (image a.png)" in report.bad[2]
    with pytest.raises(UsageError, match="4 broken ground-truth annotations .*annotation 2: bbox"):
        check_coco_json(str(path), "val")
    for change, expected in [({"category_id": 9}, "annotation 1 has category_id 9"),
                             ({"image_id": 8}, "annotation 1 has image_id 8")]:
        bad = write_json(tmp_path / "bad.json", dict(data, annotations=[dict(good, **change)]))
        with pytest.raises(UsageError, match=expected):
            check_coco_json(str(bad), "train")
    with pytest.raises(UsageError, match="no 'categories' list"):
        check_coco_json(str(write_json(tmp_path / "x.json", {"images": [], "annotations": []})), "train")


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A 4-class checkpoint (the shapes' classes, stored in it) fine-tuned on the 3-class own data with lr 0, so
    the final class rows are what the start re-laid; then evaluated with and without TTA."""
    tmp = tmp_path_factory.mktemp("own")
    paths = own_dataset(tmp / "data")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIG)), TINY)
    torch.manual_seed(0)
    start = tmp / "shapes_4_classes.pth"
    torch.save({"model": instantiate(cfg.model).state_dict(), "classes": SHAPES}, start)
    out = tmp / "run"
    data = ["--train-data", paths["train_json"], paths["train_images"],
            "--val-data", paths["val_json"], paths["val_images"]]
    proc = train_det("--config-file", CONFIG, "--weights", start, "--output", out, *data, *TINY,
                     "train.max_iter=2", "train.checkpointer.period=1000", "train.save_predictions=0",
                     "optimizer.lr=0.0", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0")
    return dict(tmp=tmp, paths=paths, start=start, out=out, proc=proc, data=data)


def test_fine_tuning_on_own_data_relays_the_class_heads(fine_tuned):
    proc, out = fine_tuned["proc"], fine_tuned["out"]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "own data: 3 classes from" in log and "square, disk, star" in log
    assert "2 of" in log and "annotations left out of training" in log  # the zero-area box and 2-point polygon
    for stage in range(3):
        assert (f"roi_heads.box_predictor.{stage}.cls_score: checkpoint 4 classes -> model 3; 2 carried over by "
                f"name (square, disk), the rest start from their initialization; its 1 background / no-object row(s) "
                f"carried over" in log)
    assert "roi_heads.mask_head.predictor: checkpoint 4 classes -> model 3; 2 carried over by name" in log
    start = torch.load(fine_tuned["start"])["model"]
    final = torch.load(out / "model_final.pth")
    assert final["classes"] == ["square", "disk", "star"]
    for key in ("roi_heads.box_predictor.2.cls_score.weight", "roi_heads.mask_head.predictor.weight"):
        old, new = start[key], final["model"][key]
        assert new.shape[0] == old.shape[0] - 1
        torch.testing.assert_close(new[0], old[1], rtol=0, atol=0)  # square: row 1 of the shapes
        torch.testing.assert_close(new[1], old[0], rtol=0, atol=0)  # disk: row 0
        assert not torch.equal(new[2], old[2])  # star is new: its own initialization
    torch.testing.assert_close(final["model"]["roi_heads.box_predictor.0.cls_score.bias"][-1],
                               start["roi_heads.box_predictor.0.cls_score.bias"][-1], rtol=0, atol=0)  # background
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"bbox", "segm", "seconds_per_image"} and results["unreadable_images"] == 0


def test_tta_evaluation_through_the_evaluator(fine_tuned):
    out = fine_tuned["tmp"] / "tta"
    proc = run_tool(ROOT / "tools/test_det.py", "--config-file", CONFIG, "--weights",
                    fine_tuned["out"] / "model_final.pth", "--output", out, "--val-data", *fine_tuned["data"][4:],
                    "--tta", *TINY, "dataloader.tta.sizes=[48,64,80]", "train.save_predictions=0")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "test-time augmentation: sizes [48, 64, 80], each also flipped, merged by soft_linear at IoU 0.6" in log
    results = json.loads((out / "results.json").read_text())
    assert "AP" in results["bbox"] and results["seconds_per_image"] > 0


def test_tta_of_one_size_is_the_model_and_flip_is_mirrored(fine_tuned):
    """TTA at the test size without flip returns exactly the model's own (sys) inference; with flips, the TTA of a
    mirrored image is the mirrored TTA of the image (boxes, scores, masks)."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIG)), TINY)
    cfg.model.roi_heads.num_classes = 3
    cfg.model.roi_heads.update(nms_method="soft_linear", maskness_thresh=0.5)  # the paper's sys inference
    for predictor in cfg.model.roi_heads.box_predictors:
        predictor.update(test_nms_thresh=0.6, test_score_thresh=0.05)
    weights = str(fine_tuned["out"] / "model_final.pth")
    image = read_image(str(Path(fine_tuned["paths"]["val_images"]) / "000000.png"), format="RGB")
    size = image.shape[1]  # 64: the config's test transform resizes it to 128
    plain = DetPredictor(cfg, weights, "cpu")(image)
    cfg.dataloader.tta.update(sizes=[128], flip=False)
    one = DetPredictor(cfg, weights, "cpu", tta=True)(image)
    assert len(plain) == len(one) > 0
    np.testing.assert_array_equal(one.scores, plain.scores)
    np.testing.assert_array_equal(one.boxes, plain.boxes)
    np.testing.assert_array_equal(one.masks, plain.masks)

    cfg.dataloader.tta.update(sizes=[96, 128, 160], flip=True)
    tta = DetPredictor(cfg, weights, "cpu", tta=True)
    found, mirrored = tta(image), tta(image[:, ::-1].copy())
    assert len(found) == len(mirrored) > len(plain)  # the union of 6 passes, soft-NMS keeps every survivor
    np.testing.assert_allclose(mirrored.scores, found.scores, rtol=1e-4, atol=1e-6)
    unmirrored = np.c_[size - mirrored.boxes[:, 2], mirrored.boxes[:, 1], size - mirrored.boxes[:, 0],
                       mirrored.boxes[:, 3]]
    np.testing.assert_allclose(unmirrored, found.boxes, atol=1e-3)
    assert (mirrored.masks[:, :, ::-1] != found.masks).mean() < 1e-3


def test_own_data_mistakes_are_one_line(fine_tuned, tmp_path):
    paths = fine_tuned["paths"]
    Path(paths["train_images"], "000001.png").rename(tmp_path / "moved.png")
    try:
        proc = train_det("--config-file", CONFIG, "--weights", fine_tuned["start"], "--output", tmp_path / "run",
                         *fine_tuned["data"], *TINY, "train.max_iter=1")
    finally:
        (tmp_path / "moved.png").rename(Path(paths["train_images"], "000001.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1 of 6 image files named in its annotations do not exist" in proc.stderr and "000001.png" in proc.stderr
    alone = train_det("--config-file", CONFIG, "--output", tmp_path / "x", "--train-data", paths["train_json"],
                      paths["train_images"])
    assert alone.returncode == 2 and "--train-data needs --val-data ANNOTATIONS IMAGES too" in alone.stderr


def test_lvis_config_on_own_data_trains_with_its_federated_loss(fine_tuned, make_config, tmp_path):
    """An LVIS config on 3-class own data: federated-loss weights are the json's image counts ** 0.5 (counted here
    with pycocotools) and one training iteration and the evaluation run."""
    from pycocotools.coco import COCO

    from eva02.det.engine import run
    from eva02.det.own_data import use_own_data

    paths = fine_tuned["paths"]
    cfg = make_config("configs/lvis/eva02_B_bsl.py", tmp_path)
    classes = use_own_data(cfg.model, cfg.dataloader, (paths["train_json"], paths["train_images"]),
                           (paths["val_json"], paths["val_images"]))
    predictor = cfg.model.roi_heads.box_predictors[0]
    assert cfg.model.roi_heads.num_classes == 3 and predictor.fed_loss_num_classes == 3
    coco = COCO(paths["train_json"])
    expected = [len(coco.getImgIds(catIds=[c])) ** 0.5 for c in sorted(coco.getCatIds())]
    torch.testing.assert_close(instantiate(predictor.get_fed_loss_cls_weights)(), torch.tensor(expected))
    metrics = run(cfg)
    assert torch.isfinite(torch.tensor(metrics["total_loss"][0]))
    assert classes == ["square", "disk", "star"]
    assert "AP" in json.loads((tmp_path / "results.json").read_text())["bbox"]


def test_a_config_of_your_own_inherits_ours(fine_tuned, tmp_path):
    """docs/own-data.md's own-config form: one of our configs loaded, pointed at the data, a value changed."""
    from eva02.det.config import load_config

    paths = fine_tuned["paths"]
    mine = tmp_path / "my_config.py"
    mine.write_text(f"""
from detectron2.config import LazyConfig
from eva02.det.own_data import use_own_data
globals().update(LazyConfig.load("{CONFIG}"))
use_own_data(model, dataloader, ("{paths['train_json']}", "{paths['train_images']}"),
             ("{paths['val_json']}", "{paths['val_images']}"))
train.max_iter = 5000
""")
    cfg = load_config(str(mine), ["train.log_period=7"])
    assert cfg.model.roi_heads.num_classes == 3 and cfg.train.max_iter == 5000 and cfg.train.log_period == 7
    assert (cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names) == ("own_train", "own_val")
    assert cfg.model.backbone.net.arch == "eva02_Ti"  # the rest is the inherited config's
