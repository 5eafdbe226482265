"""tools/infer_det.py on generated images (one corrupt, one truncated, one missing) with a tiny-backbone demo model."""
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from tool_process import run_tool

from eva02.det.demo import make_shapes_dataset
from eva02.det.engine import setup_datasets
from eva02.det.predictor import DetPredictor

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/demo/eva02_Ti_det.py"


def infer_det(*args) -> subprocess.CompletedProcess:
    """tools/infer_det.py as a user runs it (in a process of its own, tests/support/tool_process.py)."""
    return run_tool(ROOT / "tools/infer_det.py", *args, timeout=600)


def tiny_overrides(data_root: Path) -> list[str]:
    return [
        "model.backbone.net.depth=2", "model.backbone.net.embed_dim=64", "model.backbone.net.num_heads=2",
        "model.backbone.net.mlp_hidden=170", "model.backbone.net.global_blocks=[1]",
        "model.proposal_generator.post_nms_topk=[100,10]",  # 10 RoIs per test image: the heads stay quick on a CPU
        # The config's dataset setup registers the class names; keep its generated data tiny and in tmp.
        f"dataloader.setup.root={data_root}", "dataloader.setup.num_train=2", "dataloader.setup.num_val=2",
    ]


@pytest.fixture(scope="module")
def inference_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    overrides = tiny_overrides(tmp / "data")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIG)), overrides)
    torch.manual_seed(0)
    weights = tmp / "tiny.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, weights)

    photos = tmp / "photos"
    paths = make_shapes_dataset(tmp / "shapes", num_train=0, num_val=3, image_size=128, seed=1)
    shutil.copytree(paths["val_images"], photos)
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(range(256)))
    truncated = (photos / "000001.png").read_bytes()
    (photos / "truncated.png").write_bytes(truncated[: len(truncated) // 3])
    (photos / "missing.png").symlink_to(tmp / "no_such_file.png")
    (photos / "notes.txt").write_text("not an image: ignored by extension")

    out = tmp / "out"
    proc = infer_det("--config-file", CONFIG, "--weights", weights, "--input", photos, "--output", out,
                     "--score-thresh", "0.2", "--device", "cpu", *overrides)
    return dict(cfg=cfg, weights=weights, photos=photos, out=out, proc=proc)


def test_infer_folder_skips_bad_images_and_writes_outputs(inference_run):
    out, proc = inference_run["out"], inference_run["proc"]
    assert proc.returncode == 1, proc.stderr[-3000:]  # done, but 3 images were unreadable
    assert "3 of 6 images done" in proc.stdout and "3 unreadable" in proc.stdout
    results = json.loads((out / "results.json").read_text())  # the inference tools' shared layout
    assert [Path(r["file_name"]).name for r in results["images"]] == ["000000.png", "000001.png", "000002.png"]
    assert [r["drawn"] for r in results["images"]] == ["000000.png", "000001.png", "000002.png"]
    assert results["unreadable_images"] == 3
    assert sorted(Path(f["file_name"]).name for f in results["unreadable_files"]) == [
        "corrupt.jpg", "missing.png", "truncated.png"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file_name"]).name for r in predictions["images"]] == ["000000.png", "000001.png", "000002.png"]
    assert [c["name"] for c in predictions["categories"]] == ["disk", "square", "triangle", "cross"]
    assert [r["detections"] for r in results["images"]] == [
        sum(a["image_id"] == r["id"] for a in predictions["annotations"]) for r in predictions["images"]]
    drawn = sorted(p.name for p in out.glob("*.png"))
    assert drawn == ["000000.png", "000001.png", "000002.png"]
    assert annotations_valid(predictions)


def annotations_valid(predictions) -> bool:
    anns = predictions["annotations"]
    assert anns, "the random-init model has class scores around 1/4, above the 0.2 threshold"
    ids = {c["id"] for c in predictions["categories"]}
    for ann in anns:
        assert ann["category_id"] in ids and ann["score"] >= 0.2 and len(ann["bbox"]) == 4
        assert mask_util.decode(ann["segmentation"]).shape == (128, 128)
        assert ann["area"] == pytest.approx(float(mask_util.area(ann["segmentation"])))
    return True


def test_infer_json_matches_the_model_and_drawing_shows_it(inference_run):
    """The json holds exactly what the Python predictor returns for the image, and the drawn image has it drawn."""
    out = inference_run["out"]
    setup_datasets(inference_run["cfg"])  # the class names: the checkpoint has none, the config's dataset has them
    predictor = DetPredictor(inference_run["cfg"], str(inference_run["weights"]), "cpu", 0.2, use_ema=False)
    image_path = inference_run["photos"] / "000001.png"
    bgr = cv2.imread(str(image_path))
    found = predictor(bgr, format="BGR")
    assert predictor(str(image_path)).scores.tolist() == found.scores.tolist()  # a path reads the same image
    predictions = json.loads((out / "predictions.json").read_text())
    image_id = next(r["id"] for r in predictions["images"] if r["file_name"] == str(image_path))
    anns = [a for a in predictions["annotations"] if a["image_id"] == image_id]
    assert len(anns) == len(found) > 0
    np.testing.assert_allclose([a["score"] for a in anns], found.scores, rtol=1e-5)
    np.testing.assert_allclose([a["category_id"] for a in anns], found.classes + 1)
    xywh = np.c_[found.boxes[:, :2], found.boxes[:, 2:] - found.boxes[:, :2]]
    np.testing.assert_allclose([a["bbox"] for a in anns], xywh, atol=1e-3)
    assert found.masks.shape == (len(found), 128, 128) and found.masks.dtype == bool
    assert [int(mask_util.area(a["segmentation"])) for a in anns] == found.masks.sum((1, 2)).tolist()
    assert found.class_names == [["disk", "square", "triangle", "cross"][c] for c in found.classes]
    drawn = cv2.imread(str(out / "000001.png"))
    assert drawn.shape == bgr.shape and np.abs(drawn.astype(int) - bgr.astype(int)).mean() > 1.0


def test_predictor_batches_give_the_single_image_results(inference_run):
    """predict() on a batch (images of two sizes, padded together) returns what one-by-one calls return."""
    predictor = DetPredictor(inference_run["cfg"], str(inference_run["weights"]), "cpu", 0.2)
    photos = inference_run["photos"]
    small = cv2.resize(cv2.imread(str(photos / "000002.png")), (96, 80))[:, :, ::-1].copy()
    images = [str(photos / "000000.png"), small, str(photos / "000001.png")]
    batched = predictor.predict(images, batch_size=3)
    for image, together in zip(images, batched):
        alone = predictor(image)
        np.testing.assert_allclose(together.scores, alone.scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(together.boxes, alone.boxes, atol=1e-2)
    assert batched[1].masks.shape[1:] == (80, 96)


def test_infer_single_image_and_missing_input(inference_run, tmp_path):
    def run(image, output, *flags_and_overrides):
        return infer_det("--config-file", CONFIG, "--weights", inference_run["weights"], "--device", "cpu",
                         "--input", image, "--output", output, *flags_and_overrides, *tiny_overrides(tmp_path / "data"))

    # key=value overrides reach the model: the sys post-processing (soft-NMS, maskness) on one image.
    proc = run(inference_run["photos"] / "000000.png", tmp_path / "one", "--score-thresh", "0.2",
               "model.roi_heads.nms_method=soft_gaussian", "model.roi_heads.maskness_thresh=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one/predictions.json").read_text())
    assert len(one["images"]) == 1 and one["annotations"]
    scores = [a["score"] for a in one["annotations"]]
    assert scores == sorted(scores, reverse=True)
    assert min(scores) < 0.2, "maskness (< 1) rescored detections after the 0.2 box-score threshold"
    assert run(inference_run["photos"] / "corrupt.jpg", tmp_path / "bad").returncode == 1
    missing = run(tmp_path / "no_such_dir", tmp_path / "x")
    assert missing.returncode == 2 and "no_such_dir: no such image or folder" in missing.stderr
    assert "Traceback" not in missing.stderr


def _one_line_error(proc) -> str:
    """The tool's answer to bad input: exit status 2 and one line (then the --debug hint), no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    message, hint = proc.stderr.strip().splitlines()[-2:]
    assert message.startswith("infer_det: ") and hint == "(--debug shows the traceback)"
    return message


@pytest.mark.parametrize("case", ["override typo", "class count", "foreign checkpoint", "garbage checkpoint",
                                  "missing config"])
def test_bad_input_is_one_line_naming_the_culprit(inference_run, tmp_path, case):
    weights, config, extra = inference_run["weights"], CONFIG, []
    if case == "override typo":
        extra, expected = ["model.roi_heads.num_clases=3"], "did you mean model.roi_heads.num_classes?"
    elif case == "class count":  # the config's dataset has the 4 shape classes
        extra, expected = ["model.roi_heads.num_classes=3"], "trained for 4 classes, the config builds 3"
    elif case == "foreign checkpoint":  # a segmentor's keys: not one weight of the detector would load
        weights = tmp_path / "upernet.pth"
        torch.save({"state_dict": {"backbone.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, weights)
        expected = "upernet.pth: none of the model's"
    elif case == "garbage checkpoint":
        weights = tmp_path / "garbage.pth"
        weights.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)))
        expected = "garbage.pth is not a checkpoint"
    else:
        config, expected = tmp_path / "eva02_Ti_dte.py", "eva02_Ti_dte.py: no such file"
    proc = infer_det("--config-file", config, "--weights", weights, "--input", inference_run["photos"] / "000000.png",
                     "--output", tmp_path / "out", "--device", "cpu", *tiny_overrides(tmp_path / "data"), *extra)
    assert expected in _one_line_error(proc)
    assert not (tmp_path / "out" / "predictions.json").exists() and not (tmp_path / "out" / "results.json").exists()
