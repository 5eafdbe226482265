"""One training iteration and one evaluation of each config family, backbone shrunk to depth 2 / width 64,
on generated shapes data (64 px). Real detectron2 code paths: data loader, LSJ, losses, optimizer with layer
decay, evaluator."""
import json

import pytest
import torch

from eva02.common.shapes import SHAPE_CLASSES
from eva02.det.checkpoint import EVACheckpointer
from eva02.det.engine import build_model, do_test, run

FAMILIES = {
    # family: (config, train / test dataset, classes: the shapes; LVIS keeps its 1203 for the federated loss)
    "coco_bsl": ("configs/coco/eva02_B_bsl.py", "shapes_t", len(SHAPE_CLASSES)),
    "coco_sys": ("configs/coco/eva02_L_sys.py", "shapes_t", len(SHAPE_CLASSES)),
    "lvis": ("configs/lvis/eva02_L_sys.py", "shapes_lvis_v1", None),
    "o365": ("configs/o365/eva02_L.py", "shapes_t", len(SHAPE_CLASSES)),
}


def _train_and_eval(make_config, config, prefix, classes, out, amp_and_checkpointing=False, **train):
    cfg = make_config(config, out, f"{prefix}_train", f"{prefix}_val", num_classes=classes)
    cfg.train.update(train)
    if amp_and_checkpointing:  # the tables' fp16 AMP (bfloat16 autocast on the CPU) + activation checkpointing
        cfg.train.amp.enabled = True
        cfg.model.backbone.net.use_checkpoint = True
    metrics = run(cfg)
    assert metrics["total_loss"][0] > 0 and torch.isfinite(torch.tensor(metrics["total_loss"][0]))
    with open(out / "results.json") as f:
        results = json.load(f)
    return cfg, results


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_and_evaluates(family, make_config, shapes, tmp_path):
    config, prefix, classes = FAMILIES[family]
    cfg, results = _train_and_eval(make_config, config, prefix, classes, tmp_path,
                                   amp_and_checkpointing=family == "coco_sys")
    assert "bbox" in results and "AP" in results["bbox"]
    assert ("segm" in results) is (family != "o365")  # Objects365 is boxes only (Table 27)
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 0 and any(k.startswith("backbone.net.blocks.1.") for k in final["model"])


@pytest.mark.slow
def test_compiled_blocks_train_and_evaluate(make_config, shapes, tmp_path):
    """The sys family with compile_blocks=True under the trainer's AMP and checkpointing (the short version of this
    is the backbone's compiled-vs-eager test): training and evaluation run through the compiled blocks."""
    config, prefix, classes = FAMILIES["coco_sys"]
    cfg = make_config(config, tmp_path, f"{prefix}_train", f"{prefix}_val", num_classes=classes)
    cfg.train.amp.enabled = True
    cfg.model.backbone.net.update(use_checkpoint=True, compile_blocks=True)
    metrics = run(cfg)
    assert torch.isfinite(torch.tensor(metrics["total_loss"][0]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert "AP" in results["bbox"] and "AP" in results["segm"]


def test_o365_initialized_family(make_config, shapes, tmp_path):
    """Table 32 flow: an O365 (box-only) detector initializes the COCO mask model (the mask head starts fresh),
    trained with EMA; evaluation runs on the EMA weights, which the checkpoint stores under `ema_state`."""
    o365_dir, coco_dir = tmp_path / "o365", tmp_path / "coco"
    _train_and_eval(make_config, "configs/o365/eva02_L.py", "shapes_t", 3, o365_dir)
    cfg, results = _train_and_eval(make_config, "configs/coco/eva02_L_sys_o365.py", "shapes_t", 3, coco_dir,
                                   init_checkpoint=str(o365_dir / "model_final.pth"), max_iter=2)
    assert "segm" in results
    final = torch.load(coco_dir / "model_final.pth", weights_only=True)
    assert final["ema_state"].keys() == final["model"].keys()
    key = "backbone.net.blocks.0.mlp.w1.weight"
    init = torch.load(o365_dir / "model_final.pth", weights_only=True)["model"][key]
    # EMA 0.9999 of two steps stays next to the O365 weights; the trained weights moved away from them
    assert (final["ema_state"][key] - init).abs().max() < (final["model"][key] - init).abs().max()
    # --eval-only path on the EMA weights reproduces the evaluation
    model = build_model(cfg, "cpu")
    EVACheckpointer(model, use_ema=True).load(str(coco_dir / "model_final.pth"), checkpointables=[])
    again = do_test(cfg, model)
    assert again["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"], abs=1e-6, nan_ok=True)
    # as the official loop, training evaluated the raw weights too, beside the EMA ones
    raw = json.loads((coco_dir / "results_raw.json").read_text())
    EVACheckpointer(model).load(str(coco_dir / "model_final.pth"), checkpointables=[])
    assert do_test(cfg, model)["bbox"]["AP"] == pytest.approx(raw["bbox"]["AP"], abs=1e-6, nan_ok=True)


def test_eval_only_writes_server_results(make_config, shapes, tmp_path):
    """--eval-only with train.results_dir (the COCO test-dev override) writes the results json + zip."""
    train_dir = tmp_path / "train"
    _train_and_eval(make_config, "configs/coco/eva02_B_bsl.py", "shapes_t", len(SHAPE_CLASSES), train_dir)
    cfg = make_config("configs/coco/eva02_B_bsl.py", tmp_path / "eval", num_classes=len(SHAPE_CLASSES))
    cfg.train.update(init_checkpoint=str(train_dir / "model_final.pth"), results_dir=str(tmp_path / "server"))
    results = run(cfg, eval_only=True)
    assert "bbox" in results
    written = sorted(p.name for p in (tmp_path / "server").iterdir())
    assert written == ["detections_test-dev2017_eva02_results.json", "detections_test-dev2017_eva02_results.zip"]
    detections = json.loads((tmp_path / "server" / written[0]).read_text())
    assert detections and {d["category_id"] for d in detections} <= set(range(1, len(SHAPE_CLASSES) + 1))
    assert {"image_id", "bbox", "score", "segmentation"} <= detections[0].keys()


def test_eval_only_skips_a_truncated_image_and_counts_it(make_config, tmp_path):
    """--eval-only on a test set with a truncated image: evaluation finishes on the other images; the count is in
    the results (printed by print_csv_format) and results.json names the file and the error."""
    from eva02.det.demo import make_shapes_dataset, register_shapes

    paths = make_shapes_dataset(tmp_path / "data", num_train=2, num_val=3, image_size=64, seed=5)
    register_shapes(paths, "shapes_truncated")
    truncated = tmp_path / "data" / "val" / "000001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    cfg = make_config("configs/coco/eva02_B_bsl.py", tmp_path / "eval", "shapes_truncated_train",
                      "shapes_truncated_val", num_classes=len(SHAPE_CLASSES))
    torch.save({"model": build_model(cfg, "cpu").state_dict()}, tmp_path / "weights.pth")
    cfg.train.init_checkpoint = str(tmp_path / "weights.pth")
    results = run(cfg, eval_only=True)
    assert results["unreadable_images"] == 1 and "AP" in results["bbox"]
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert written["unreadable_images"] == 1
    (entry,) = written["unreadable_files"]
    assert entry["file_name"] == str(truncated) and "truncated" in entry["error"]
