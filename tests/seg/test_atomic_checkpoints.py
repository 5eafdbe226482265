"""The runner saves through mmengine's local file backend; with eva02.seg imported every write is atomic."""
import pytest
from mmengine.fileio import get_file_backend
from mmengine.runner.checkpoint import save_checkpoint

from eva02.seg.hooks import AtomicLocalBackend


def test_runner_saves_go_through_the_atomic_backend(tmp_path):
    assert isinstance(get_file_backend(str(tmp_path / "iter_1.pth")), AtomicLocalBackend)
    save_checkpoint({"meta": {"iter": 1}}, str(tmp_path / "iter_1.pth"))
    assert (tmp_path / "iter_1.pth").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["iter_1.pth"]  # no temporary file left


def test_failed_write_keeps_the_previous_file(tmp_path):
    backend = get_file_backend(str(tmp_path / "last_checkpoint"))
    backend.put_text("iter_1.pth", str(tmp_path / "last_checkpoint"))
    with pytest.raises(TypeError):
        backend.put("not bytes", str(tmp_path / "last_checkpoint"))  # fails half-way, as a crash would
    assert (tmp_path / "last_checkpoint").read_text() == "iter_1.pth"
    assert [p.name for p in tmp_path.iterdir()] == ["last_checkpoint"]
