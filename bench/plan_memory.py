"""The memory planner's error: its estimate next to the measured peak of the same step run for real, in one run.

On the CPU (default) the reference is PyTorch's CPU allocator, read from the profiler's allocation records
(eva02.common.memory.measure_peak); on a GPU (--device cuda) it is torch.cuda.max_memory_allocated, with the
planner's CUDA target (512-byte blocks, the GPU's attention kernel). Each row runs a config's real training step
(two steps: the second with the optimizer state) or inference, as tools/plan_memory.py traces it. A sharded row
(FSDP2) is measured on rank 0 of a real run of its processes, which the script starts (this script with --rank-of).

CASES are the rows of docs/memory.md's error table with the CPU ratio this script printed for each; the tests
(tests/common/test_memory.py) hold every row to its ratio, the `slow` ones under `-m slow`.

Usage: python bench/plan_memory.py [--device cpu|cuda] [--paper]
--paper adds the slow rows, the paper's B configs: minutes for inference, half an hour per training row on 2 cores.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from eva02.backbone import create_trv
from eva02.common.memory import MemoryEstimate, estimate_memory, measure_peak
from eva02.common.sharding import shard

ROOT = Path(__file__).resolve().parents[1]


def trv_step(size: int, checkpointing: bool = False, sharded: bool = False, **tuning):
    """tuning: frozen_stages / lora (eva02.backbone.tuning): what trains, hence which gradients and optimizer
    state exist. sharded: FSDP2 over the process group's processes, one unit per block (as training shards)."""
    def build():
        return create_trv("eva02_Ti", depth=4, patch_size=16, img_size=size, window_size=4, global_blocks=(1, 3),
                          use_checkpoint=checkpointing, **tuning).train()

    def run(model, phase):
        if sharded:
            shard(model, model.blocks, next(model.parameters()).device)
        optimizer = torch.optim.AdamW(model.parameters())
        for _ in range(2):
            model(torch.randn(2, 3, size, size)).float().square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()

    return build, run


def mim_step(batch: int, **kwargs):
    """MIM pre-training's step (eva02.backbone.mim.memory) with a shrunk student and a small CLIP tower as teacher,
    built with weights so that it also runs for real."""
    from eva02.backbone.mim.memory import mim_step as step
    return step("eva02_Ti", batch, 112, teacher="vit_xsmall_patch16_clip_224", on_meta=False, depth=4, **kwargs)


def det_step(config: str, *args, **kwargs):
    from detectron2.config import LazyConfig

    from eva02.det.memory import detector_step
    return detector_step(LazyConfig.load(str(ROOT / config)), *args, **kwargs)


def seg_step(config: str, *args, narrow: bool = False, **kwargs):
    """narrow: the config shrunk as the segmentation tests shrink it (tests/seg/conftest.py), at 64 px crops."""
    from mmengine.config import Config

    from eva02.seg.memory import segmentor_step
    cfg = Config.fromfile(str(ROOT / config))
    if narrow:
        spec = importlib.util.spec_from_file_location("seg_test_configs", ROOT / "tests/seg/conftest.py")
        conftest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(conftest)
        cfg = conftest.shrink(cfg, "unused", crop=64)
    return segmentor_step(cfg, *args, **kwargs)


class Case(NamedTuple):
    """A row of docs/memory.md's table. step: () -> (build, run), the configs loaded when the row runs.
    ratio: estimate / measured on the CPU, as this script printed it. slow: its real step takes minutes on 2 cores
    (`--paper`).
    gpu_trace: tools/plan_memory.py traces it on a fake GPU for a GPU target (detector inference, so that
    detectron2's GPU code paths are taken; training is traced on the CPU device).
    world: processes of a sharded step; the reference is rank 0's peak in a real run of that many processes
    (gloo), the estimate rank 0's in the trace (eva02.common.memory.fake_process_group)."""

    name: str
    step: Callable[[], tuple]
    ratio: float
    slow: bool = False
    gpu_trace: bool = False
    world: int = 1


