"""The full segmentation demo (make demo): EVA-02-Ti from scratch on the generated shapes reaches mIoU >= 60."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_full_demo_reaches_60_miou(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SHAPES_ROOT": str(tmp_path / "data"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "tools/train_seg.py", "--config-file", "configs/demo/eva02_Ti_seg.py",
                           "--output", str(tmp_path / "work")], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-5000:]
    miou = [float(m) for m in re.findall(r"Iter\(val\).*?mIoU: (\d+\.\d+)", proc.stdout)]
    assert miou and miou[-1] >= 60.0, proc.stdout[-3000:]
