"""tools/export_onnx.py: the detection and segmentation backbones + pyramids run in onnxruntime as in PyTorch, on
real photos (scikit-image's astronaut and chelsea) at two input sizes, one of which needs window padding."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| relative to the largest output value (measured: about 1e-6)


def export_onnx(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/export_onnx.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("config", ["configs/demo/eva02_Ti_det.py", "configs/demo/eva02_Ti_seg.py"])
def test_exported_backbone_matches_pytorch_at_two_sizes(config, tmp_path):
    # 128 x 128: the trace size; 96 x 160: a 6 x 10 grid, padded to the detector's 4 x 4 windows inside the graph
    out = tmp_path / "backbone.onnx"
    proc = export_onnx("--config-file", ROOT / config, "--output", out, "--check-sizes", "128x128", "96x160",
                       "--tolerance", TOLERANCE)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [float(e) for e in re.findall(r"largest difference (\S+) of", proc.stdout)]
    assert len(errors) == 2 and max(errors) < TOLERANCE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = [list(o.shape) for o in session.run(None, {"image": np.zeros((2, 3, 64, 96), np.float32)})]
    if "det" in config:  # strides 4, 8, 16, 32, 64 of the input, batch 2
        assert names == ["p2", "p3", "p4", "p5", "p6"]
        assert shapes == [[2, 64, 16, 24], [2, 64, 8, 12], [2, 64, 4, 6], [2, 64, 2, 3], [2, 64, 1, 2]]
    else:  # the official 4-level pyramid: strides 4, 8, 16, 32
        assert names == ["level0", "level1", "level2", "level3"]
        assert shapes == [[2, 192, 16, 24], [2, 192, 8, 12], [2, 192, 4, 6], [2, 192, 2, 3]]


def test_rope_rotation_of_the_export_path_equals_the_complex_one():
    """Under export the rotation runs in real arithmetic (no complex tensors in ONNX): the same numbers."""
    from eva02.backbone.rope import apply_rope, rope_table, rotate_half

    table = rope_table(64, (6, 10), 16 / 10)
    x = torch.randn(2, 3, 60, 64)
    torch.testing.assert_close(x * table.cos + rotate_half(x) * table.sin, apply_rope(x, table), rtol=1e-5,
                               atol=1e-5)
    pairs = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert rotate_half(pairs).tolist() == [[-2.0, 1.0, -4.0, 3.0]]  # (x1, x2) -> (-x2, x1), by hand


def test_bad_size_is_one_line(tmp_path):
    proc = export_onnx("--config-file", ROOT / "configs/demo/eva02_Ti_det.py", "--output", tmp_path / "x.onnx",
                       "--check-sizes", "128by128")
    assert proc.returncode == 2 and "size '128by128': expected HxW" in proc.stderr and "Traceback" not in proc.stderr
