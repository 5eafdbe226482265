"""tools/plan_memory.py on a segmentation config. The planner's error against the measured peak (UperNet,
Mask2Former): README's table, tests/backbone/test_memory.py."""
import subprocess
import sys

from .conftest import DEMO_CONFIG, REPO


def test_tool_on_a_segmentation_config():
    proc = subprocess.run([sys.executable, str(REPO / "tools/plan_memory.py"), "--config-file", DEMO_CONFIG,
                           "--batch", "1", "--gpus", "1", "--classes", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(segmentation): 1 image(s) of 128x128 per GPU, AMP float16" in proc.stdout
    assert "training step" in proc.stdout and "inference" in proc.stdout