DEMO_DET, B_DET = "configs/demo/eva02_Ti_det.py", "configs/coco/eva02_B_bsl.py"
DEMO_SEG = "configs/demo/eva02_Ti_seg.py"
CASES = (
    Case("TrV Ti (4 blocks) training, 2 x 256 px", lambda: trv_step(256), 1.000),
    Case("TrV Ti (4 blocks) training, checkpointing, 2 x 256 px", lambda: trv_step(256, checkpointing=True), 1.000),
    Case("TrV Ti (4 blocks) training, 2 blocks frozen, 2 x 256 px", lambda: trv_step(256, frozen_stages=2), 1.000),
    Case("TrV Ti (4 blocks) training, LoRA rank 8, 2 x 256 px", lambda: trv_step(256, lora=dict(rank=8)), 1.000),
    Case("TrV Ti (4 blocks) training, FSDP2 over 2 processes, 2 x 256 px", lambda: trv_step(256, sharded=True),
         1.000, world=2),
    Case("MIM Ti (4 blocks) vs CLIP ViT-XS teacher, bf16, 4 x 112 px", lambda: mim_step(4), 1.000),
    Case("MIM Ti (4 blocks), FSDP2 over 2 processes, bf16, 4 x 112 px", lambda: mim_step(4, sharded=True), 0.984,
         slow=True, world=2),
    Case("demo detector training, 2 x 128 px, 10 objects", lambda: det_step(DEMO_DET, 2, 128, True, objects=10),
         1.010),
    Case("demo detector inference, 2 x 128 px", lambda: det_step(DEMO_DET, 2, 128, False), 1.000, gpu_trace=True),
    Case("demo detector training, FSDP2 over 2 processes, 2 x 128 px",
         lambda: det_step(DEMO_DET, 2, 128, True, objects=10, sharded=True), 1.013, slow=True, world=2),
    Case("demo UperNet training, FSDP2 over 2 processes, 2 x 128 px",
         lambda: seg_step(DEMO_SEG, 2, 128, True, classes=5, sharded=True), 0.855, slow=True, world=2),
    Case("demo UperNet training, 2 x 128 px, 5 classes", lambda: seg_step(DEMO_SEG, 2, 128, True, classes=5), 0.887),
    Case("demo UperNet inference, 2 x 128 px", lambda: seg_step(DEMO_SEG, 2, 128, False), 0.934),
    Case("narrow Mask2Former training, 2 x 64 px, 5 classes",
         lambda: seg_step("configs/ade20k/mask2former_eva02_L_640.py", 2, 64, True, classes=5, narrow=True), 1.004),
    Case("B bsl detector inference, 1 x 256 px", lambda: det_step(B_DET, 1, 256, False), 1.000, slow=True,
         gpu_trace=True),
    Case("B bsl detector training, 1 x 256 px, 20 objects", lambda: det_step(B_DET, 1, 256, True, objects=20),
         1.093, slow=True),
    Case("B UperNet training, 1 x 256 px, 20 classes",
         lambda: seg_step("configs/ade20k/upernet_eva02_B_512.py", 1, 256, True, classes=20), 1.000, slow=True),
)


def measure(case: Case, device: str = "cpu") -> tuple[MemoryEstimate, int]:
    """The planner's estimate of the case's step (for the device's target) and its measured peak, in bytes."""
    build, run = case.step()
    target = "cuda" if device == "cuda" else "cpu"
    estimate = estimate_memory(build, run, target=target, device="cuda" if case.gpu_trace and target == "cuda"
                               else "cpu", world=case.world)
    if case.world > 1:
        return estimate, _measure_processes(case, device)
    torch.manual_seed(0)
    return estimate, measure_peak(build, run, device=device)


def _measure_processes(case: Case, device: str) -> int:
    """Rank 0's measured peak of the case's step run by case.world processes of this script (--rank-of)."""
    with socket.socket() as s:  # a free port for the processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = [subprocess.Popen(
        [sys.executable, __file__, "--device", device, "--rank-of", str(CASES.index(case))],
        env={**os.environ, "RANK": str(rank), "WORLD_SIZE": str(case.world), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, text=True)
        for rank in range(case.world)]
    outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise RuntimeError(f"{case.name}: a process of the measured run failed")
    return int(outputs[0].split()[-1])


def _run_rank(index: int, device: str) -> None:
    """One process of _measure_processes: prints its peak in bytes."""
    import torch.distributed as dist

    case = CASES[index]
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(dist.get_rank())
    else:
        # gloo's worker thread lets go of a finished collective's tensors (a unit's gathered parameters or
        # gradients) a moment after the caller's wait returns: without a pause rank 0's peak varied by up to three
        # such buffers from run to run (51.3 to 56.4 MiB in 10 runs of the TrV row), with it every run measures
        # the same. Only the timing changes, not what is allocated.
        wait = dist.Work.wait

        def wait_and_settle(work, *args, **kwargs):
            done = wait(work, *args, **kwargs)
            time.sleep(0.005)
            return done

        dist.Work.wait = wait_and_settle
    build, run = case.step()
    torch.manual_seed(0)
    print(measure_peak(build, run, device=device, with_build=True))
    dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--paper", action="store_true", help="add the slow rows, the paper's B configs")
    parser.add_argument("--rank-of", type=int, metavar="CASE", help=argparse.SUPPRESS)  # a measured process
    args = parser.parse_args(argv)
    if args.rank_of is not None:
        _run_rank(args.rank_of, args.device)
        return 0
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"planner estimate vs measured peak ({device_name}, torch {torch.__version__})")
    print(f"{'case':<56} {'estimate MiB':>12} {'measured MiB':>12} {'ratio':>6}")
    for case in CASES:
        if case.slow and not args.paper:
            continue
        start = time.perf_counter()
        estimate, measured = measure(case, args.device)
        print(f"{case.name:<56} {estimate.peak / 2**20:12.1f} {measured / 2**20:12.1f} "
              f"{estimate.peak / measured:6.3f}   ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
