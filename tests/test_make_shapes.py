"""tools/make_shapes.py as docs/own-data.md's walk-through runs it: both layouts, read back by pycocotools and from the
label maps, and a bad class name refused in one line."""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from tool_process import run_tool

ROOT = Path(__file__).resolve().parents[1]


def make_shapes(*args):
    return run_tool("tools/make_shapes.py", *args, cwd=ROOT, timeout=300)


def test_coco_layout(tmp_path):
    proc = make_shapes("--layout", "coco", "--classes", "triangle,square", "--num-train", "3", "--num-val", "2",
                       "--size", "64", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    val = COCO(str(tmp_path / "val.json"))
    assert [c["name"] for c in val.loadCats(val.getCatIds())] == ["triangle", "square"]
    assert len(val.getImgIds()) == 2 and len(json.loads((tmp_path / "train.json").read_text())["images"]) == 3
    assert all((tmp_path / "val" / img["file_name"]).is_file() for img in val.loadImgs(val.getImgIds()))


def test_mmseg_layout(tmp_path):
    proc = make_shapes("--layout", "mmseg", "--classes", "disk", "--num-train", "2", "--num-val", "2", "--size", "64",
                       "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "classes.txt").read_text().split() == ["background", "disk"]
    labels = [np.array(Image.open(p)) for p in sorted((tmp_path / "ann_dir" / "val").glob("*.png"))]
    assert len(labels) == 2 and set(np.unique(np.concatenate([x.ravel() for x in labels]))) <= {0, 1, 255}


def test_unknown_class_is_one_line():
    proc = make_shapes("--classes", "hexagon", "--output", "unused")
    assert proc.returncode == 2 and "--classes hexagon: use some of" in proc.stderr
    assert "Traceback" not in proc.stderr
