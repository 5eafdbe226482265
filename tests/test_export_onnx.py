"""tools/export_onnx.py: the detection and segmentation backbones + pyramids, and the whole detector (--whole), run
in onnxruntime as in PyTorch, on real photos (scikit-image's astronaut and chelsea) at two or three input sizes,
one of which needs window padding."""
import re
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tool_process import run_tool

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| relative to the largest output value (measured: about 1e-6)


def export_onnx(*args) -> subprocess.CompletedProcess:
    return run_tool(ROOT / "tools/export_onnx.py", *args, timeout=600)


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


def test_whole_detector_matches_pytorch_on_real_photos(tmp_path):
    """--whole: the Cascade Mask R-CNN with plain NMS, traced once, gives PyTorch's detections in onnxruntime on
    other photos and sizes, whose detection counts differ from the traced one's (so nothing data-dependent was
    frozen into the graph). The heads' class scores are spread (random weights give near-uniform ones), and the
    threshold is raised so that the counts depend on the image."""
    import skimage.data
    import torch.nn.functional as F
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(ROOT / "configs/demo/eva02_Ti_det.py"))
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        for predictor in model.roi_heads.box_predictor:
            predictor.cls_score.weight.normal_(0, 0.1)
            predictor.cls_score.bias.normal_(0, 1)
    torch.save({"model": model.state_dict()}, tmp_path / "detector.pth")
    out = tmp_path / "detector.onnx"
    proc = export_onnx("--config-file", ROOT / "configs/demo/eva02_Ti_det.py", "--weights", tmp_path / "detector.pth",
                       "--whole", "--output", out, "--tolerance", TOLERANCE,
                       "model.roi_heads.box_predictors.2.test_score_thresh=0.3",
                       "--check-sizes", "128x128", "96x128", "128x80")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    counts = re.findall(r": (\d+) / (\d+) detections, the same detections and classes", proc.stdout)
    assert len(counts) == 3 and all(a == b for a, b in counts) and len({a for a, _ in counts}) > 1, proc.stdout
    # the file on its own, against the detector's inference in PyTorch, on chelsea at 96 x 128
    model.roi_heads.box_predictor[2].test_score_thresh = 0.3
    photo = torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea())).permute(2, 0, 1)[None].float()
    image = F.interpolate(photo, size=(96, 128), mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        ref = model.inference([{"image": image}], do_postprocess=False)[0]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": image.numpy()})))
    assert set(got) == {"boxes", "classes", "masks", "scores", "image_size"} and len(ref) > 0
    assert got["image_size"].tolist() == [96, 128] and np.array_equal(got["classes"], ref.pred_classes.numpy())
    np.testing.assert_allclose(got["boxes"], ref.pred_boxes.tensor.numpy(), atol=1e-3)
    np.testing.assert_allclose(got["scores"], ref.scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["masks"], ref.pred_masks.numpy(), atol=1e-4)


def test_whole_detector_refuses_soft_nms(tmp_path):
    proc = export_onnx("--config-file", ROOT / "configs/coco/eva02_L_sys.py", "--whole",
                       "--output", tmp_path / "x.onnx")
    assert proc.returncode == 2 and "nms_method='soft_linear'" in proc.stderr and "Traceback" not in proc.stderr
