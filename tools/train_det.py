#!/usr/bin/env python
"""Train or evaluate an EVA-02 detector from a LazyConfig (detectron2 conventions).

    python tools/train_det.py --config-file configs/demo/eva02_Ti_det.py
    python tools/train_det.py --config-file configs/coco/eva02_L_sys.py --num-gpus 8
    python tools/train_det.py --config-file configs/coco/eva02_L_sys.py --eval-only \
        train.init_checkpoint=eva02_L_coco_sys.pth
    # COCO test-dev: results json + zip for the evaluation server
    python tools/train_det.py --config-file configs/coco/eva02_L_sys_o365.py --eval-only \
        train.init_checkpoint=W.pth dataloader.test.dataset.names=coco_2017_test-dev train.results_dir=out/testdev

Flags: --eval-only, --resume (continue at the last saved iteration of train.output_dir), --num-gpus N
(processes per machine; gloo on the CPU), --num-machines M, --machine-rank R, --dist-url U, then key=value
config overrides. Runs on the CPU when no GPU exists.
"""
import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning threads
# slowed a detector step ~10x here (2 cores). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from detectron2.config import LazyConfig  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402

from eva02.det.engine import run  # noqa: E402


def main(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    run(cfg, eval_only=args.eval_only, resume=args.resume)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
