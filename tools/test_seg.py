"""Evaluate a segmentor checkpoint (mmseg conventions).

    python tools/test_seg.py CONFIG CHECKPOINT [--ms-flip] [--show-dir D] [--work-dir D] [--cfg-options k=v ...]

CHECKPOINT: one of ours, or a released official EVA-02 UperNet checkpoint (backbone.fpn1..4, cls token, separate
q/k/v, RoPE buffers), loaded by eva02.seg.load_segmentor_checkpoint. A model weight it leaves unloaded, or a tensor
of it that fits nowhere, stops the run unless --allow-partial is given.

--ms-flip: multi-scale (the config's tta_pipeline, ratios 0.5-1.75) + horizontal flip, logits averaged.
--show-dir: every prediction drawn next to its ground truth, saved under D.
The metrics (mIoU, mAcc, aAcc) are logged and written to WORK_DIR/TIMESTAMP/TIMESTAMP.json.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from eva02.seg import load_segmentor_checkpoint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an EVA-02 segmentor (mmseg)")
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--ms-flip", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--show-dir", help="save drawn predictions here")
    p.add_argument("--work-dir", help="where logs and metrics go (default: work_dirs/CONFIG_NAME)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    p.add_argument("--allow-partial", action="store_true",
                   help="evaluate even if the checkpoint leaves model weights unloaded or has unused tensors")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="multi-GPU evaluation (torchrun); on CPU evaluate in one process")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def build_config(args) -> Config:
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            sys.exit(f"file not found: {path}")
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = None  # loaded by load_segmentor_checkpoint (official layouts too), see main()
    cfg.test_dataloader.dataset.check_images = True  # report and skip unreadable images
    if args.show_dir:
        vis = cfg.default_hooks.visualization
        vis.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir
    if args.ms_flip:
        if "tta_pipeline" not in cfg or "tta_model" not in cfg:
            sys.exit(f"--ms-flip: {args.config} defines no tta_pipeline / tta_model")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def main(argv=None):
    args = parse_args(argv)
    runner = Runner.from_cfg(build_config(args))
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    segmentor = getattr(model, "module", model)  # the segmentor inside the --ms-flip TTA wrapper
    try:
        summary = load_segmentor_checkpoint(segmentor, args.checkpoint, strict=not args.allow_partial)
    except ValueError as e:  # incomplete, mismatched or unreadable: one line, no traceback
        sys.exit(f"test_seg: {e}")
    print_log(summary, logger="current")
    return runner.test()


if __name__ == "__main__":
    main()
