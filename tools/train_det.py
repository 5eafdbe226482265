#!/usr/bin/env python
"""Train or evaluate an EVA-02 detector from a LazyConfig (detectron2 conventions).

    python tools/train_det.py --config-file configs/demo/eva02_Ti_det.py
    python tools/train_det.py --config-file configs/coco/eva02_L_sys.py --num-gpus 8     # or torchrun
    python tools/train_det.py --config-file configs/coco/eva02_L_sys.py --eval-only --weights eva02_L_coco_sys.pth
    # COCO test-dev: results json + zip for the evaluation server
    python tools/train_det.py --config-file configs/coco/eva02_L_sys_o365.py --eval-only --weights W.pth \
        dataloader.test.dataset.names=coco_2017_test-dev train.results_dir=out/testdev

Flags (eva02.common.cli's convention): --output DIR (train.output_dir), --weights PATH (train.init_checkpoint),
--device, --precision fp32|fp16|bf16 (train.amp), --resume (continue at the last saved iteration of the output
folder), --unsafe-pickle (train.init_weights_only=False), --fsdp (train.parallel="fsdp": with several processes,
shard the weights, gradients and AdamW state over them, PyTorch FSDP2; checkpoints hold the whole model as usual),
--frozen-stages N|all (model.backbone.net.frozen_stages), --lora-rank R (model.backbone.net.lora=dict(rank=R)),
--allow-partial (train.init_allow_partial=True: load what fits; by default --eval-only needs every weight in the
file and training the whole backbone), --eval-only, --train-data ANNOTATIONS IMAGES / --val-data ANNOTATIONS IMAGES
(your own data: a COCO json, or YOLO / Pascal VOC / LabelMe / CVAT annotations converted into OUTPUT/own_data,
--data-format to name the format; eva02.det.own_data; heads of a checkpoint trained for other classes are re-laid,
and the log says how), --wandb PROJECT (mirror the run's TensorBoard events to Weights & Biases), --tta
(dataloader.tta.enabled: multi-scale + flip test-time augmentation, eva02.det.tta), then KEY=VALUE LazyConfig
overrides (a key the config does not have is an error naming the closest one).
Exit status 1 when --eval-only left unreadable images out (they are named in the log and in results.json).
Multi-process: `torchrun --nproc_per_node N tools/train_det.py ...`, or detectron2's own --num-gpus N
(--num-machines, --machine-rank, --dist-url); gloo on the CPU. Runs on the CPU when no GPU exists.
"""
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning threads
# slowed a detector step ~10x here (2 cores). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from eva02.common.cli import (EXIT_OK, EXIT_PARTIAL, UsageError, add_common_args, quiet_third_party_warnings,
                              run_tool, world_size)

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from eva02.det.config import load_config  # noqa: E402
from eva02.det.engine import run  # noqa: E402
from eva02.common.formats import add_data_args  # noqa: E402
from eva02.common.runlog import start_wandb  # noqa: E402
from eva02.det.own_data import prepare_own_data, use_own_data  # noqa: E402


def add_evaluation_args(parser, weights_required: bool = False, training: bool = False) -> None:
    """The flags evaluating needs beside --unsafe-pickle (tools/test_det.py has only these; training adds
    --precision, --wandb and --train-data)."""
    parser.add_argument("--output", metavar="DIR", help="train.output_dir: checkpoints, logs, results")
    parser.add_argument("--weights", metavar="PATH", required=weights_required,
                        help="train.init_checkpoint: weights to start from / evaluate")
    parser.add_argument("--device", help="train.device (default: the config's, cuda falling back to cpu)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="train.init_allow_partial: load the weights that fit, leave the others at their init")
    parser.add_argument("--tta", action="store_true",
                        help="dataloader.tta.enabled: evaluate with test-time augmentation (eva02.det.tta)")
    add_data_args(parser, training)


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    add_common_args(parser, "precision", "unsafe_pickle", "fsdp", "frozen_stages", "lora_rank", "wandb")
    add_evaluation_args(parser, training=True)
    return parser.parse_args(argv)


def config_from_args(args):
    cfg = load_config(args.config_file, args.opts)
    flags = dict(output_dir=args.output, init_checkpoint=args.weights, device=args.device)
    cfg.train.update({key: value for key, value in flags.items() if value is not None})
    if args.precision:
        cfg.train.amp.enabled = args.precision != "fp32"
        if cfg.train.amp.enabled:
            cfg.train.amp.precision = args.precision
    if args.fsdp:
        cfg.train.parallel = "fsdp"
    if args.frozen_stages is not None:
        cfg.model.backbone.net.frozen_stages = args.frozen_stages
    if args.lora_rank:
        cfg.model.backbone.net.lora = dict(rank=args.lora_rank)
    if args.unsafe_pickle:
        cfg.train.init_weights_only = False
    if args.allow_partial:
        cfg.train.init_allow_partial = True
    if args.train_data and not args.val_data:
        raise UsageError("--train-data needs --val-data ANNOTATIONS IMAGES too (the set evaluated during and after "
                         "training)")
    if args.val_data:
        if not args.train_data and not args.eval_only:
            raise UsageError("--val-data without --train-data: only with --eval-only (training needs --train-data)")
        train, val, notes = prepare_own_data(args.train_data, args.val_data, cfg.train.output_dir, args.data_format,
                                             checkpoint=args.weights, weights_only=not args.unsafe_pickle)
        for note in notes:
            print(note)
        classes = use_own_data(cfg.model, cfg.dataloader, train, val)
        boxes_only = cfg.model.roi_heads.mask_head is None
        print(f"own data: {len(classes)} classes from {(args.train_data or args.val_data)[0]}: "
              f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}"
              f"{'; boxes only (no masks in the data): the mask head is off' if boxes_only else ''}")
    if args.tta:
        if "tta" not in cfg.dataloader:
            raise UsageError(f"--tta: {args.config_file} has no dataloader.tta settings (configs/common has them)")
        cfg.dataloader.tta.enabled = True
    return cfg


def main(args) -> int:
    cfg = config_from_args(args)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="eva02")  # our modules' log lines
    if not args.eval_only and comm.is_main_process():
        start_wandb(args.wandb, cfg.train.output_dir, config={"config_file": args.config_file, "overrides": args.opts})
    results = run(cfg, eval_only=args.eval_only, resume=args.resume)
    return EXIT_PARTIAL if args.eval_only and results.get("unreadable_images") else EXIT_OK


def launch_main(argv=None) -> int:
    return launch_parsed(parse_args(argv))


def launch_parsed(args) -> int:
    """main(args) in this process, or in detectron2's --num-gpus processes; under torchrun, joins its group."""
    if world_size() > 1:  # under torchrun: one process of many, already started
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        comm.create_local_process_group(int(os.environ["LOCAL_WORLD_SIZE"]))
        return main(args)
    if args.num_gpus * args.num_machines <= 1:
        return main(args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(launch_main))
