#!/usr/bin/env python
"""Evaluate a segmentor checkpoint (mmseg).

    python tools/test_seg.py --config-file CONFIG --weights CHECKPOINT [--data DIR | --val-data A I] [--ms-flip]
        [--show-dir D]
        [--output WORK_DIR] [--allow-partial] [--unsafe-pickle] [KEY=VALUE ...]

CHECKPOINT: one of ours, or a released official EVA-02 UperNet checkpoint (backbone.fpn1..4, cls token, separate
q/k/v, RoPE buffers), loaded by eva02.seg.load_segmentor_checkpoint. A model weight it leaves unloaded, or a tensor
of it that fits nowhere, stops the run unless --allow-partial is given.

--data DIR: evaluate on your own data's validation split (DIR/img_dir/val, DIR/ann_dir/val, classes from
DIR/classes.txt: the layout of tools/train_seg.py --data; eva02.seg.own_data), or a Pascal VOC segmentation folder's.
--val-data ANNOTATIONS IMAGES [--data-format F]: instance annotations (COCO json, YOLO, LabelMe, CVAT) rasterized
into WORK_DIR/own_data first (eva02.seg.own_formats), as tools/train_seg.py --val-data does.
--ms-flip: multi-scale (the config's tta_pipeline, ratios 0.5-1.75) + horizontal flip, logits averaged.
--show-dir: every prediction drawn next to its ground truth, saved under D.
The metrics (mIoU, mAcc, aAcc) are logged and written to WORK_DIR/TIMESTAMP/TIMESTAMP.json and, with the
unreadable images (every image and label map is decoded once first; a bad pair is reported and left out) and
their count (with --data also the label maps left out for values that are no class: bad_label_files), to
WORK_DIR/results.json; the exit status is then 1. Multi-GPU: torchrun --nproc_per_node N
tools/test_seg.py ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from eva02.common.cli import EXIT_OK, EXIT_PARTIAL, UsageError, add_common_args, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from eva02.common.files import atomic_write
from eva02.common.formats import add_data_args
from eva02.seg import load_segmentor_checkpoint
from eva02.seg.run import build_runner, init_cpu_process_group, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an EVA-02 segmentor (mmseg)")
    add_common_args(p, "config", "weights", "unsafe_pickle", "overrides")
    p.add_argument("--data", metavar="DIR", help="your own data (DIR/classes.txt, img_dir/val, ann_dir/val), or a "
                   "Pascal VOC segmentation folder")
    add_data_args(p, training=False)
    p.add_argument("--ms-flip", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--show-dir", help="save drawn predictions here")
    p.add_argument("--output", metavar="DIR", help="work dir: logs and metrics (default: work_dirs/CONFIG_NAME)")
    p.add_argument("--allow-partial", action="store_true",
                   help="evaluate even if the checkpoint leaves model weights unloaded or has unused tensors")
    return p.parse_args(argv)


def build_config(args):
    cfg = load_config(args.config_file, args.output, args.overrides, args.data, val=args.val_data,
                      fmt=args.data_format)
    cfg.load_from = None  # loaded by load_segmentor_checkpoint (official layouts too), see main()
    cfg.test_dataloader.dataset.check_images = True  # report and skip unreadable images
    if args.show_dir:
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir
    if args.ms_flip:
        if "tta_pipeline" not in cfg or "tta_model" not in cfg:
            raise UsageError(f"--ms-flip: {args.config_file} defines no tta_pipeline / tta_model")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    init_cpu_process_group()
    runner = build_runner(cfg, args.debug)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    segmentor = getattr(model, "module", model)  # the segmentor inside the --ms-flip TTA wrapper
    print_log(load_segmentor_checkpoint(segmentor, args.weights, weights_only=not args.unsafe_pickle,
                                        strict=not args.allow_partial), logger="current")
    metrics = runner.test()
    dataset = runner.test_dataloader.dataset
    unreadable = getattr(dataset, "unreadable", [])
    bad_labels = getattr(dataset, "bad_labels", [])  # own data: label maps with values that are no class
    if is_main_process():
        for problem in unreadable:
            print(f"left out, unreadable: {problem}")
        for problem in bad_labels:
            print(f"left out, label values that are no class: {problem}")
        print(f"test_seg: {len(unreadable)} unreadable images left out"
              f"{f', {len(bad_labels)} with bad label values' if bad_labels else ''}; "
              f"metrics: {', '.join(f'{k} {v:.2f}' for k, v in metrics.items())}")
        path = os.path.join(cfg.work_dir, "results.json")
        results = {**metrics, "unreadable_images": len(unreadable), "unreadable_files": unreadable}
        if args.data:
            results.update(bad_label_files=bad_labels)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1, default=float)))
    return EXIT_PARTIAL if unreadable or bad_labels else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
