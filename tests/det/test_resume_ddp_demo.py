"""Training runs end to end: resume after an interruption, 2-process DDP on the CPU (gloo) through
tools/train_det.py, and the demo config (short here; the full run is tests/test_demo.py, slow)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.engine import HookBase

from eva02.common.shapes import SHAPE_CLASSES
from eva02.det.engine import run
from tool_process import run_tool

ROOT = Path(__file__).resolve().parents[2]
DEMO = "configs/demo/eva02_Ti_det.py"


class _Interrupt(HookBase):
    def __init__(self, at_iter: int):
        self.at_iter = at_iter

    def after_step(self):
        if self.trainer.iter == self.at_iter:
            raise KeyboardInterrupt(f"simulated interruption after iteration {self.at_iter}")


def _logged_iterations(out_dir) -> list[int]:
    with open(out_dir / "metrics.json") as f:
        return [json.loads(line)["iteration"] for line in f if '"total_loss"' in line]


def test_resume_continues_at_the_saved_iteration(make_config, shapes, tmp_path):
    cfg = make_config("configs/coco/eva02_B_bsl.py", tmp_path, num_classes=len(SHAPE_CLASSES), max_iter=5)
    cfg.train.checkpointer.period = 2  # saves after iterations 1 and 3
    with pytest.raises(KeyboardInterrupt):
        run(cfg, extra_hooks=[_Interrupt(at_iter=2)])
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    assert saved["iteration"] == 1 and {"optimizer", "hooks"} <= saved["trainer"].keys()

    cfg = make_config("configs/coco/eva02_B_bsl.py", tmp_path, num_classes=len(SHAPE_CLASSES), max_iter=5)
    run(cfg, resume=True)
    assert _logged_iterations(tmp_path) == [0, 1, 2, 2, 3, 4]  # iteration 2 ran again, from the checkpoint
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 4


def _demo_overrides(tmp_path, num_train: int, image_size: int = 128) -> list[str]:
    return [f"dataloader.setup.root={tmp_path / 'data'}", f"dataloader.setup.num_train={num_train}",
            "dataloader.setup.num_val=4", f"train.output_dir={tmp_path / 'out'}", "train.save_predictions=2",
            "dataloader.train.num_workers=0"]


def _train_det(args, timeout, threads_per_process: int | None = None):
    env = {"PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads_per_process)} if threads_per_process else {})}
    proc = run_tool(ROOT / "tools/train_det.py", *args, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


# What may differ between 2 processes x 1 image and 1 process x 2 images is removed here, not tolerated:
# - augmentation off (each rank seeds its generators with seed + rank);
# - RPN and RoI sampling draw from each process's generator: every anchor and every RoI is taken instead (sample
#   sizes above their counts, positive fraction 1), so nothing is drawn;
# - RoI losses are means over the batch's RoIs, DDP averages per-image means: one object per image and a fixed
#   proposal count give every image the same RoI count (16 + its ground truth), so the two means agree (the RPN
#   divides by a fixed batch_size_per_image x images); the mask head is off, its loss is a mean over the positive
#   RoIs, whose number differs per image;
# - AdamW eps 1e-6 instead of 1e-8: an element whose gradient is ~1e-9 (the float-noise floor of the RPN conv's
#   sums) moves by lr g / (|g| + eps), which amplifies summation-order noise up to ~10% of lr at eps 1e-8.
# No BatchNorm (LN heads), no drop path (demo config).
DDP_EQUALITY = ["dataloader.setup.num_train=4", "dataloader.setup.num_val=1", "dataloader.setup.max_objects=1",
                "train.save_predictions=0", "train.max_iter=3", "dataloader.train.total_batch_size=2",
                "dataloader.train.num_workers=0", "dataloader.train.mapper.augmentations=[]",
                "model.backbone.net.depth=2", "model.backbone.net.global_blocks=[1]",
                "model.proposal_generator.batch_size_per_image=4096",  # > the 4092 anchors of a 128 px image
                "model.proposal_generator.positive_fraction=1.0", "model.proposal_generator.pre_nms_topk=[50,50]",
                "model.proposal_generator.post_nms_topk=[16,16]", "model.roi_heads.positive_fraction=1.0",
                "model.roi_heads.mask_in_features=None", "model.roi_heads.mask_pooler=None",
                "model.roi_heads.mask_head=None", "optimizer.eps=1e-6"]


@pytest.fixture(scope="module")
def one_process_weights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp1")
    _train_det(["--config-file", DEMO, f"dataloader.setup.root={tmp / 'data'}", f"train.output_dir={tmp / 'out'}",
                *DDP_EQUALITY], timeout=600)
    return torch.load(tmp / "out/model_final.pth", weights_only=True)["model"]


@pytest.mark.parametrize("launcher", ["torchrun", pytest.param("num-gpus", marks=pytest.mark.slow), "torchrun --fsdp"])
def test_ddp_equals_one_process(tmp_path, torchrun, one_process_weights, launcher):
    """2 gloo processes with one image each (under torchrun, or detectron2's own --num-gpus 2 launch; DDP, or FSDP2
    sharding weights, gradients and AdamW state) = 1 process with both (global batch 2): every weight after 3 steps
    (each rank takes every 2nd index of one shuffled stream of the 4 images). The sharded run's checkpoint holds
    the whole detector, as any other; it also runs the EMA and evaluates 3 images on the 2 processes (2 + 1
    forward passes, which a sharded forward could not do: each gathers with every process), neither of which
    changes the weights trained, and tools/test_det.py evaluates its checkpoint."""
    args = ["--config-file", DEMO, f"dataloader.setup.root={tmp_path / 'data'}", f"train.output_dir={tmp_path}",
            *DDP_EQUALITY]
    sharded = launcher.endswith("--fsdp")
    if sharded:
        args += ["dataloader.setup.num_val=3", "train.model_ema.enabled=True", "train.eval_period=2"]
    if launcher.startswith("torchrun"):
        torchrun("train_det.py", *launcher.split()[1:], *args, nproc=2)
    else:
        _train_det(["--num-gpus", "2", "--dist-url", "auto", *args], timeout=600, threads_per_process=1)
    # 1% of an Adam step (lr 3e-4): summation-order noise measured 1.2e-7; one rank's own gradient or other images
    # move weights by a good part of lr
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    torch.testing.assert_close(saved["model"], one_process_weights, rtol=0, atol=3e-6)
    if sharded:
        assert saved["ema_state"].keys() == saved["model"].keys() and saved["trainer"]["optimizer_layout"] == "by_name"
        assert all(saved["ema_state"][k].shape == v.shape for k, v in saved["model"].items())
        out = run_tool(ROOT / "tools/test_det.py", "--weights", tmp_path / "model_final.pth",
                       "--output", tmp_path / "eval", *args[:3], *DDP_EQUALITY, "dataloader.setup.num_val=3")
        assert out.returncode == 0 and "copypaste: Task: bbox" in out.stdout + out.stderr, out.stderr[-3000:]


def test_demo_short_run(tmp_path):
    """The demo config, as `make demo` runs it, for 3 iterations: data generated, trained, evaluated (box and
    mask AP table printed), predictions drawn."""
    cfg = LazyConfig.load(str(ROOT / DEMO))
    assert cfg.model.backbone.net.arch == "eva02_Ti" and "depth" not in cfg.model.backbone.net
    out = _train_det(["--config-file", DEMO, *_demo_overrides(tmp_path, num_train=8), "train.max_iter=3"],
                     timeout=600)
    assert "copypaste: Task: bbox" in out and "copypaste: Task: segm" in out
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert {"bbox", "segm"} <= results.keys()
    assert len(list((tmp_path / "out/predictions").glob("*.png"))) == 2


@pytest.mark.slow  # a 1-process and a 2-process run per case
@pytest.mark.parametrize("tuning", [["--frozen-stages", "1"], ["--lora-rank", "4"]], ids=["frozen", "lora"])
def test_sharded_tuning_equals_one_process(tmp_path, torchrun, tuning):
    """Training less of the encoder, sharded: 2 processes under --fsdp with the embeddings and block 0 frozen, or with
    LoRA adapters (frozen weights and trainable adapters in the same FSDP2 units), equal one process training the
    same way: every weight, adapters included, after 3 steps."""
    args = ["--config-file", DEMO, f"dataloader.setup.root={tmp_path / 'data'}", *DDP_EQUALITY]
    _train_det([*tuning, *args[:2], f"train.output_dir={tmp_path / 'one'}", *args[2:]], timeout=600)
    torchrun("train_det.py", "--fsdp", *tuning, *args[:2], f"train.output_dir={tmp_path / 'two'}", *args[2:], nproc=2)
    one, two = (torch.load(tmp_path / run / "model_final.pth", weights_only=True)["model"] for run in ("one", "two"))
    torch.testing.assert_close(two, one, rtol=0, atol=3e-6)


@pytest.mark.slow  # two 2-process runs' worth
def test_two_machine_command_equals_one_process(tmp_path, one_process_weights):
    """The multi-machine command of docs/sharding.md (torchrun --nnodes 2 --node-rank R, c10d rendezvous), as two
    "machines" of one process each on this one, sharded with --fsdp: the weights of one process with both images."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = ["--fsdp", "--config-file", DEMO, f"dataloader.setup.root={tmp_path / 'data'}",
            f"train.output_dir={tmp_path}", *DDP_EQUALITY]
    machines = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank), "--nproc_per_node",
         "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", str(ROOT / "tools/train_det.py"),
         *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    for machine in machines:
        log, _ = machine.communicate(timeout=600)
        assert machine.returncode == 0, log[-3000:]
    weights = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    torch.testing.assert_close(weights, one_process_weights, rtol=0, atol=3e-6)
