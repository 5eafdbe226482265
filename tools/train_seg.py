"""Train a segmentor (mmseg conventions) with the EVA-02 TrV.

    python tools/train_seg.py CONFIG [--work-dir D] [--resume] [--amp] [--cfg-options k=v ...] [--launcher pytorch]

--resume continues from the latest checkpoint in the work dir (model, optimizer, scheduler, iteration).
--amp turns fp16 AMP on for a config without it; the paper configs have it on already (on a GPU; a CPU-only
machine trains them in fp32 and says so).
Multi-process: torchrun --nproc_per_node N tools/train_seg.py CONFIG --launcher pytorch (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from eva02.seg import fp32_without_gpu  # importing eva02.seg registers the EVA-02 modules


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an EVA-02 segmentor (mmseg)")
    p.add_argument("config", help="config file")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/CONFIG_NAME)")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (needs a GPU)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config entries, e.g. model.backbone.pretrained=ckpt.pt")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def build_config(args) -> Config:
    if not osp.isfile(args.config):
        sys.exit(f"config file not found: {args.config}")
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    if not torch.cuda.is_available() and args.launcher != "none":
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"  # nccl needs GPUs
        cfg.model_wrapper_cfg = dict(type="CPUDistributedDataParallel", broadcast_buffers=False,
                                     find_unused_parameters=cfg.get("find_unused_parameters", False))
    if args.amp:
        if not torch.cuda.is_available():
            sys.exit("--amp needs a GPU (mmengine's AmpOptimWrapper runs on CUDA/NPU/MLU only)")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    elif fp32_without_gpu(cfg):
        print("train_seg: no GPU, so the config's fp16 AMP (AmpOptimWrapper) is off: training in fp32")
    cfg.resume = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    if args.launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        # mmengine's own init would call torch.cuda.set_device; torchrun's env:// variables suffice for gloo.
        dist.init_process_group(backend="gloo")
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == "__main__":
    main()
