"""The segmentation memory planner (eva02.seg.memory) against the CPU allocator's records of the same step run
for real (eva02.backbone.memory.measure_peak), and tools/plan_memory.py on a segmentation config."""
import subprocess
import sys

import pytest
from mmengine.config import Config

from eva02.backbone.memory import estimate_memory, measure_peak
from eva02.seg.memory import segmentor_step

from .conftest import DEMO_CONFIG, REPO

ERROR = 0.06  # the README's stated error of the planner for segmentation


def check(cfg, batch, size, train, classes=5):
    build, run = segmentor_step(cfg, batch, size, train, classes=classes)
    estimate = estimate_memory(build, run, target="cpu")
    measured = measure_peak(build, run)
    assert abs(estimate.peak / measured - 1) < ERROR, (estimate.peak, measured)
    return estimate


@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_upernet_matches_measured_peak(train):
    """The demo UperNet (EVA-02-Ti, full depth): two training steps of 2 crops, or inference on 2 images."""
    estimate = check(Config.fromfile(str(REPO / DEMO_CONFIG)), 2, 128, train)
    if train:
        assert estimate.phases["training step"] > estimate.phases["first step"]  # with AdamW's state


def test_mask2former_matches_measured_peak(shrunk_config):
    """Mask2Former (the paper's head structure, narrow) with 5 classes per crop: one ground-truth mask each,
    Hungarian matching stood in for."""
    cfg = shrunk_config(Config.fromfile(str(REPO / "configs/ade20k/mask2former_eva02_L_640.py")), "unused", crop=64)
    check(cfg, 2, 64, True)


def test_tool_on_a_segmentation_config():
    proc = subprocess.run([sys.executable, str(REPO / "tools/plan_memory.py"), "--config-file", DEMO_CONFIG,
                           "--batch", "1", "--gpus", "1", "--classes", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(segmentation): 1 image(s) of 128x128 per GPU, AMP float16" in proc.stdout
    assert "training step" in proc.stdout and "inference" in proc.stdout
