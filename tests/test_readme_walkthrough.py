"""The own-data walk-through of docs/own-data.md, run as written (slow: it first trains the two demos it starts from).

The block between the page's walk-through marker and the end of its code fence runs with bash in a fresh folder
that links the repository's tools, configs, bench and .venv, so it writes nothing into the checkout. The short
versions of each step run in the default suite: tests/det/test_own_data.py, tests/seg/test_own_data.py,
tests/det/test_infer.py, tests/seg/test_tools.py.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "own-data.md"  # moved there from the README (issue 21)
MARKER = "<!-- own-data walk-through"


def walkthrough() -> str:
    text = PAGE.read_text()
    start = text.index("```bash\n", text.index(MARKER)) + len("```bash\n")
    return text[start:text.index("```\n", start)]


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path):
    for name in ("tools", "configs", "bench", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**{k: v for k, v in os.environ.items() if k != "SHAPES_ROOT"}, "OMP_NUM_THREADS": "2"}  # (conftest)
    demos = (".venv/bin/python tools/train_det.py --config-file configs/demo/eva02_Ti_det.py\n"
             ".venv/bin/python tools/train_seg.py --config-file configs/demo/eva02_Ti_seg.py --output output/demo/seg\n")
    subprocess.run(["bash", "-ec", demos], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=1800)
    proc = subprocess.run(["bash", "-ec", walkthrough()], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "cls_score: checkpoint 4 classes -> model 3; 3 carried over by name (triangle, square, disk)" in log
    assert "decode_head.conv_seg: checkpoint 5 classes -> model 3; 3 carried over by name" in log
    assert log.count("exit 1") == 2  # both inference tools: corrupt.jpg was unreadable
    for tool in ("my_shapes", "my_seg"):
        results = json.loads((tmp_path / "output" / tool / "infer" / "results.json").read_text())
        assert len(results["images"]) == 5 and [Path(f["file_name"]).name for f in results["unreadable_files"]] == [
            "corrupt.jpg"]
    assert re.search(r"^TTA gain\s+[+-]\d+\.\d+\s+[+-]\d+\.\d+\s+\d+\.\dx$", proc.stdout, re.M), proc.stdout[-2000:]
    evaluated = json.loads((tmp_path / "output/my_shapes/eval/results.json").read_text())
    assert evaluated["bbox"]["AP"] > 50  # fine-tuned from the demo detector, on the same kind of shapes
