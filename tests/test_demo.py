"""`make demo` as written in the Makefile (slow: about 10 minutes; CI runs `make demo` itself after the suite).

The recipe (`make -n demo`, without the install step) runs with bash in a fresh folder that links the repository's
tools, configs and .venv, so it writes nothing into the checkout. The models must work: the detection demo's box AP
(69.1 measured) and the segmentation demo's mIoU (93.9) and every class IoU (lowest 89.2, triangles), started from
the detection demo's backbone. Short versions of each step run in the default suite:
tests/det/test_resume_ddp_demo.py::test_demo_short_run, tests/det/test_evaluation.py (the evaluator check) and
tests/seg/test_tools.py (the seg demo from a detector's backbone, then inference).
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from eva02.common.runlog import read_image_tags, read_scalars

ROOT = Path(__file__).resolve().parents[1]


def demo_recipe() -> str:
    return subprocess.run(["make", "-s", "-n", "-o", "install", "demo"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def test_recipe_starts_the_segmentation_demo_from_the_detection_demo():
    recipe = demo_recipe()
    assert "model.backbone.pretrained=output/demo_det/model_final.pth" in recipe
    assert recipe.index("tools/train_det.py") < recipe.index("tools/train_seg.py")


def class_ious(log: str) -> dict[str, float]:
    """mmseg's per-class table of the last evaluation: {class: IoU}."""
    table = log[log.rindex("per class results"):]
    return {m[1]: float(m[2]) for m in re.finditer(r"^\|\s+(\w+)\s+\|\s+(\d+\.\d+)\s+\|", table, re.M)}


@pytest.mark.slow
def test_make_demo_shows_models_that_work(tmp_path):
    for name in ("tools", "configs", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k != "SHAPES_ROOT"}  # the demo's own data folder (conftest)
    proc = subprocess.run(["bash", "-ec", demo_recipe()], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "2"},
                          capture_output=True, text=True, timeout=3600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    detection = json.loads((tmp_path / "output/demo_det/results.json").read_text())
    assert detection["bbox"]["AP"] >= 55 and detection["segm"]["AP"] >= 50, detection
    assert "COCO {'bbox': 100.0, 'segm': 100.0}" in log and "LVIS {'bbox': 100.0, 'segm': 100.0}" in log
    assert "cls_token: none in the checkpoint" in log  # the seg TrV came from the detector
    ious = class_ious(log)
    assert set(ious) == {"background", "disk", "square", "triangle", "cross"}, log[-3000:]
    assert min(ious.values()) >= 70 and sum(ious.values()) / len(ious) >= 85, ious
    assert len(list((tmp_path / "output/demo/seg/predictions").glob("*.png"))) >= 50
    # every run in TensorBoard (tensorboard --logdir output): metrics of both evaluations, prediction panels, curves
    for run, metric in (("demo_det", "bbox/AP"), ("demo/seg", "mIoU"), ("demo_mim", "loss")):
        scalars = read_scalars(str(tmp_path / "output" / run))
        assert len(scalars[metric]) >= 2 and (tmp_path / "output" / run / "curves.png").is_file(), run
        assert read_image_tags(str(tmp_path / "output" / run)), run
    assert "curves: output/demo_det/curves.png" in log
