"""Training runs end to end: resume after an interruption, 2-process DDP on the CPU (gloo) through
tools/train_det.py, and the demo config (short here; the full AP >= 50 run is marked slow)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.engine import HookBase

from eva02.backbone.demo import SHAPE_CLASSES
from eva02.det.engine import run

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


def _train_det(args, timeout):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools/train_det.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_ddp_two_processes_on_cpu(tmp_path):
    """--num-gpus 2 without a GPU: two gloo processes, each its share of the batch, one checkpoint."""
    out = _train_det(["--config-file", DEMO, "--num-gpus", "2", "--dist-url", "auto",
                      *_demo_overrides(tmp_path, num_train=8), "train.max_iter=3",
                      "dataloader.train.total_batch_size=4",
                      "model.backbone.net.depth=2", "model.backbone.net.global_blocks=[1]"], timeout=600)
    assert "world size: 2" in out.lower() or "Rank of current process: 1" in out
    assert torch.load(tmp_path / "out/model_final.pth", weights_only=True)["iteration"] == 2
    assert "bbox" in json.loads((tmp_path / "out/results.json").read_text())


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


@pytest.mark.slow
def test_demo_reaches_box_ap_50(tmp_path):
    """The main job: the full demo run reaches box AP >= 50 on the generated shapes."""
    _train_det(["--config-file", DEMO, f"dataloader.setup.root={tmp_path / 'data'}",
                f"train.output_dir={tmp_path / 'out'}"], timeout=3600)
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["bbox"]["AP"] >= 50, results
