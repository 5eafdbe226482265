"""Own detection data in YOLO / Pascal VOC / LabelMe / CVAT files through tools/train_det.py and tools/test_det.py as
a user runs them (files written by hand: tests/support/hand_formats.py), and what a training run shows: TensorBoard
events read back with tensorboard's own reader, curves.png."""
import json
from pathlib import Path

import pytest

from eva02.common.runlog import read_image_tags, read_scalars
from hand_formats import data_args
from tool_process import run_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/demo/eva02_Ti_det.py"
TINY = ["model.backbone.net.depth=2", "model.backbone.net.embed_dim=64", "model.backbone.net.num_heads=2",
        "model.backbone.net.mlp_hidden=170", "model.backbone.net.global_blocks=[1]",
        "model.proposal_generator.post_nms_topk=[100,10]", "dataloader.train.num_workers=0",
        "dataloader.train.total_batch_size=2", "train.checkpointer.period=1000", "train.log_period=1",
        "train.save_predictions=0"]

# every box of a detector (100 proposals, score threshold 0)
EVERY_BOX = ["model.proposal_generator.post_nms_topk=[100,100]",
             *[f"model.roi_heads.box_predictors.{i}.test_score_thresh=0.0" for i in range(3)]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(folder, fmt -> --train-data / --val-data arguments of generated shapes written by hand in fmt)."""
    tmp = tmp_path_factory.mktemp("det_formats")
    return tmp, data_args(tmp, seed=7)


def train(args, out, *extra):
    proc = run_tool(ROOT / "tools/train_det.py", "--config-file", CONFIG, "--output", out, *args, *TINY, *extra)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("fmt", ["yolo", "voc", pytest.param("labelme", marks=pytest.mark.slow),
                                 pytest.param("cvat", marks=pytest.mark.slow)])
def test_train_one_iteration_on_each_format_and_see_it_in_tensorboard(data, fmt):
    tmp, written = data
    out = tmp / f"run_{fmt}"
    log = train(written(fmt), out, "train.max_iter=2", "train.eval_period=1", "train.log_images=2")
    assert f"own data: train set {fmt} -> {out / 'own_data' / 'train.json'}: 6 images" in log
    masks = fmt != "voc"
    assert ("boxes only (no masks in the data): the mask head is off" in log) is not masks
    scalars = read_scalars(str(out))
    for tag in ("total_loss", "loss_cls_stage0", "loss_rpn_cls", "lr", "bbox/AP", "images_per_second", "memory_mib",
                *(["loss_mask", "segm/AP"] if masks else [])):
        assert tag in scalars, (tag, sorted(scalars))
    assert ("loss_mask" in scalars) is masks
    assert [step for step, _ in scalars["total_loss"]] == [0, 1] and len(scalars["bbox/AP"]) == 2  # each eval
    images = read_image_tags(str(out))
    assert len(images) == 2 and all(tag.startswith("predictions/") for tag in images)
    assert all(len(steps) == 2 for steps in images.values())  # drawn at each evaluation
    assert (out / "curves.png").stat().st_size > 10_000 and f"training curves: {out / 'curves.png'}" in log


@pytest.mark.parametrize("fmt", ["yolo", pytest.param("voc", marks=pytest.mark.slow),
                                 pytest.param("labelme", marks=pytest.mark.slow),
                                 pytest.param("cvat", marks=pytest.mark.slow)])
def test_evaluating_a_format_equals_evaluating_its_coco_conversion(data, fmt):
    """A detector trained on the files (40 steps: AP50 above 0) scores the same on them and on
    tools/convert_data.py's COCO file of them."""
    tmp, written = data
    args = written(fmt)
    train(args, tmp / f"trained_{fmt}", "train.max_iter=40", "optimizer.lr=1e-3", "lr_multiplier.warmup_length=0.0",
          "train.log_period=20", *EVERY_BOX[:1])
    weights = tmp / f"trained_{fmt}" / "model_final.pth"
    converted = tmp / f"{fmt}_coco"
    run_tool(ROOT / "tools/convert_data.py", *args, "--output", converted, check=True)
    results = []
    for val in (args[3:], ["--val-data", converted / "val.json", args[5]]):
        out = tmp / f"eval_{fmt}_{len(results)}"
        proc = run_tool(ROOT / "tools/test_det.py", "--config-file", CONFIG, "--weights", weights, "--output", out,
                        *val, *TINY, *EVERY_BOX)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        results.append(json.loads((out / "results.json").read_text()))
    tasks = ["bbox"] if fmt == "voc" else ["bbox", "segm"]  # VOC: boxes only
    assert sorted(k for k in results[0] if k in ("bbox", "segm")) == tasks
    for task in tasks:
        assert results[0][task] == results[1][task]
        assert results[0][task]["AP50"] > 0  # a comparison of some matches


def test_wandb_without_the_package_is_one_line(data, tmp_path):
    try:  # wandb is not installed with eva02: the flag says how to get it
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    tmp, written = data
    proc = run_tool(ROOT / "tools/train_det.py", "--config-file", CONFIG, "--output", tmp_path, "--wandb", "eva02",
                    *TINY, "train.max_iter=1")
    assert proc.returncode == 2 and "--wandb needs the wandb package: pip install wandb" in proc.stderr


def test_cvat_coco_export_is_read_as_coco(tmp_path):
    """CVAT's "COCO 1.0" export as CVAT writes it (written by hand): ids from 1, `segmentation: []` for a box, an
    `attributes` dict, licenses and info; boxes only -> no mask branch."""
    from eva02.det.own_data import check_coco_json, mask_kinds

    export = {"licenses": [{"name": "", "id": 0, "url": ""}], "info": {"contributor": "", "version": ""},
              "categories": [{"id": 1, "name": "car", "supercategory": ""},
                             {"id": 2, "name": "bus", "supercategory": ""}],
              "images": [{"id": 1, "width": 64, "height": 48, "file_name": "a.jpg", "license": 0, "flickr_url": "",
                          "coco_url": "", "date_captured": 0}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "segmentation": [], "area": 120.0,
                               "bbox": [4.0, 5.0, 12.0, 10.0], "iscrowd": 0,
                               "attributes": {"occluded": False, "rotation": 0.0}}]}
    path = tmp_path / "instances_default.json"
    path.write_text(json.dumps(export))
    report = check_coco_json(str(path), "val")
    assert report.classes == ["car", "bus"] and not report.bad
    assert mask_kinds(str(path)) == set()
