"""This checkout's .venv imports this checkout's code: a second clone's `make install` must not re-point it."""
import sys
from pathlib import Path

import eva02.backbone
import eva02.common
import eva02.det
import eva02.seg

ROOT = Path(__file__).resolve().parents[1]


def test_eva02_imports_from_this_checkout():
    for package in (eva02.backbone, eva02.common, eva02.det, eva02.seg):
        assert ROOT in Path(package.__file__).resolve().parents, f"{package.__name__} comes from {package.__file__}"


def test_interpreter_is_this_checkouts_venv():
    # The shared third-party environment is layered below .venv; eva02's own install lives in .venv alone.
    assert Path(sys.prefix).resolve() == (ROOT / ".venv").resolve(), sys.prefix
