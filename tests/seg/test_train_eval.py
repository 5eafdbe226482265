"""One training iteration and one evaluation for every paper config (shrunk TrV and heads, tiny generated data)."""
import math

import torch
from mmengine.config import Config
from mmengine.runner import Runner


def test_one_iteration_and_evaluation(paper_config, repo, tmp_path, shapes_root, coco_stuff_root, shrunk_config):
    data_root = coco_stuff_root if "coco_stuff" in paper_config else shapes_root
    cfg = shrunk_config(Config.fromfile(str(repo / paper_config)), data_root)
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f"test_{tmp_path.name}"
    cfg.train_cfg.update(max_iters=1, val_interval=1000)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.update(interval=1000, save_best=None)
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    before = runner.model.backbone.blocks[0].attn.qkv.weight.detach().clone()
    runner.train()
    after = runner.model.backbone.blocks[0].attn.qkv.weight.detach()
    assert not torch.equal(before, after), "one step of training left the TrV unchanged"
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert math.isfinite(loss) and loss > 0
    metrics = runner.test()
    assert set(metrics) >= {"aAcc", "mIoU", "mAcc"}
    assert 0.0 <= metrics["mIoU"] <= 100.0
