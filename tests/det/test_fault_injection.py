"""SIGKILL a short detection training run (inside a checkpoint write, or at a seeded iteration), resume it, and
check that the resumed process starts after the saved iteration, trains only the rest, and ends exactly where the
uninterrupted run ends: weights, EMA, and the loss and lr of every iteration (tools/train_det.py as a user runs
it, one process, num_workers=0)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
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


def _start(tmp_path, out, *fault, resume=False):
    prefix = [str(ROOT / "tests/faults.py"), *fault] if fault else []
    args = [*prefix, str(ROOT / "tools/train_det.py"), *(["--resume"] if resume else []), *_command(tmp_path, out)]
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"})


def _finish(proc) -> str:
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    return log


def _killed(proc) -> str:
    """What faults.py announced: where the kill went (and the seed that replays it)."""
    log, _ = proc.communicate(timeout=600)
    where = re.search(r"^faults: .*", log, re.M).group(0)
    assert proc.returncode == -signal.SIGKILL, f"{where}: not killed\n{log[-3000:]}"
    return where


def _per_iteration(metrics: str) -> dict[int, dict]:
    """The last logged loss and lr of each iteration in metrics.json lines (a resumed run logs redone ones again)."""
    rows = {}
    for line in metrics.splitlines():
        row = json.loads(line)
        if "total_loss" in row:
            rows[row["iteration"]] = {"total_loss": row["total_loss"], "lr": row["lr"]}
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    _finish(_start(tmp, tmp / "out"))
    return tmp / "out"


def _kill_inside_second_checkpoint_write(tmp_path, out) -> str:
    proc = _start(tmp_path, out, "write", "2", r"^model_\d+\.pth$")
    where = _killed(proc)
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"  # the torn write never took its place
    assert [p.name for p in out.iterdir() if ".tmp." in p.name] == [".model_0000003.pth.tmp." + str(proc.pid)]
    return where


def _kill_at_a_seeded_iteration(tmp_path, out) -> str:
    # once iteration 1..3 is logged: the checkpoint after iteration 1 exists, the final one is not reached
    return _killed(_start(tmp_path, out, "step", "1", str(MAX_ITER - 3), str(out / "metrics.json"), "iteration"))


@pytest.mark.parametrize("kill", [_kill_inside_second_checkpoint_write,
                                  pytest.param(_kill_at_a_seeded_iteration, marks=pytest.mark.slow)],
                         ids=["during-checkpoint-write", "seeded-iteration"])
def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, kill):
    out = tmp_path / "out"
    where = kill(tmp_path, out)
    saved = int(re.fullmatch(r"model_(\d+)\.pth", (out / "last_checkpoint").read_text()).group(1))
    left_a_temporary_file = any(".tmp." in p.name for p in out.iterdir())
    logged_before = (out / "metrics.json").read_text()  # the resumed process appends its own lines
    log = _finish(_start(tmp_path, out, resume=True))
    assert f"Starting training from iteration {saved + 1}\n" in log, f"{where}: not resumed after iteration {saved}"
    trained = sorted(_per_iteration((out / "metrics.json").read_text()[len(logged_before):]))
    assert trained == list(range(saved + 1, MAX_ITER)), f"{where}: the resumed run trained iterations {trained}"
    assert not [p.name for p in out.iterdir() if ".tmp." in p.name], f"{where}: temporary file left"
    assert ("temporary file(s) of killed checkpoint writes" in log) is left_a_temporary_file, where

    resumed, reference = (_per_iteration((d / "metrics.json").read_text()) for d in (out, uninterrupted))
    assert resumed == reference, f"{where}: losses or lr differ"
    final, reference = (torch.load(d / "model_final.pth", weights_only=True) for d in (out, uninterrupted))
    for part in ("model", "ema_state"):
        assert final[part].keys() == reference[part].keys()
        for key, value in reference[part].items():
            assert torch.equal(final[part][key], value), f"{where}: {part} {key} differs"


def _sharded(tmp_path, out, *prefix, resume=False) -> subprocess.CompletedProcess:
    """tools/train_det.py --fsdp under torchrun, 2 processes (after `prefix`: tests/faults.py and its arguments)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *prefix,
           str(ROOT / "tools/train_det.py"), "--fsdp", *(["--resume"] if resume else []), *_command(tmp_path, out)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # a 2-process run
def test_a_checkpoint_of_a_run_without_sharding_resumes_sharded(uninterrupted, tmp_path):
    """The one-process run's iteration-3 checkpoint (optimizer state by position), resumed by 2 processes under
    --fsdp: AdamW's state carries over (every parameter ends at step 6, not 2 after a fresh start)."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(uninterrupted / "model_0000003.pth", out)
    (out / "last_checkpoint").write_text("model_0000003.pth")
    resumed = _sharded(tmp_path, out, resume=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    state = torch.load(out / "model_final.pth", weights_only=True)["trainer"]["optimizer"]["state"]
    assert {float(values["step"]) for values in state.values()} == {MAX_ITER}


@pytest.mark.slow  # three 2-process runs
def test_killed_sharded_run_resumes_to_the_uninterrupted_result(tmp_path):
    """2 gloo processes under FSDP2 (--fsdp), both killed once iteration 2 is logged (after the iteration-1
    checkpoint: the whole model, EMA and optimizer state by name, gathered from the shards), resumed: the same loss
    and lr at every iteration, and bit-equal weights and EMA, as the sharded run that was not interrupted."""
    def torchrun(out, *prefix, resume=False):
        return _sharded(tmp_path, out, *prefix, resume=resume)

    straight, out = tmp_path / "straight", tmp_path / "out"
    assert torchrun(straight).returncode == 0
    killed = torchrun(out, str(ROOT / "tests/faults.py"), "step", "2", "2", str(out / "metrics.json"), "iteration")
    saved = (out / "last_checkpoint").read_text()
    assert killed.returncode != 0 and saved == "model_0000001.pth", killed.stderr[-3000:]
    resumed = torchrun(out, resume=True)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "Starting training from iteration 2\n" in log, log[-3000:]
    assert _per_iteration((out / "metrics.json").read_text()) == _per_iteration((straight / "metrics.json").read_text())
    final, reference = (torch.load(d / "model_final.pth", weights_only=True) for d in (out, straight))
    assert final["trainer"]["optimizer_layout"] == "by_name"
    for part in ("model", "ema_state"):
        torch.testing.assert_close(final[part], reference[part], rtol=0, atol=0)
