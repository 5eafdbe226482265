"""Checkpoint writes are atomic where the configs ask for it (backend "atomic_local"), and importing eva02.seg
changes nothing else: mmengine's default local backend stays its own."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.fileio import get_file_backend
from mmengine.fileio.backends import LocalBackend
from mmengine.runner.checkpoint import CheckpointLoader, save_checkpoint
from mmengine.runner.checkpoint import load_from_local as mmengine_load_from_local

import eva02.seg  # noqa: F401  (registers the backend)
from eva02.seg.hooks import AtomicLocalBackend

ROOT = Path(__file__).resolve().parents[2]
SEG_CONFIGS = sorted(str(p) for d in ("ade20k", "coco_stuff", "demo") for p in (ROOT / "configs" / d).glob("*.py")
                     if "_det" not in p.name)


def test_importing_eva02_seg_keeps_mmengines_local_backend(tmp_path):
    assert type(get_file_backend(str(tmp_path / "iter_1.pth"))) is LocalBackend
    assert CheckpointLoader._schemes[""] is mmengine_load_from_local  # tools/train_seg.py names files in errors


@pytest.mark.parametrize("config", SEG_CONFIGS, ids=lambda p: Path(p).stem)
def test_every_seg_config_saves_checkpoints_atomically(config, tmp_path):
    backend_args = Config.fromfile(config).default_hooks.checkpoint.backend_args
    path = str(tmp_path / "iter_1.pth")
    assert isinstance(get_file_backend(path, backend_args=backend_args), AtomicLocalBackend)
    save_checkpoint({"meta": {"iter": 1}}, path, backend_args=backend_args)
    assert (tmp_path / "iter_1.pth").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["iter_1.pth"]  # no temporary file left


def test_failed_write_keeps_the_previous_file(tmp_path):
    backend = get_file_backend(str(tmp_path / "last_checkpoint"), backend_args=dict(backend="atomic_local"))
    backend.put_text("iter_1.pth", str(tmp_path / "last_checkpoint"))
    with pytest.raises(TypeError):
        backend.put("not bytes", str(tmp_path / "last_checkpoint"))  # fails half-way, as a crash would
    assert (tmp_path / "last_checkpoint").read_text() == "iter_1.pth"
    assert [p.name for p in tmp_path.iterdir()] == ["last_checkpoint"]
