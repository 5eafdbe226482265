"""tools/train_seg.py, test_seg.py and infer_seg.py end to end: demo run, resume, 2-process DDP, evaluation, inference."""
import json
import os
import re
import socket
from pathlib import Path

import cv2
import pytest
import torch

DEMO = "configs/demo/eva02_Ti_seg.py"


def tiny_config(repo, tmp_path, **train_cfg):
    """The demo config with a 2-block, 64-wide TrV, 64-pixel crops and 8 training images."""
    path = tmp_path / "tiny_seg.py"
    path.write_text(f"""
_base_ = ["{repo / DEMO}"]
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(arch_overrides=dict(depth=2, embed_dim=64, num_heads=2, mlp_hidden=170), out_indices=(0, 1, 1, 1),
                  img_size=64),
    decode_head=dict(in_channels=[64] * 4, channels=16),
    auxiliary_head=dict(in_channels=64, channels=8),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomCrop", crop_size=(64, 64)),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, generate=dict(num_train=8, num_val=4, size=64)))
val_dataloader = dict(num_workers=0, persistent_workers=False, batch_size=1,
                      dataset=dict(generate=dict(num_train=8, num_val=4, size=64)))
test_dataloader = val_dataloader
optim_wrapper = dict(paramwise_cfg=dict(num_layers=2))
train_cfg = dict(max_iters={train_cfg.get('max_iters', 2)}, val_interval=100)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, save_best=None))
log_processor = dict(window_size=1)  # each logged loss is that iteration's, not a running mean
""")
    return path


def last_iter_checkpoint(work_dir):
    return torch.load(Path(work_dir, "last_checkpoint").read_text().strip(), map_location="cpu")  # weights_only


def test_resume_continues_at_the_saved_iteration(repo, tmp_path, run_tool):
    env = {"SHAPES_ROOT": str(tmp_path / "data")}
    work = tmp_path / "work"
    run_tool("train_seg.py", "--config-file", tiny_config(repo, tmp_path, max_iters=2), "--output", work, env=env)  # "interrupted"
    assert last_iter_checkpoint(work)["meta"]["iter"] == 2
    proc = run_tool("train_seg.py", "--config-file", tiny_config(repo, tmp_path, max_iters=4), "--output", work, "--resume",
                    env=env)
    log = proc.stdout + proc.stderr
    assert re.search(r"resumed epoch: \d+, iter: 2", log), log[-3000:]
    assert "Iter(train) [3/4]" in log and "Iter(train) [1/4]" not in log
    ckpt = last_iter_checkpoint(work)
    assert ckpt["meta"]["iter"] == 4
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {4}  # AdamW state carried over: 2 steps before the interruption + 2 after


