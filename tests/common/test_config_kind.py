"""config_kind: the one test of a config's framework (tools/plan_memory.py and tools/export_onnx.py use it)."""
from pathlib import Path

import pytest

from eva02.common.cli import config_kind

ROOT = Path(__file__).resolve().parents[2]
# Where each kind lives, by the project's layout: detectron2 LazyConfigs and mmengine configs.
def configs_in(*folders: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for d in folders for p in (ROOT / "configs" / d).glob("*.py"))


DETECTION = configs_in("coco", "lvis", "o365")
SEGMENTATION = configs_in("ade20k", "coco_stuff")


@pytest.mark.parametrize("path, kind", [(p, "detection") for p in DETECTION + ["configs/demo/eva02_Ti_det.py"]]
                         + [(p, "segmentation") for p in SEGMENTATION + ["configs/demo/eva02_Ti_seg.py"]])
def test_config_kind(path, kind):
    assert config_kind(ROOT / path) == kind


def test_an_mmengine_config_without_base_is_segmentation(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("model = dict(type='EncoderDecoder', backbone=dict(type='EVA02'))\n")
    assert config_kind(path) == "segmentation"
