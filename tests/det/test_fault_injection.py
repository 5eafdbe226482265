"""SIGKILL a short detection training run (inside a checkpoint write, or at a random iteration), resume it, and
check that it ends exactly where the uninterrupted run ends: weights, EMA, and the loss and lr of every
iteration (tools/train_det.py as a user runs it, one process, num_workers=0)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MAX_ITER = 6


def _command(tmp_path, out) -> list[str]:
    return ["--config-file", "configs/demo/eva02_Ti_det.py", "--output", str(out), "--device", "cpu",
            f"dataloader.setup.root={tmp_path / 'data'}", "dataloader.setup.num_train=8", "dataloader.setup.num_val=2",
            "model.backbone.net.depth=2", "model.backbone.net.global_blocks=[1]", "dataloader.train.num_workers=0",
            "dataloader.train.total_batch_size=2", f"train.max_iter={MAX_ITER}", "train.checkpointer.period=2",
            "train.log_period=1", "train.eval_period=3", "train.save_predictions=0", "train.seed=0",
            "train.model_ema.enabled=True", "train.model_ema.decay=0.9", "model.proposal_generator.post_nms_topk=[64,32]",
            "model.roi_heads.batch_size_per_image=16"]


def _start(tmp_path, out, *prefix, resume=False):
    args = [*prefix, str(ROOT / "tools/train_det.py"), *(["--resume"] if resume else []), *_command(tmp_path, out)]
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"})


def _finish(proc) -> str:
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    return log


def _per_iteration(out) -> dict[int, dict]:
    """The last logged loss and lr of each iteration (a resumed run logs the redone iterations again)."""
    rows = {}
    for line in (out / "metrics.json").read_text().splitlines():
        row = json.loads(line)
        if "total_loss" in row:
            rows[row["iteration"]] = {"total_loss": row["total_loss"], "lr": row["lr"]}
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    _finish(_start(tmp, tmp / "out"))
    return tmp / "out"


def _kill_inside_second_checkpoint_write(tmp_path, out):
    proc = _start(tmp_path, out, str(ROOT / "tests/kill_during_save.py"), "2", r"^model_\d+\.pth$")
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"  # the torn write never took its place
    assert [p.name for p in out.iterdir() if ".tmp." in p.name] == [".model_0000003.pth.tmp." + str(proc.pid)]
    return "inside the write of model_0000003.pth", True


def _kill_at_a_random_iteration(tmp_path, out):
    stop_at = random.randint(1, MAX_ITER - 2)
    proc = _start(tmp_path, out)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.json").exists() and max(_per_iteration(out), default=-1) >= stop_at:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    return f"after iteration {stop_at} was logged", False


@pytest.mark.parametrize("kill", [_kill_inside_second_checkpoint_write, _kill_at_a_random_iteration],
                         ids=["during-checkpoint-write", "random-iteration"])
def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, kill):
    out = tmp_path / "out"
    where, left_a_temporary_file = kill(tmp_path, out)
    log = _finish(_start(tmp_path, out, resume=True))
    assert not [p.name for p in out.iterdir() if ".tmp." in p.name], f"killed {where}: temporary file left"
    assert ("temporary file(s) of killed checkpoint writes" in log) is left_a_temporary_file

    assert _per_iteration(out) == _per_iteration(uninterrupted), f"killed {where}: losses or lr differ"
    final, reference = (torch.load(d / "model_final.pth", weights_only=True) for d in (out, uninterrupted))
    for part in ("model", "ema_state"):
        assert final[part].keys() == reference[part].keys()
        for key, value in reference[part].items():
            assert torch.equal(final[part][key], value), f"killed {where}: {part} {key} differs"
