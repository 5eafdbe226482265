#!/usr/bin/env python
"""Evaluate a detector checkpoint (detectron2): the test step of tools/train_det.py, as tools/test_seg.py is for
segmentation.

    python tools/test_det.py --config-file CONFIG --weights CHECKPOINT [--val-data ANNOTATIONS IMAGES] [--tta]
        [--output DIR] [--device D] [--allow-partial] [--unsafe-pickle] [KEY=VALUE ...]
    # COCO test-dev: results json + zip for the evaluation server
    python tools/test_det.py --config-file configs/coco/eva02_L_sys_o365.py --weights W.pth \
        dataloader.test.dataset.names=coco_2017_test-dev train.results_dir=out/testdev

CHECKPOINT: one of ours or a released EVA-02 detector; every model weight must load unless --allow-partial.
--val-data: your own validation set, a COCO json or YOLO / VOC / LabelMe / CVAT annotations (--data-format names
the format; eva02.det.own_data). --tta: the config's multi-scale + flip
test-time augmentation (eva02.det.tta). The same run as `tools/train_det.py --eval-only` (detectron2's flag, kept
for its users): the metrics are logged and written to OUTPUT/results.json; exit status 1 when unreadable images
were left out (named in the log and in results.json). Multi-process: torchrun, or --num-gpus N.
"""
import sys

from eva02.common.cli import add_common_args, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

from detectron2.engine import default_argument_parser  # noqa: E402

from train_det import add_evaluation_args, launch_parsed  # noqa: E402  (tools/, this script's folder)


def launch_main(argv=None) -> int:
    parser = default_argument_parser(__doc__)
    add_common_args(parser, "unsafe_pickle")
    add_evaluation_args(parser, weights_required=True)
    args = parser.parse_args(argv)
    # train_det's other flags
    args.eval_only, args.precision, args.train_data, args.wandb, args.fsdp = True, None, None, None, False
    args.frozen_stages = args.lora_rank = None
    return launch_parsed(args)


if __name__ == "__main__":
    sys.exit(run_tool(launch_main))