def test_two_process_ddp_on_cpu(repo, tmp_path, run_tool):
    env = {"SHAPES_ROOT": str(tmp_path / "data")}
    with socket.socket() as probe:  # a free port: a fixed one may still be held by an earlier run
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = run_tool("train_seg.py", "--config-file", tiny_config(repo, tmp_path), "--output", tmp_path / "work",
                    env=env, launcher=["--nproc_per_node", "2", "--master_port", str(port)])
    log = proc.stdout + proc.stderr
    assert "Distributed launcher: pytorch" in log and "Distributed training: True" in log
    assert "GPU number: 2" in log  # mmengine names the world size so, CPU processes included
    assert "Iter(train) [2/2]" in log
    assert last_iter_checkpoint(tmp_path / "work")["meta"]["iter"] == 2


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The real demo config (full-depth EVA-02-Ti), 2 iterations on 8 images; returns (work dir, data root)."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("demo")
    opts = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
            "train_dataloader.dataset.generate.num_train=8", "train_dataloader.dataset.generate.num_val=4",
            "val_dataloader.dataset.generate.num_train=8", "val_dataloader.dataset.generate.num_val=4",
            "test_dataloader.dataset.generate.num_train=8", "test_dataloader.dataset.generate.num_val=4"]
    env = {**os.environ, "SHAPES_ROOT": str(tmp / "data"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "tools/train_seg.py", "--config-file", DEMO, "--output", str(tmp / "work"),
                           *opts], cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "mIoU" in proc.stdout
    return tmp / "work", tmp / "data"


def test_demo_short_run_then_evaluate_with_show_dir(demo_run, repo, run_tool, tmp_path):
    work, data = demo_run
    ckpt = Path(work, "last_checkpoint").read_text().strip()
    proc = run_tool("test_seg.py", "--config-file", DEMO, "--weights", ckpt, "--output", tmp_path / "eval",
                    "--show-dir", tmp_path / "show",
                    env={"SHAPES_ROOT": str(data)})
    assert re.search(r"mIoU: \d+\.\d+", proc.stdout)
    drawn = [f for _, _, files in os.walk(tmp_path / "show") for f in files if f.endswith(".png")]
    assert len(drawn) == 4  # every validation image drawn (the split generated by demo_run)
    metrics = [p for p in (tmp_path / "eval").rglob("*.json") if p.name != "results.json"]
    assert metrics and "mIoU" in json.loads(metrics[-1].read_text().splitlines()[-1])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["unreadable_images"] == 0 and results["unreadable_files"] == []
    assert f"mIoU {results['mIoU']:.2f}" in proc.stdout


@pytest.mark.slow  # 12 views per image with the full-depth Ti; test_model.py covers TTA shapes in the default set
def test_demo_checkpoint_multiscale_flip_evaluation(demo_run, repo, run_tool, tmp_path):
    work, data = demo_run
    ckpt = Path(work, "last_checkpoint").read_text().strip()
    proc = run_tool("test_seg.py", "--config-file", DEMO, "--weights", ckpt, "--ms-flip", "--output", tmp_path / "eval",
                    env={"SHAPES_ROOT": str(data)})
    assert re.search(r"mIoU: \d+\.\d+", proc.stdout)


def test_infer_writes_overlays_and_skips_bad_images(demo_run, repo, run_tool, tmp_path):
    work, data = demo_run
    ckpt = Path(work, "last_checkpoint").read_text().strip()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        img = cv2.imread(str(data / "images" / "validation" / f"{i:05d}.jpg"))
        cv2.imwrite(str(inputs / f"photo{i}.jpg"), img[:, :100])  # non-square
    (inputs / "broken.jpg").write_bytes(b"\x00garbage")
    whole = (inputs / "photo1.jpg").read_bytes()
    (inputs / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    assert cv2.imread(str(inputs / "truncated.jpg")) is not None  # cv2 alone would segment the part it decodes
    proc = run_tool("infer_seg.py", "--config-file", DEMO, "--weights", ckpt, "--input", inputs, "--output",
                    tmp_path / "out", check=False)
    assert proc.returncode == 1
    assert "broken.jpg" in proc.stdout + proc.stderr and "truncated.jpg (image file is truncated" in proc.stderr
    assert "2 of 4 images segmented, 2 unreadable" in proc.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["unreadable_images"] == 2 and [Path(r["file_name"]).name for r in results["segmented"]] == [
        "photo0.jpg", "photo1.jpg"]
    overlay = cv2.imread(str(tmp_path / "out" / "photo0.png"))
    labels = cv2.imread(str(tmp_path / "out" / "photo0_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (128, 100) and labels.max() < 5
    assert overlay.shape[0] >= 128 and overlay.shape[1] > 100  # image + legend panel
    assert not (tmp_path / "out" / "broken.png").exists()


def _per_iteration(work) -> dict[int, dict]:
    """The last logged loss and lr of each iteration (a resumed run logs the redone ones again)."""
    rows = {}
    for path in sorted(Path(work).glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                rows[row["iter"]] = {"loss": row["loss"], "lr": row["lr"]}
    return rows


def test_killed_inside_a_checkpoint_write_resumes_to_the_uninterrupted_result(repo, tmp_path, run_tool):
    """SIGKILL inside the write of iter_4.pth (tests/kill_during_save.py): the previous checkpoint stays the last
    one, the next start removes the temporary file, and the resumed run ends with the uninterrupted run's
    weights, optimizer state, and the loss and lr of every iteration."""
    import subprocess
    import sys

    env = {**os.environ, "SHAPES_ROOT": str(tmp_path / "data"), "OMP_NUM_THREADS": "2"}
    config = tiny_config(repo, tmp_path, max_iters=6)
    run_tool("train_seg.py", "--config-file", config, "--output", tmp_path / "straight", env=env)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(repo / "tests/kill_during_save.py"), "2", r"^iter_\d+\.pth$",
                           str(repo / "tools/train_seg.py"), "--config-file", str(config), "--output", str(killed)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert Path(killed, "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    assert [p.name.split(".tmp.")[0] for p in killed.iterdir() if ".tmp." in p.name] == [".iter_4.pth"]

    resumed = run_tool("train_seg.py", "--config-file", config, "--output", killed, "--resume", env=env)
    assert "temporary file(s) of killed checkpoint writes" in resumed.stdout + resumed.stderr
    assert not [p.name for p in killed.iterdir() if ".tmp." in p.name]
    assert _per_iteration(killed) == _per_iteration(tmp_path / "straight")
    final, reference = last_iter_checkpoint(killed), last_iter_checkpoint(tmp_path / "straight")
    assert final["meta"]["iter"] == reference["meta"]["iter"] == 6
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    for index, state in reference["optimizer"]["state"].items():
        assert all(torch.equal(final["optimizer"]["state"][index][k], v) for k, v in state.items()), index
