"""Freezing and LoRA in detection training (model.backbone.net.frozen_stages / .lora, eva02.backbone.tuning) through
tools/train_det.py, then the merged LoRA checkpoint through tools/convert_checkpoint.py, test_det and the
predictor."""
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data.detection_utils import read_image

from eva02.det.demo import make_shapes_dataset
from eva02.det.predictor import DetPredictor
from tool_process import run_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/demo/eva02_Ti_det.py"
TINY = ["model.backbone.net.depth=2", "model.backbone.net.embed_dim=64", "model.backbone.net.num_heads=2",
        "model.backbone.net.mlp_hidden=170", "model.backbone.net.global_blocks=[1]",
        "model.proposal_generator.post_nms_topk=[100,10]"]
LORA = "model.backbone.net.lora={rank:4,alpha:16}"  # hydra's override syntax; what --lora-rank 4 sets
TRAIN = [*TINY, "train.max_iter=2", "optimizer.lr=1e-3", "lr_multiplier.warmup_length=0.0",
         "train.checkpointer.period=1000", "train.save_predictions=0", "dataloader.train.total_batch_size=2",
         "dataloader.train.num_workers=0", "train.eval_period=0"]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """Generated shapes as own data, and the detector's initial weights (every weight: heads too)."""
    tmp = tmp_path_factory.mktemp("tuning")
    paths = make_shapes_dataset(tmp / "data", num_train=4, num_val=2, image_size=64, seed=2)
    torch.manual_seed(0)
    init = tmp / "init.pth"
    torch.save({"model": instantiate(LazyConfig.apply_overrides(LazyConfig.load(str(CONFIG)), TINY).model)
                .state_dict()}, init)
    data = ["--train-data", paths["train_json"], paths["train_images"], "--val-data", paths["val_json"],
            paths["val_images"]]
    return tmp, init, data, paths


def train(start, name, *overrides, flags=()):
    tmp, init, data, _ = start
    out = tmp / name
    proc = run_tool(ROOT / "tools/train_det.py", "--config-file", CONFIG, "--weights", init, "--output", out, *data,
                    *flags, *TRAIN, *overrides)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return torch.load(init)["model"], torch.load(out / "model_final.pth")["model"], out


def test_frozen_weights_are_bit_identical_after_training(start):
    before, after, _ = train(start, "frozen", flags=["--frozen-stages", "1"])  # model.backbone.net.frozen_stages=1
    frozen = [k for k in before if k.startswith(("backbone.net.patch_embed", "backbone.net.pos_embed",
                                                 "backbone.net.blocks.0."))]
    trained = [k for k in before if k.startswith("backbone.net.blocks.1.") and k.endswith("weight")]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert all(not torch.equal(before[k], after[k]) for k in trained)  # the rest of the encoder trains
    assert not torch.equal(before["roi_heads.box_predictor.0.cls_score.weight"],
                           after["roi_heads.box_predictor.0.cls_score.weight"])


def test_lora_trains_adapters_only_and_merges_into_a_plain_detector(start):
    tmp, _, data, paths = start
    before, after, out = train(start, "lora", flags=["--lora-rank", "4"])
    adapters = [k for k in after if ".lora_" in k]
    assert len(adapters) == 2 * 5 * 3  # a, b and the scale of 5 projections in each of 2 blocks
    for key in before:
        if key.startswith("backbone.net."):
            assert torch.equal(before[key], after[key]), key  # the whole base encoder: untouched
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in adapters if k.endswith("lora_b"))
    merged = tmp / "merged.pth"
    proc = run_tool(ROOT / "tools/convert_checkpoint.py", "--input", out / "model_final.pth", "--output", merged,
                    "--to", "merged", check=True)
    assert "LoRA adapters folded into 10 weights" in proc.stdout
    # the merged file in a detector without adapters gives the adapter detector's detections
    every_box = [f"model.roi_heads.box_predictors.{i}.test_score_thresh=0.0" for i in range(3)]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIG)), [*TINY, *every_box, "model.roi_heads.num_classes=4"])
    image = read_image(str(sorted((tmp / "data" / "val").glob("*.png"))[0]), format="RGB")
    plain = DetPredictor(cfg, str(merged), "cpu", score_thresh=0.0)(image)
    adapted = DetPredictor(LazyConfig.apply_overrides(cfg, [LORA]), str(out / "model_final.pth"), "cpu",
                           score_thresh=0.0)(image)
    assert len(plain) == len(adapted) > 0
    np.testing.assert_allclose(plain.scores, adapted.scores, atol=1e-4)
    np.testing.assert_allclose(plain.boxes, adapted.boxes, atol=1e-2)
    # every tool loads the merged file; the unmerged one in a plain detector is refused, saying how
    evaluated = run_tool(ROOT / "tools/test_det.py", "--config-file", CONFIG, "--weights", merged, "--output",
                         tmp / "eval", "--val-data", *data[4:], *TINY)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    refused = run_tool(ROOT / "tools/test_det.py", "--config-file", CONFIG, "--weights", out / "model_final.pth",
                       "--output", tmp / "eval2", "--val-data", *data[4:], *TINY)
    assert refused.returncode == 2 and "LoRA adapter tensors" in refused.stderr and "--to merged" in refused.stderr
