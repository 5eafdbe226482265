"""The detection memory planner (eva02.det.memory) against the CPU allocator's records of the same step run for
real (eva02.backbone.memory.measure_peak), and tools/plan_memory.py as a user meets it."""
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig

from eva02.backbone.memory import estimate_memory, measure_peak
from eva02.det.memory import detector_step, plan_detector

from .conftest import ROOT

ERROR = 0.05  # the README's stated error of the planner, for these configs


def check(config, batch, size, train, **kwargs):
    build, run = detector_step(LazyConfig.load(str(ROOT / config)), batch, size, train, **kwargs)
    estimate = estimate_memory(build, run, target="cpu")
    measured = measure_peak(build, run)
    assert abs(estimate.peak / measured - 1) < ERROR, (estimate.peak, measured)
    return estimate


def test_training_step_matches_measured_peak():
    """Two steps of the demo detector (the second with AdamW state), with 10 objects per image."""
    estimate = check("configs/demo/eva02_Ti_det.py", 2, 128, True, objects=10)
    assert set(estimate.phases) == {"first step", "training step", "forward"}
    assert estimate.phases["training step"] > estimate.phases["first step"]  # the optimizer state exists
    assert estimate.stand_ins  # RPN / RoI sampling sizes decided by data: upper bounds


def test_inference_matches_measured_peak():
    """The paper's B detector (Table 28 bsl: 4conv heads, hard NMS, 100 detections) on one 256 px image."""
    check("configs/coco/eva02_B_bsl.py", 1, 256, False)


def test_settings_move_the_estimate_the_right_way():
    cfg = LazyConfig.load(str(ROOT / "configs/demo/eva02_Ti_det.py"))
    base = plan_detector(cfg, 2, 128, amp="off", checkpointing=False, objects=10)
    assert plan_detector(cfg, 2, 128, amp="off", checkpointing=True, objects=10).peak < base.peak
    assert plan_detector(cfg, 4, 128, amp="off", checkpointing=False, objects=10).peak > base.peak
    assert plan_detector(cfg, 2, 128, amp="off", checkpointing=False, objects=10, gpus=8).ddp_buckets > 0


def tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools/plan_memory.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_tool_answers_what_fits():
    """Peaks at 128 px, AMP, checkpointing, 5 objects: 1.184 GiB needed for 2 images, 1.196 GiB for 3."""
    proc = tool("--config-file", "configs/demo/eva02_Ti_det.py", "--gpu-memory", "1.19", "--objects", "5",
                "--amp", "fp16", "--checkpointing", "on", "--gpus", "1", "--mode", "train", "--max-batch", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "training step" in out and "fits in 1.19 GiB: yes" in out and "DDP" not in out, out
    answers = [line.split() for line in out.splitlines() if line.strip().startswith("AMP ")]
    assert answers == [["AMP", "fp16,", "checkpointing", "on", "2"]], out


@pytest.mark.parametrize("args, message", [
    (["--config-file", "configs/demo/nope.py"], "--config-file configs/demo/nope.py: no such file"),
    (["--config-file", "configs/demo/eva02_Ti_det.py", "model.backbone.net.depht=2"], "depht"),
    (["--config-file", "configs/demo/eva02_Ti_det.py", "--size", "100"], "--size 100: must be a multiple of"),
    (["--config-file", "configs/demo/eva02_Ti_det.py", "--classes", "3"], "--classes is for segmentation"),
    (["--config-file", "configs/demo/eva02_Ti_det.py", "--batch", "0"], "--batch 0: must be positive"),
])
def test_tool_bad_input_one_line(args, message):
    proc = tool(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
