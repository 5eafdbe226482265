"""tools/train_seg.py, test_seg.py and infer_seg.py end to end: demo run, resume, 2-process DDP, evaluation, inference."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from tool_process import run_tool

DEMO = "configs/demo/eva02_Ti_seg.py"
REPO = Path(__file__).resolve().parents[2]


def last_iter_checkpoint(work_dir):
    return torch.load(Path(work_dir, "last_checkpoint").read_text().strip(), map_location="cpu")  # weights_only


def test_resume_continues_at_the_saved_iteration(repo, tmp_path, run_tool, tiny_config):
    env = {"SHAPES_ROOT": str(tmp_path / "data")}
    work = tmp_path / "work"
    run_tool("train_seg.py", "--config-file", tiny_config(tmp_path, max_iters=2), "--output", work, env=env)  # "interrupted"
    assert last_iter_checkpoint(work)["meta"]["iter"] == 2
    proc = run_tool("train_seg.py", "--config-file", tiny_config(tmp_path, max_iters=4), "--output", work, "--resume",
                    env=env)
    log = proc.stdout + proc.stderr
    assert re.search(r"resumed epoch: \d+, iter: 2", log), log[-3000:]
    assert "Iter(train) [3/4]" in log and "Iter(train) [1/4]" not in log
    ckpt = last_iter_checkpoint(work)
    assert ckpt["meta"]["iter"] == 4
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {4}  # AdamW state carried over: 2 steps before the interruption + 2 after


def _one_image_per_process_config(folder, base) -> Path:
    """`base` for runs of one image per process that equal one process with all of them. GroupNorm instead of the
    demo's BN: BN over 1 image per rank is not BN over 2 (SyncBN has no CPU kernel, and BN on UperNet's 1x1 pooled
    branch needs 2 values per channel). No dropout. Constant lr 1.5e-3 (no warmup), so every step counts; AdamW eps
    1e-6 (not 1e-8): lr g / (|g| + eps) amplifies the summation-order noise of gradients near 1e-9 (measured 4e-6
    at eps 1e-8)."""
    config = Path(folder) / "one_image_per_process.py"
    config.write_text(f"""_base_ = ["{base}"]
norm_cfg = dict(type="GN", num_groups=4, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg, dropout_ratio=0.0),
             auxiliary_head=dict(norm_cfg=norm_cfg, dropout_ratio=0.0))
