"""tools/plan_memory.py on a segmentation config. The planner's error against the measured peak (UperNet,
Mask2Former): docs/memory.md's table, tests/common/test_memory.py."""

from .conftest import DEMO_CONFIG, REPO
from tool_process import run_tool


def test_tool_on_a_segmentation_config():
    proc = run_tool(REPO / "tools/plan_memory.py", "--config-file", DEMO_CONFIG, "--batch", "1", "--gpus", "1",
                    "--classes", "4", cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(segmentation): 1 image(s) of 128x128 per GPU, precision fp16" in proc.stdout
    assert "training step" in proc.stdout and "inference" in proc.stdout
