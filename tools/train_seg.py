#!/usr/bin/env python
"""Train a segmentor (mmseg) with the EVA-02 TrV.

    python tools/train_seg.py --config-file CONFIG [--output WORK_DIR] [--data DIR | --train-data A I --val-data A I]
        [--weights CHECKPOINT]
        [--allow-partial] [--resume] [--precision fp32|fp16|bf16] [--unsafe-pickle] [KEY=VALUE ...]
    torchrun --nproc_per_node N tools/train_seg.py --config-file CONFIG ...      # DDP (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node N tools/train_seg.py --fsdp --config-file CONFIG ...   # sharded (PyTorch FSDP2)

--output: where logs and checkpoints go (default work_dirs/CONFIG_NAME). --resume continues from the latest
checkpoint there (model, optimizer, scheduler, iteration). --precision overrides the config's; the paper
configs train in fp16 AMP on a GPU, and a CPU-only machine trains them in fp32 and says so.
--fsdp (config `parallel = "fsdp"`): shard the weights, gradients and AdamW state over the processes, one unit per
TrV block (eva02.seg.sharding); checkpoints hold the whole model, read by every tool, and resume with or without it.
--frozen-stages N|all (model.backbone.frozen_stages) and --lora-rank R (model.backbone.lora.rank): train less of the
encoder (eva02.backbone.tuning).
--data DIR: train and validate on your own data in mmseg's custom layout (DIR/classes.txt, DIR/img_dir/{train,val},
DIR/ann_dir/{train,val}; eva02.seg.own_data), or in a Pascal VOC segmentation folder, the heads sized for its
classes. --train-data ANNOTATIONS IMAGES --val-data ANNOTATIONS IMAGES: instance annotations instead (a COCO json,
YOLO polygons, LabelMe, CVAT; --data-format names the format), rasterized into WORK_DIR/own_data
(eva02.seg.own_formats). --wandb PROJECT: mirror the run's TensorBoard events to Weights & Biases.
The run writes TensorBoard events (WORK_DIR/TIMESTAMP/vis_data) and, at the end, WORK_DIR/curves.png.
--weights CHECKPOINT: start from a whole segmentor (one of ours, or an official EVA-02 UperNet) instead of the
backbone's `pretrained` weights. Class layers trained for other classes are re-laid: classes of the same name keep
their weights, the others start fresh; the log says so, one line per layer. Any other model weight the checkpoint
leaves unloaded stops the run unless --allow-partial is given.
--unsafe-pickle reads the checkpoints (--weights, the backbone's `pretrained`) with weights_only=False (trusted
files only). KEY=VALUE: mmengine config overrides (as its --cfg-options), e.g. model.backbone.pretrained=ckpt.pt.
"""
from __future__ import annotations

import argparse
import sys

from eva02.common.cli import EXIT_OK, add_common_args, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

from eva02.common.formats import add_data_args
from eva02.common.runlog import start_wandb
from eva02.seg.hooks import SegmentorWeightsHook, name_files_in_load_errors
from eva02.seg.run import apply_precision, build_runner, init_cpu_process_group, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an EVA-02 segmentor (mmseg)")
    add_common_args(p, "config", "precision", "resume", "unsafe_pickle", "overrides", "fsdp", "frozen_stages",
                    "lora_rank", "wandb")
    p.add_argument("--output", metavar="DIR", help="work dir: logs and checkpoints (default: work_dirs/CONFIG_NAME)")
    p.add_argument("--data", metavar="DIR", help="your own data: DIR/classes.txt, img_dir/{train,val}, ann_dir/..., "
                   "or a Pascal VOC segmentation folder")
    add_data_args(p)
    p.add_argument("--weights", metavar="PATH",
                   help="start from this segmentor checkpoint (ours or official); class layers re-laid by name")
    p.add_argument("--allow-partial", action="store_true",
                   help="train even if --weights leaves model weights at their initial values")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = [*args.overrides, *(["parallel=fsdp"] if args.fsdp else []),
                 *([f"model.backbone.frozen_stages={args.frozen_stages}"] if args.frozen_stages is not None else []),
                 *([f"model.backbone.lora.rank={args.lora_rank}"] if args.lora_rank else [])]
    cfg = load_config(args.config_file, args.output, overrides, args.data, args.train_data, args.val_data,
                      args.data_format)
    print(f"train_seg: precision {apply_precision(cfg, args.precision)}")
    cfg.resume = args.resume
    if args.unsafe_pickle:
        cfg.model.backbone.pretrained_weights_only = False
    if args.weights:
        cfg.model.backbone.pretrained = None  # the whole model comes from --weights
        cfg.model.backbone.pop("init_cfg", None)
    init_cpu_process_group()
    name_files_in_load_errors()
    runner = build_runner(cfg, args.debug)
    if runner.rank == 0:
        start_wandb(args.wandb, runner.work_dir, config={"config_file": args.config_file, "overrides": args.overrides})
    if args.weights:
        runner.register_hook(SegmentorWeightsHook(args.weights, weights_only=not args.unsafe_pickle,
                                                  strict=not args.allow_partial))
    runner.train()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
