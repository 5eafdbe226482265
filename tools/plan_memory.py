#!/usr/bin/env python
"""Plan GPU memory for a detection or segmentation config, or for MIM pre-training, without a GPU.

    python tools/plan_memory.py --config-file CONFIG [--batch 2] [--size PX] [--precision fp32|fp16|bf16]
        [--checkpointing on|off] [--gpus 8] [--fsdp] [--mode train|test|both] [--gpu-memory GB] [KEY=VALUE ...]
    python tools/plan_memory.py --mim eva02_L [--batch N] [--size 224] [...]

Runs the config's own model, optimizer and training step on fake tensors (eva02.common.memory: shapes, no
values, no device) and prints the peak memory one GPU needs for a training step and for inference with
`--batch` images of --size x --size per GPU (default: the config's crop / test size). The count is what
torch.cuda.max_memory_allocated reports; "needed" adds the caching allocator's fragmentation (10%), the CUDA
context and library workspaces (1 GiB) and, for --gpus > 1, DDP's gradient buckets. --fsdp: training sharded by
FSDP2 over the --gpus GPUs instead of DDP (as the training tools' --fsdp), traced as rank 0 runs it.
--mim MODEL: a MIM pre-training step of that preset against the paper's teacher (eva02.backbone.mim.memory),
at the recipe's 224 px and, by default, its total batch over --gpus (training only).

--gpu-memory GB answers "what fits": whether this setting does, and for training the largest batch per GPU
with the config's settings, then with activation checkpointing, AMP (bf16; fp16 takes the same memory) and,
for --gpus > 1, FSDP2 sharding switched on; when none of those fits --batch (and the encoder trains whole), also
with the encoder frozen and with LoRA adapters of rank 8 (eva02.backbone.tuning). So you see which setting to
change.
Detection: --objects N ground-truth objects per image (default 100, the most a COCO image has) and
--detections N per image at inference (default: the config's test_topk_per_image); segmentation: --classes N
classes per crop (default 30). --attention: the attention kernel your GPU will use (auto: flash with AMP,
memory-efficient in fp32). Estimates are within the error that docs/memory.md states,
measured against real peaks.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

from eva02.common.cli import UsageError, add_common_args, config_kind, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

from eva02.common.memory import ATTENTION_KERNELS, CUDA_OVERHEAD_BYTES, FRAGMENTATION, fits, gib, largest_fitting

TUNINGS = {"encoder frozen": dict(frozen_stages="all"), "LoRA rank 8": dict(lora=dict(rank=8))}


def parse_args(argv=None):
    from eva02.backbone.mim.recipe import RECIPES

    p = argparse.ArgumentParser(description="Estimate the GPU memory of a config's training step and inference")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config-file", metavar="PATH", help="the config file")
    what.add_argument("--mim", choices=sorted(RECIPES), help="MIM pre-training of this preset instead of a config")
    add_common_args(p, "precision", "overrides", "fsdp")
    p.add_argument("--batch", type=int, metavar="N",
                   help="images per GPU (default 2; MIM: the recipe's total batch over --gpus)")
    p.add_argument("--size", type=int, metavar="PX", help="input side in pixels (default: the config's)")
    p.add_argument("--checkpointing", choices=("on", "off"),
                   help="activation checkpointing of the backbone (default: the config's)")
    p.add_argument("--gpus", type=int, default=8, metavar="N",
                   help="GPUs in the training run: more than 1 adds DDP's gradient buckets, or shards (--fsdp) "
                   "(default 8)")
    p.add_argument("--mode", choices=("train", "test", "both"), default="both")
    p.add_argument("--gpu-memory", type=float, metavar="GB", help="GPU memory in GiB: what fits in it")
    p.add_argument("--objects", type=int, default=None, metavar="N", help="detection: ground-truth objects per image")
    p.add_argument("--detections", type=int, default=None, metavar="N",
                   help="detection: detections per image at inference (default: the config's test_topk_per_image)")
    p.add_argument("--classes", type=int, default=None, metavar="N", help="segmentation: classes per training crop")
    p.add_argument("--attention", choices=ATTENTION_KERNELS, default="auto", help="the GPU's attention kernel")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="largest batch --gpu-memory tries")
    args = p.parse_args(argv)
    for name in ("batch", "size", "gpus", "objects", "detections", "classes", "max_batch", "gpu_memory"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be positive")
    if args.mim and args.overrides:
        raise UsageError("KEY=VALUE overrides are for configs; --mim takes --size, --batch and --checkpointing")
    if args.mim and args.mode == "test":
        raise UsageError("--mim plans the pre-training step: --mode train")
    if args.mim and args.fsdp and args.precision == "fp16":
        raise UsageError("--mim --fsdp --precision fp16: MIM pre-training refuses fp16 under FSDP; use bf16 or fp32")
    return args


class Planner:
    """The detection, segmentation or MIM planner for one config or preset, with the tool's fixed arguments."""

    def __init__(self, args):
        common = dict(target="cuda", attention=args.attention, gpus=args.gpus)
        patch = self._init_mim(args, common) if args.mim else self._init_config(args, common)
        self._traced = {}  # (batch, train, precision, checkpointing, sharded, tuning) -> estimate: the search re-asks
        if self.size % patch:
            raise UsageError(f"--size {self.size}: must be a multiple of the patch size {patch}")

    def _init_mim(self, args, common) -> int:
        from eva02.backbone.mim.memory import DEFAULT_PRECISION, PATCH, plan_mim
        from eva02.backbone.mim.recipe import RECIPES

        if args.objects is not None or args.detections is not None or args.classes is not None:
            raise UsageError("--objects / --detections / --classes are for detection and segmentation configs")
        self.kind, self.size = "MIM pre-training", args.size or 224
        self.batch_default = max(1, RECIPES[args.mim].batch_size // args.gpus)
        # training only (main asks for no inference)
        self._plan = lambda tuning, train, **kw: plan_mim(args.mim, size=self.size, **tuning, **common, **kw)
        self.precision_default, self.checkpointing_default, self.compiled = DEFAULT_PRECISION, False, False
        self.tuned = False  # the planner's student trains its whole encoder
        self.configs = {"": {}, **TUNINGS}
        return PATCH

    def _init_config(self, args, common) -> int:
        path = Path(args.config_file)
        if not path.is_file():
            raise UsageError(f"--config-file {path}: no such file")
        self.kind, self.batch_default = config_kind(path), 2
        if self.kind == "detection":
            from eva02.det.config import load_config
            from eva02.det.engine import config_precision
            from eva02.det.memory import DEFAULT_OBJECTS, plan_detector

            if args.classes is not None:
                raise UsageError("--classes is for segmentation configs; detection takes --objects")
            self.cfg = load_config(str(path), args.overrides)
            self.size = args.size or int(self.cfg.model.backbone.square_pad)
            self._plan = lambda cfg, **kw: plan_detector(cfg, size=self.size, objects=args.objects or DEFAULT_OBJECTS,
                                                         detections=args.detections, **common, **kw)
            self.precision_default = config_precision(self.cfg)
            self.encoder = lambda cfg: cfg.model.backbone.net  # noqa: E731
        else:
            from eva02.seg.memory import DEFAULT_CLASSES, plan_segmentor
            from eva02.seg.optim import config_precision
            from eva02.seg.run import read_config

            if args.objects is not None or args.detections is not None:
                raise UsageError("--objects / --detections are for detection configs; segmentation takes --classes")
            self.cfg = read_config(str(path), args.overrides)
            self.size = args.size or int(self.cfg.model.data_preprocessor.size[0])
            self._plan = lambda cfg, **kw: plan_segmentor(cfg, size=self.size, classes=args.classes or DEFAULT_CLASSES,
                                                          **common, **kw)
            self.precision_default = config_precision(self.cfg)
            self.encoder = lambda cfg: cfg.model.backbone  # noqa: E731
        backbone = self.encoder(self.cfg)
        # what of the encoder trains (eva02.backbone.tuning): as configured, or the two cheaper ways to fine-tune
        self.tuned = backbone.get("lora") is not None or backbone.get("frozen_stages", -1) != -1
        self.configs = {"": self.cfg}
        for label, tuning in TUNINGS.items():
            self.configs[label] = copy.deepcopy(self.cfg)
            self.encoder(self.configs[label]).update(tuning)
        self.checkpointing_default = bool(backbone.get("use_checkpoint", False))
        self.compiled = bool(backbone.get("compile_blocks", False))
        return int(backbone.get("patch_size", 16))

    def sharded_precision(self, precision: str) -> str:
        """The precision a sharded run trains in: MIM pre-training refuses fp16 under FSDP (bf16 instead)."""
        return "bf16" if self.kind == "MIM pre-training" and precision == "fp16" else precision

    def plan(self, batch: int, train: bool, precision: str, checkpointing: bool, sharded: bool = False,
             tuning: str = ""):
        """sharded: FSDP2 over the --gpus; tuning: "" (as configured) or a label of self.configs (the encoder
        frozen, LoRA)."""
        key = (batch, train, precision, checkpointing, sharded, tuning)
        if key in self._traced:
            return self._traced[key]
        start = time.perf_counter()
        estimate = self._plan(self.configs[tuning], batch=batch, train=train, precision=precision,
                              checkpointing=checkpointing, sharded=sharded)
        what = "training step" if train else "inference"
        print(f"  traced {what}, batch {batch}, {_label(precision, checkpointing, sharded, tuning)}: "
              f"{gib(estimate.peak):.2f} GiB ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        self._traced[key] = estimate
        return estimate


def _label(precision: str, checkpointing: bool, sharded: bool, tuning: str) -> str:
    return (f"{precision}, checkpointing {'on' if checkpointing else 'off'}{', FSDP2' if sharded else ''}"
            f"{', ' + tuning if tuning else ''}")


def _report(title: str, estimate, gpu_bytes: float | None) -> None:
    print(f"{title}")
    phases = ", ".join(f"{name} {gib(v):.2f}" for name, v in estimate.phases.items())
    print(f"  peak of tensors        {gib(estimate.peak):7.2f} GiB   ({phases})")
    if estimate.ddp_buckets:
        print(f"  + DDP gradient buckets {gib(estimate.ddp_buckets):7.2f} GiB")
    print(f"  needed on the GPU      {gib(estimate.needed()):7.2f} GiB   (x{1 + FRAGMENTATION:.2f} fragmentation, "
          f"+{gib(CUDA_OVERHEAD_BYTES):.0f} GiB CUDA context and workspaces)")
    if estimate.stand_ins:
        print("  upper bounds taken where the data decides a size: "
              + ", ".join(f"{op} x{n}" for op, n in sorted(estimate.stand_ins.items())))
    if gpu_bytes is not None:
        print(f"  fits in {gib(gpu_bytes):g} GiB: {'yes' if fits(estimate, gpu_bytes) else 'no'}")


def _largest_row(planner: Planner, args, gpu_bytes: float, precision: str, checkpointing: bool, sharded: bool,
                 tuning: str = "") -> int:
    """Print and return the largest training batch per GPU that fits with these settings."""
    n, _ = largest_fitting(lambda b: planner.plan(b, True, precision, checkpointing, sharded, tuning), gpu_bytes,
                           limit=args.max_batch)
    label = _label(precision, checkpointing, sharded, tuning).replace("FSDP2", f"FSDP2 over {args.gpus} GPUs")
    print(f"  {label:<60} {n if n else 'none: even 1 image does not fit'}"
          f"{' (or more: --max-batch)' if n == args.max_batch else ''}")
    return n


def main(argv=None) -> int:
    args = parse_args(argv)
    planner = Planner(args)
    precision = args.precision or planner.precision_default
    checkpointing = planner.checkpointing_default if args.checkpointing is None else args.checkpointing == "on"
    sharded = args.fsdp and args.gpus > 1
    batch = args.batch or planner.batch_default
    gpu_bytes = args.gpu_memory * 2**30 if args.gpu_memory else None
    print(f"{args.mim or args.config_file} ({planner.kind}): {batch} image(s) of {planner.size}x{planner.size} per "
          f"GPU, precision {precision}, activation checkpointing {'on' if checkpointing else 'off'}, {args.gpus} "
          f"GPU(s){' sharded by FSDP2' if sharded else ''}, attention {args.attention}")
    if planner.compiled:
        print("compile_blocks is on: the blocks are traced eagerly (compiled ones usually keep fewer intermediates)")
    train = args.mode in ("train", "both") or args.mim
    if train:
        _report("training step", planner.plan(batch, True, precision, checkpointing, sharded), gpu_bytes)
    if args.mode in ("test", "both") and not args.mim:
        _report("inference (fp32, no gradients)", planner.plan(batch, False, "fp32", checkpointing), gpu_bytes)
    if gpu_bytes is not None and train:
        print(f"largest training batch per GPU that fits in {args.gpu_memory:g} GiB:")
        settings = [(precision, checkpointing, sharded)]
        if not checkpointing:
            settings.append((precision, True, sharded))
        if precision == "fp32":  # bf16 and fp16 autocast keep the same tensors
            settings += [("bf16", checkpointing, sharded), ("bf16", True, sharded)]
        cheapest = settings[-1]
        if args.gpus > 1 and not sharded:
            settings.append((planner.sharded_precision(cheapest[0]), cheapest[1], True))
        best = max(_largest_row(planner, args, gpu_bytes, *setting) for setting in dict.fromkeys(settings))
        if best < batch and not planner.tuned:  # short of --batch: on the cheapest setting, train less
            for tuning in (t for t in planner.configs if t):
                _largest_row(planner, args, gpu_bytes, *cheapest, tuning)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
