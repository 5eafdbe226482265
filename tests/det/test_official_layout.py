"""Released detector layouts, from the official code's own key lists (fixtures/official_det_keys.json: the
state_dict() of the official EVA-02/det models instantiated from their configs, and the `ema_state` its EMA
checkpointer saves; commit and method in fixtures/README.md): every key lands on exactly one weight of our
config of the same size, shapes equal; RoPE buffers (saved twice over by the official code) are derived."""
import json
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from eva02.det.checkpoint import convert_detector_state

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = json.loads((Path(__file__).parent / "fixtures" / "official_det_keys.json").read_text())


@pytest.mark.parametrize("name, config", [("eva02_L_coco_sys", "configs/coco/eva02_L_sys.py"),
                                          ("eva02_L_coco_sys_o365", "configs/coco/eva02_L_sys_o365.py"),
                                          ("eva02_B_coco_bsl", "configs/coco/eva02_B_bsl.py")])
@pytest.mark.parametrize("part", ["model", "ema_state"])
def test_released_detector_maps_onto_our_config(name, config, part):
    cfg = LazyConfig.load(str(ROOT / config))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: torch.empty(shape, device="meta") for k, shape in OFFICIAL[name][part]}
    converted, dropped = convert_detector_state(official, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert all("rope" in k or k in ("pixel_mean", "pixel_std") or "cell_anchors" in k for k in dropped)
    assert any("rope_glb" in k for k in dropped)  # the official file does hold resolution-bound RoPE tables