optim_wrapper = dict(optimizer=dict(eps=1e-6))
param_scheduler = []
""")
    return config


@pytest.mark.parametrize("parallel", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp"])
def test_ddp_equals_one_process(tmp_path, torchrun, tiny_config, run_tool, parallel):
    """torchrun, 2 gloo processes with one image each = 1 process with both (global batch 2): every weight after 3
    iterations (mmengine's InfiniteSampler: each rank takes every 2nd index of one shuffled stream of 8 images),
    under DDP and under FSDP2 (--fsdp: weights, gradients and AdamW state sharded; it also validates after iteration
    2, on the unsharded weights, and saves the best checkpoint then, which changes nothing). The crop is the whole
    64 px image (no random augmentation), and cross-entropy averages over every pixel of equal-sized images, so the
    mean of the per-rank means is the batch mean. The sharded run's checkpoint holds the whole model:
    tools/test_seg.py evaluates it."""
    config = _one_image_per_process_config(tmp_path, tiny_config(tmp_path, max_iters=3))
    sharded = parallel == "fsdp"
    runs = {}
    for nproc, flags, overrides in ((1, [], []), (2, ["--fsdp"] if sharded else [],
                                                  ["train_cfg.val_interval=2",
                                                   "default_hooks.checkpoint.save_best=mIoU"] if sharded else [])):
        runs[nproc] = tmp_path / f"work{nproc}"
        torchrun("train_seg.py", *flags, "--config-file", config, "--output", runs[nproc],
                 f"train_dataloader.batch_size={2 // nproc}", *overrides, nproc=nproc,
                 env={"SHAPES_ROOT": str(tmp_path / "data")})
    one, two = (last_iter_checkpoint(runs[n]) for n in (1, 2))
    # 1% of an AdamW step: summation-order noise measured 8e-7; other images or a rank's own gradient move
    # weights by a good part of lr
    torch.testing.assert_close(two["state_dict"], one["state_dict"], rtol=0, atol=1.5e-5)
    if sharded:
        assert two["optimizer_layout"] == "by_name"
        proc = run_tool("test_seg.py", "--config-file", config, "--weights",
                        Path(runs[2], "last_checkpoint").read_text().strip(), "--output", tmp_path / "eval",
                        env={"SHAPES_ROOT": str(tmp_path / "data")})
        assert "mIoU" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The real demo config (full-depth EVA-02-Ti) started from a detection demo model's weights, as `make demo`
    does, 2 iterations on 8 images; returns (work dir, data root)."""
    tmp = tmp_path_factory.mktemp("demo")
    detector = instantiate(LazyConfig.load(str(REPO / "configs/demo/eva02_Ti_det.py")).model)
    torch.save({"model": detector.state_dict()}, tmp / "detector.pth")
    opts = [f"model.backbone.pretrained={tmp / 'detector.pth'}", "train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
            "train_dataloader.dataset.generate.num_train=8", "train_dataloader.dataset.generate.num_val=4",
            "val_dataloader.dataset.generate.num_train=8", "val_dataloader.dataset.generate.num_val=4",
            "test_dataloader.dataset.generate.num_train=8", "test_dataloader.dataset.generate.num_val=4"]
    proc = run_tool("tools/train_seg.py", "--config-file", DEMO, "--output", tmp / "work", *opts, cwd=REPO,
                    env={"SHAPES_ROOT": str(tmp / "data")})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "mIoU" in proc.stdout
    assert "will be deprecated" not in proc.stdout + proc.stderr  # mmseg's / mmengine's notices are hidden
    assert "cls_token: none in the checkpoint" in proc.stdout  # every other TrV weight came from the detector
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
    assert "skipped unreadable" in proc.stderr and "broken.jpg" in proc.stderr
    assert re.search(r"truncated\.jpg: image file is truncated", proc.stderr)
    assert "2 of 4 images done (batch size 1), 2 unreadable" in proc.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())  # eva02.common.cli.InferenceResults
    assert results["config"] == DEMO and results["weights"] == ckpt
    assert results["unreadable_images"] == 2
    assert sorted(Path(r["file_name"]).name for r in results["unreadable_files"]) == ["broken.jpg", "truncated.jpg"]
    assert [(Path(r["file_name"]).name, r["drawn"], r["labels"]) for r in results["images"]] == [
        ("photo0.jpg", "photo0.png", "photo0_labels.png"), ("photo1.jpg", "photo1.png", "photo1_labels.png")]
    overlay = cv2.imread(str(tmp_path / "out" / "photo0.png"))
    labels = cv2.imread(str(tmp_path / "out" / "photo0_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (128, 100) and labels.max() < 5
    assert overlay.shape[0] >= 128 and overlay.shape[1] > 100  # image + legend panel
    assert not (tmp_path / "out" / "broken.png").exists()
    # KEY=VALUE overrides reach the model (slide inference gives a label map of the same size); a typo is one line
    proc = run_tool("infer_seg.py", "--config-file", DEMO, "--weights", ckpt, "--input", inputs / "photo0.jpg",
                    "--output", tmp_path / "slide", "model.test_cfg.mode=slide", "model.test_cfg.crop_size=(64,64)",
                    "model.test_cfg.stride=(48,48)", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    slide = cv2.imread(str(tmp_path / "slide" / "photo0_labels.png"), cv2.IMREAD_UNCHANGED)
    assert slide.shape == labels.shape and (slide != labels).any()  # 64-px windows see less context
    typo = run_tool("infer_seg.py", "--config-file", DEMO, "--weights", ckpt, "--input", inputs, "--output",
                    tmp_path / "typo", "model.test_cfg.mdoe=slide", check=False)
    assert typo.returncode == 2 and "did you mean model.test_cfg.mode?" in typo.stderr


def _per_iteration(scalars) -> dict[int, dict]:
    """The last logged loss and lr of each iteration in these scalars.json files (a resumed run logs redone ones
    again)."""
    rows = {}
    for path in sorted(scalars):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                rows[row["iter"]] = {"loss": row["loss"], "lr": row["lr"]}
    return rows


def test_killed_inside_a_checkpoint_write_resumes_to_the_uninterrupted_result(repo, tmp_path, run_tool, tiny_config):
    """SIGKILL inside the write of iter_4.pth (tests/faults.py): the previous checkpoint stays the last one, the
    next start removes the temporary file, and the resumed process starts at iteration 3, trains only 3..6 (its
    own log says so) and ends with the uninterrupted run's weights, optimizer state, and the loss and lr of every
    iteration."""

    env = {**os.environ, "SHAPES_ROOT": str(tmp_path / "data"), "OMP_NUM_THREADS": "2"}
    config = tiny_config(tmp_path, max_iters=6)
    run_tool("train_seg.py", "--config-file", config, "--output", tmp_path / "straight", env=env)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(repo / "tests/faults.py"), "write", "2", r"^iter_\d+\.pth$",
                           str(repo / "tools/train_seg.py"), "--config-file", str(config), "--output", str(killed)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert Path(killed, "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    assert [p.name.split(".tmp.")[0] for p in killed.iterdir() if ".tmp." in p.name] == [".iter_4.pth"]

    killed_logs = set(killed.glob("*/vis_data/scalars.json"))  # mmengine logs each run in a new timestamped folder
    resumed = run_tool("train_seg.py", "--config-file", config, "--output", killed, "--resume", env=env)
    log = resumed.stdout + resumed.stderr
    assert "resumed epoch: 0, iter: 2\n" in log, "the resumed run did not start after iteration 2"
    own_log = set(killed.glob("*/vis_data/scalars.json")) - killed_logs
    trained = sorted(_per_iteration(own_log))
    assert trained == [3, 4, 5, 6], f"the resumed run trained iterations {trained}"
    assert "temporary file(s) of killed checkpoint writes" in log
    assert not [p.name for p in killed.iterdir() if ".tmp." in p.name]
    assert _per_iteration(killed.glob("*/vis_data/scalars.json")) == \
        _per_iteration((tmp_path / "straight").glob("*/vis_data/scalars.json"))
    final, reference = last_iter_checkpoint(killed), last_iter_checkpoint(tmp_path / "straight")
    assert final["meta"]["iter"] == reference["meta"]["iter"] == 6
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    for index, state in reference["optimizer"]["state"].items():
        assert all(torch.equal(final["optimizer"]["state"][index][k], v) for k, v in state.items()), index


@pytest.mark.slow  # four 2-process runs
def test_killed_sharded_run_resumes_to_the_uninterrupted_result(repo, tmp_path, tiny_config):
    """2 gloo processes under FSDP2 (--fsdp), both killed once iteration 3 is logged (after the iteration-2
    checkpoint: the whole model and the optimizer state by parameter name, gathered from the shards) and resumed:
    the loss and lr of every iteration and the final weights and optimizer state are the uninterrupted sharded
    run's, to the bit. The same checkpoint resumed under DDP (no sharding) ends within summation-order noise."""
    env = {**os.environ, "SHAPES_ROOT": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    config = _one_image_per_process_config(tmp_path, tiny_config(tmp_path, max_iters=4))

    def torchrun(out, *prefix, flags=("--fsdp",)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *prefix,
               str(repo / "tools/train_seg.py"), *flags, "--config-file", str(config), "--output", str(out),
               "train_dataloader.batch_size=1"]
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)

    straight, killed, under_ddp = tmp_path / "straight", tmp_path / "killed", tmp_path / "under_ddp"
    assert torchrun(straight).returncode == 0
    proc = torchrun(killed, str(repo / "tests/faults.py"), "step", "3", "3", f"{killed}/*/vis_data/scalars.json",
                    "iter")
    assert proc.returncode != 0 and Path(killed, "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    shutil.copytree(killed, under_ddp)
    Path(under_ddp, "last_checkpoint").write_text(str(under_ddp / "iter_2.pth"))
    for out, flags in ((killed, ("--fsdp", "--resume")), (under_ddp, ("--resume",))):
        proc = torchrun(out, flags=flags)
        assert proc.returncode == 0 and "resumed epoch: 0, iter: 2" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    logged = {out: _per_iteration(out.glob("*/vis_data/scalars.json")) for out in (killed, straight)}
    assert logged[killed] == logged[straight]
    final, reference = last_iter_checkpoint(killed), last_iter_checkpoint(straight)
    assert final["optimizer_layout"] == "by_name" and final["meta"]["iter"] == 4
    torch.testing.assert_close(final["state_dict"], reference["state_dict"], rtol=0, atol=0)
    torch.testing.assert_close(final["optimizer"]["state"], reference["optimizer"]["state"], rtol=0, atol=0)
    torch.testing.assert_close(last_iter_checkpoint(under_ddp)["state_dict"], reference["state_dict"], rtol=0,
                               atol=1.5e-5)


@pytest.mark.slow  # a 1-process and a 2-process run
def test_a_checkpoint_of_a_run_without_sharding_resumes_sharded(tmp_path, torchrun, tiny_config):
    """A one-process run's iteration-2 checkpoint (optimizer state by position), resumed by 2 processes under
    --fsdp: AdamW's state carries over (every parameter ends at step 4, not 2 after a fresh start)."""
    config = _one_image_per_process_config(tmp_path, tiny_config(tmp_path, max_iters=4))
    env = {"SHAPES_ROOT": str(tmp_path / "data")}
    torchrun("train_seg.py", "--config-file", config, "--output", tmp_path / "one", "train_cfg.max_iters=2", nproc=1,
             env=env)
    work = tmp_path / "sharded"
    work.mkdir()
    shutil.copy(tmp_path / "one" / "iter_2.pth", work)
    Path(work, "last_checkpoint").write_text(str(work / "iter_2.pth"))
    torchrun("train_seg.py", "--fsdp", "--resume", "--config-file", config, "--output", work,
             "train_dataloader.batch_size=1", nproc=2, env=env)
    final = last_iter_checkpoint(work)
    assert final["optimizer_layout"] == "by_name" and final["meta"]["iter"] == 4
    assert {int(values["step"]) for values in final["optimizer"]["state"].values()} == {4}


@pytest.mark.parametrize("case", ["backbone-only --weights", "truncated load_from"])
def test_bad_checkpoint_is_one_line_naming_the_file(tmp_path, run_tool, tiny_config, case):
    if case == "backbone-only --weights":  # a MIM / p14to16 file has no 'backbone.' keys (was: "no tensors found")
        weights = tmp_path / "mim_p14to16.pt"
        torch.save({"module": {"pos_embed": torch.zeros(1, 5, 8)}}, weights)
        tool, args, expected = "test_seg.py", ["--weights", weights], f"{weights}: not a segmentor checkpoint"
    else:  # read by mmengine's loader (was: torch's RuntimeError, no file)
        weights = tmp_path / "iter_2.pth"
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, weights)
        weights.write_bytes(weights.read_bytes()[:2000])
        tool, args, expected = "train_seg.py", [f"load_from={weights}"], f"{weights} is not a readable checkpoint ("
    proc = run_tool(tool, "--config-file", tiny_config(tmp_path), "--output", tmp_path / "work", *args,
                    env={"SHAPES_ROOT": str(tmp_path / "data")}, check=False)
    message, hint = proc.stderr.strip().splitlines()[-2:]
    assert proc.returncode == 2 and hint == "(--debug shows the traceback)", proc.stderr[-3000:]
    assert expected in message and "<state dict>" not in message, message
