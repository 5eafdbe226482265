"""The detection memory planner (eva02.det.memory) and tools/plan_memory.py as a user meets it. Its error
against the measured peak: docs/memory.md's table, tests/common/test_memory.py."""

import pytest
from detectron2.config import LazyConfig

from eva02.det.memory import plan_detector

from .conftest import ROOT
from tool_process import run_tool


@pytest.mark.slow  # 6 traces of the demo detector; the error table's rows hold the planner in the default suite
def test_settings_move_the_estimate_the_right_way():
    cfg = LazyConfig.load(str(ROOT / "configs/demo/eva02_Ti_det.py"))
    base = plan_detector(cfg, 2, 128, precision="fp32", checkpointing=False, objects=10)
    assert set(base.phases) == {"first step", "training step", "forward"}
    assert base.stand_ins  # RPN / RoI sampling sizes decided by data: upper bounds
    assert plan_detector(cfg, 2, 128, precision="fp32", checkpointing=True, objects=10).peak < base.peak
    assert plan_detector(cfg, 4, 128, precision="fp32", checkpointing=False, objects=10).peak > base.peak
    assert plan_detector(cfg, 2, 128, precision="fp32", checkpointing=False, objects=10, gpus=8).ddp_buckets > 0


def tool(*args):
    return run_tool(ROOT / "tools/plan_memory.py", *args, timeout=600)


def test_tool_answers_what_fits():
    """Peaks at 128 px, AMP, checkpointing, 5 objects: 1.184 GiB needed for 2 images, 1.196 GiB for 3."""
    proc = tool("--config-file", "configs/demo/eva02_Ti_det.py", "--gpu-memory", "1.19", "--objects", "5",
                "--precision", "fp16", "--checkpointing", "on", "--gpus", "1", "--mode", "train", "--max-batch", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "training step" in out and "fits in 1.19 GiB: yes" in out and "DDP" not in out, out
    answers = [line.split() for line in out.split("largest training batch", 1)[1].splitlines()[1:]]
    assert answers == [["fp16,", "checkpointing", "on", "2"]], out


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


@pytest.mark.slow  # 9 traces of the demo detector
def test_tool_offers_freezing_and_lora_when_nothing_else_fits_the_batch():
    """The same budget, asking for 4 images: AMP + checkpointing fit 2; the frozen encoder and LoRA rows follow."""
    proc = tool("--config-file", "configs/demo/eva02_Ti_det.py", "--gpu-memory", "1.19", "--objects", "5",
                "--precision", "fp16", "--checkpointing", "on", "--gpus", "1", "--mode", "train", "--max-batch", "4",
                "--batch", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [line.split() for line in proc.stdout.split("largest training batch", 1)[1].splitlines()[1:]]
    assert answers[0] == ["fp16,", "checkpointing", "on", "2"], proc.stdout
    assert [a[:6] for a in answers[1:]] == [["fp16,", "checkpointing", "on,", "encoder", "frozen", "4"],
                                           ["fp16,", "checkpointing", "on,", "LoRA", "rank", "8"]], proc.stdout
