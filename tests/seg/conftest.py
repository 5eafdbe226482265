"""Fixtures for the segmentation tests: tiny generated datasets and shrunk versions of the paper configs."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config
import tool_process

import eva02.seg  # noqa: F401  (registers the modules)
from eva02.seg import fp32_without_gpu
from eva02.seg.demo import make_shapes_dataset

REPO = Path(__file__).resolve().parents[2]
PAPER_CONFIGS = [
    "configs/ade20k/upernet_eva02_B_512.py",
    "configs/ade20k/upernet_eva02_L_512.py",
    "configs/ade20k/upernet_eva02_L_640.py",
    "configs/coco_stuff/mask2former_eva02_L_640.py",
    "configs/ade20k/mask2former_eva02_L_640.py",
]
DEMO_CONFIG = "configs/demo/eva02_Ti_seg.py"
# Shrunk TrV for tests: 2 blocks of width 64 (head_dim 32).
TINY_TRV = dict(depth=2, embed_dim=64, num_heads=2, mlp_hidden=170)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """The demo dataset, small: 8 training and 4 validation images of 64x64 (ADE layout)."""
    return make_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=8, num_val=4, size=64,
                               progress=False)


@pytest.fixture(scope="session")
def coco_stuff_root(tmp_path_factory):
    """COCO-Stuff-164K layout: images/{train,val}2017/*.jpg, annotations/.../*_labelTrainIds.png (0-170, 255)."""
    root = tmp_path_factory.mktemp("coco_stuff")
    rng = np.random.default_rng(0)
    for split, count in (("train2017", 4), ("val2017", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            label = np.full((48, 80), 255, np.uint8)
            for _ in range(3):
                y, x = rng.integers(0, 40), rng.integers(0, 70)
                label[y:y + 20, x:x + 30] = rng.integers(0, 171)
            img = (rng.random((48, 80, 3)) * 80).astype(np.uint8) + (label[..., None] % 7 * 20).astype(np.uint8)
            cv2.imwrite(str(root / "images" / split / f"{i:012d}.jpg"), img)
            cv2.imwrite(str(root / "annotations" / split / f"{i:012d}_labelTrainIds.png"), label)
    return str(root)


def shrink(cfg: Config, data_root: str, crop: int = 64) -> Config:
    """A paper config with the tiny TrV, narrow heads, crop `crop`, batch 2 (BN in UperNet's 1x1 pooling branch
    needs two samples) and the data under data_root."""
    m = cfg.model
    c = TINY_TRV["embed_dim"]
    m.backbone.update(arch_overrides=TINY_TRV, out_indices=(0, 1, 1, 1), img_size=crop)
    m.data_preprocessor.size = (crop, crop)
    head = m.decode_head
    if head.type == "UPerHead":
        head.update(in_channels=[c] * 4, channels=16)
        m.auxiliary_head.update(in_channels=c, channels=8)
    else:  # Mask2FormerHead: same layer counts, narrow widths
        w = 32
        head.update(in_channels=[c] * 4, feat_channels=w, out_channels=w, num_queries=10)
        head.train_cfg.num_points = 256
        enc = head.pixel_decoder.encoder.layer_cfg
        enc.self_attn_cfg.update(embed_dims=w, num_heads=4)
        enc.ffn_cfg.update(embed_dims=w, feedforward_channels=2 * w)
        head.pixel_decoder.positional_encoding.num_feats = w // 2
        head.positional_encoding.num_feats = w // 2
        dec = head.transformer_decoder.layer_cfg
        dec.self_attn_cfg.update(embed_dims=w, num_heads=4)
        dec.cross_attn_cfg.update(embed_dims=w, num_heads=4)
        dec.ffn_cfg.update(embed_dims=w, feedforward_channels=2 * w)
    if m.test_cfg.get("mode") == "slide":
        m.test_cfg.update(crop_size=(crop, crop), stride=(crop * 2 // 3, crop * 2 // 3))
    cfg.optim_wrapper.paramwise_cfg.num_layers = TINY_TRV["depth"]
    fp32_without_gpu(cfg)  # as tools/train_seg.py does on a CPU-only machine
    small_scale = (crop * 4, crop)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dl = cfg[loader]
        dl.update(batch_size=2 if loader == "train_dataloader" else 1, num_workers=0, persistent_workers=False)
        dl.dataset.data_root = data_root
        dl.dataset.pop("generate", None)
        for t in dl.dataset.pipeline:  # paper scales -> test scales, same transforms
            if t.type in ("RandomResize", "Resize") and "scale" in t:
                t.scale = small_scale
            if t.type == "RandomChoiceResize":
                t.scales = [crop // 2, crop, crop * 2]
                t.max_size = crop * 4
            if t.type == "RandomCrop":
                t.crop_size = (crop, crop)
    return cfg


@pytest.fixture
def shrunk_config():
    return shrink


@pytest.fixture
def run_tool():
    """Run a tools/*.py script in a process of its own from the repo root (tests/support/tool_process.py);
    returns the CompletedProcess (asserts rc 0 unless check=False)."""

    def run(script, *args, env=None, check=True):
        return tool_process.run_tool(REPO / "tools" / script, *args, cwd=REPO, env=env, check=check)

    return run


def pytest_generate_tests(metafunc):
    """`paper_config`: one test per paper config file (relative to the repo root)."""
    if "paper_config" in metafunc.fixturenames:
        metafunc.parametrize("paper_config", PAPER_CONFIGS, ids=[f"{Path(c).parent.name}-{Path(c).stem}" for c in PAPER_CONFIGS])


@pytest.fixture(scope="session")
def tiny_config():
    """write(folder, max_iters=2) -> a config file in folder: the demo config with a 2-block, 64-wide TrV, 64-pixel
    crops and 8 generated training images, logging every iteration."""
    def write(folder, max_iters: int = 2) -> Path:
        path = Path(folder) / "tiny_seg.py"
        path.write_text(f"""
_base_ = ["{REPO / DEMO_CONFIG}"]
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(arch_overrides=dict(depth=2, embed_dim=64, num_heads=2, mlp_hidden=170), out_indices=(0, 1, 1, 1),
                  img_size=64),
    decode_head=dict(in_channels=[64] * 4, channels=16),
    auxiliary_head=dict(in_channels=64, channels=8),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomCrop", crop_size=(64, 64)),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, generate=dict(num_train=8, num_val=4, size=64)))
val_dataloader = dict(num_workers=0, persistent_workers=False, batch_size=1,
                      dataset=dict(generate=dict(num_train=8, num_val=4, size=64)))
test_dataloader = val_dataloader
optim_wrapper = dict(paramwise_cfg=dict(num_layers=2))
train_cfg = dict(max_iters={max_iters}, val_interval=100)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, save_best=None))
log_processor = dict(window_size=1)  # each logged loss is that iteration's, not a running mean
""")
        return path

    return write


@pytest.fixture
def repo():
    return REPO
