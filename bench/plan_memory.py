"""The memory planner's error: its estimate next to the measured peak of the same step run for real, in one run.

On the CPU (default) the reference is PyTorch's CPU allocator, read from the profiler's allocation records
(eva02.backbone.memory.measure_peak); on a GPU (--device cuda) it is torch.cuda.max_memory_allocated, with the
planner's CUDA target (512-byte blocks, the GPU's attention kernel). Each row runs a config's real training step
(two steps: the second with the optimizer state) or inference, as tools/plan_memory.py traces it.

Usage: python bench/plan_memory.py [--device cpu|cuda] [--paper]
--paper adds the paper's B configs at 256 px (Cascade Mask R-CNN training: minutes per row on a CPU).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from detectron2.config import LazyConfig
from mmengine.config import Config

from eva02.backbone import create_trv
from eva02.backbone.memory import estimate_memory, measure_peak
from eva02.det.memory import detector_step
from eva02.seg.memory import segmentor_step

ROOT = Path(__file__).resolve().parents[1]


def trv_step(size: int):
    def build():
        return create_trv("eva02_Ti", depth=4, patch_size=16, img_size=size, window_size=4,
                          global_blocks=(1, 3)).train()

    def run(model, phase):
        optimizer = torch.optim.AdamW(model.parameters())
        for _ in range(2):
            model(torch.randn(2, 3, size, size)).float().square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()

    return build, run


def cases(paper: bool):
    """(name, (build, run), whether tools/plan_memory.py traces it on a fake GPU for a GPU target: detector
    inference, so that detectron2's GPU code paths are taken; training is traced on the CPU device)."""
    det = lambda path: LazyConfig.load(str(ROOT / path))  # noqa: E731
    seg = lambda path: Config.fromfile(str(ROOT / path))  # noqa: E731
    yield "TrV Ti (4 blocks) training, 2 x 256 px", trv_step(256), False
    yield "demo detector training, 2 x 128 px, 10 objects", detector_step(det("configs/demo/eva02_Ti_det.py"), 2,
                                                                          128, True, objects=10), False
    yield ("demo detector inference, 2 x 128 px", detector_step(det("configs/demo/eva02_Ti_det.py"), 2, 128, False),
           True)
    yield ("B bsl detector inference, 1 x 256 px", detector_step(det("configs/coco/eva02_B_bsl.py"), 1, 256, False),
           True)
    yield "demo UperNet training, 2 x 128 px, 5 classes", segmentor_step(seg("configs/demo/eva02_Ti_seg.py"), 2, 128,
                                                                         True, classes=5), False
    yield ("demo UperNet inference, 2 x 128 px", segmentor_step(seg("configs/demo/eva02_Ti_seg.py"), 2, 128, False),
           False)
    if paper:
        yield "B bsl detector training, 1 x 256 px, 20 objects", detector_step(det("configs/coco/eva02_B_bsl.py"), 1,
                                                                               256, True, objects=20), False
        yield "B UperNet training, 1 x 256 px, 20 classes", segmentor_step(
            seg("configs/ade20k/upernet_eva02_B_512.py"), 1, 256, True, classes=20), False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--paper", action="store_true", help="add the paper's B configs at 256 px (slow on a CPU)")
    args = parser.parse_args(argv)
    target = "cuda" if args.device == "cuda" else "cpu"
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"planner estimate vs measured peak ({device_name}, torch {torch.__version__})")
    print(f"{'case':<52} {'estimate MiB':>12} {'measured MiB':>12} {'ratio':>6}")
    for name, (build, run), gpu_trace in cases(args.paper):
        start = time.perf_counter()
        estimate = estimate_memory(build, run, target=target, device="cuda" if gpu_trace and target == "cuda"
                                   else "cpu").peak
        torch.manual_seed(0)
        measured = measure_peak(build, run, device=args.device)
        print(f"{name:<52} {estimate / 2**20:12.1f} {measured / 2**20:12.1f} {estimate / measured:6.3f}"
              f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
