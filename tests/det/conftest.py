"""Shared helpers for the detection tests: shrunk configs on generated shapes data."""
from pathlib import Path

import pytest
from detectron2.config import LazyConfig

from eva02.det.config import set_head_width, set_input_size
from eva02.det.demo import make_shapes_dataset, register_shapes

ROOT = Path(__file__).resolve().parents[2]
SMALL = 64  # image side in the tests: a 4x4 token grid


def shrunk_config(path: str, output_dir, train_names: str = "shapes_t_train", test_names: str = "shapes_t_val",
                  num_classes: int | None = None, max_iter: int = 1):
    """A paper config with the TrV shrunk to depth 2, width 64, narrow heads and few RoIs, on SMALL px images.

    The structure (heads, losses, NMS/maskness switches, evaluator, sampler) stays the table's."""
    cfg = LazyConfig.load(str(ROOT / path))
    cfg.model.backbone.net.update(depth=2, embed_dim=64, num_heads=2, mlp_hidden=170, window_size=2,
                                  global_blocks=[1], drop_path_rate=0.0, use_checkpoint=False)
    set_input_size(cfg.model, cfg.dataloader, SMALL)
    set_head_width(cfg.model, channels=32, fc_dim=64)  # same layer structure, CPU-test sized
    if num_classes is not None:
        cfg.model.roi_heads.num_classes = num_classes
    # few proposals and RoIs: the 4conv box heads on 1000 proposals per image would dominate a CPU test
    cfg.model.proposal_generator.update(pre_nms_topk=(50, 50), post_nms_topk=(16, 16))
    cfg.model.roi_heads.batch_size_per_image = 16
    for p in cfg.model.roi_heads.box_predictors:
        p.update(test_topk_per_image=min(p.test_topk_per_image, 20), test_score_thresh=0.0)  # some output
    # Score threshold 0 lets every class of every RoI through: capped, or 16 RoIs x 1203 LVIS classes would mean
    # 19k class-specific mask predictions. The uncapped "sys" path is tested against the official detector.
    cfg.model.roi_heads.soft_nms_topk = True
    cfg.dataloader.train.dataset.names = train_names
    cfg.dataloader.test.dataset.names = test_names
    cfg.dataloader.train.update(total_batch_size=2, num_workers=0)
    cfg.dataloader.test.num_workers = 0
    cfg.train.update(output_dir=str(output_dir), max_iter=max_iter, eval_period=0, log_period=1, device="cpu",
                     init_checkpoint="")
    cfg.train.amp.enabled = False
    cfg.train.checkpointer.period = 1000
    return cfg


@pytest.fixture(scope="session")
def make_config():
    """shrunk_config, for tests (conftest modules are not importable under --import-mode=importlib)."""
    return shrunk_config


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """A tiny COCO-format shapes dataset registered as shapes_t_{train,val} (and as LVIS shapes_lvis_v1_*)."""
    root = tmp_path_factory.mktemp("shapes")
    paths = make_shapes_dataset(root / "coco", num_train=8, num_val=3, image_size=SMALL, seed=0)
    register_shapes(paths, "shapes_t")
    lvis_paths = make_shapes_dataset(root / "lvis", num_train=8, num_val=3, image_size=SMALL, seed=0, lvis=True)
    register_shapes(lvis_paths, "shapes_lvis_v1", lvis=True)
    return paths
