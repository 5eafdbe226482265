#!/usr/bin/env python
"""Train a segmentor (mmseg) with the EVA-02 TrV.

    python tools/train_seg.py --config-file CONFIG [--output WORK_DIR] [--resume] [--amp fp16|bf16|off]
        [--unsafe-pickle] [KEY=VALUE ...]
    torchrun --nproc_per_node N tools/train_seg.py --config-file CONFIG ...      # DDP (gloo on CPU, nccl on GPU)

--output: where logs and checkpoints go (default work_dirs/CONFIG_NAME). --resume continues from the latest
checkpoint there (model, optimizer, scheduler, iteration). --amp overrides the config's precision; the paper
configs train in fp16 AMP on a GPU, and a CPU-only machine trains them in fp32 and says so.
--unsafe-pickle reads the backbone's `pretrained` checkpoint with weights_only=False (trusted files only).
KEY=VALUE: mmengine config overrides (as its --cfg-options), e.g. model.backbone.pretrained=ckpt.pt.
"""
from __future__ import annotations

import argparse
import sys

from mmengine.runner import Runner

from eva02.backbone.cli import EXIT_OK, add_common_args, run_tool
from eva02.seg.run import apply_amp, init_cpu_process_group, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an EVA-02 segmentor (mmseg)")
    add_common_args(p, "config", "amp", "resume", "unsafe_pickle", "overrides")
    p.add_argument("--output", metavar="DIR", help="work dir: logs and checkpoints (default: work_dirs/CONFIG_NAME)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.output, args.overrides)
    print(f"train_seg: {apply_amp(cfg, args.amp)}")
    cfg.resume = args.resume
    if args.unsafe_pickle:
        cfg.model.backbone.pretrained_weights_only = False
    init_cpu_process_group()
    Runner.from_cfg(cfg).train()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
