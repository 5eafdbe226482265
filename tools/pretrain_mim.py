"""MIM pre-training of an EVA-02 TrV against a frozen teacher, and export to the official weight layouts.

    python tools/pretrain_mim.py --model eva02_B --teacher TEACHER --data IMAGE_FOLDER --output DIR [--resume] [...]
    torchrun --nproc_per_node 8 tools/pretrain_mim.py ...          # DDP
    python tools/pretrain_mim.py --model eva02_B --output DIR --export-only   # export the last checkpoint
    python tools/pretrain_mim.py --demo --output output/demo_mim   # embedded default: generated images,
                                                                   # random tiny teacher, Ti student

TEACHER and the targets it gives (official: the CLIP-projected patch features head(norm(x))[:, 1:]):
  - a timm model name with a local weights file (--teacher-weights; nothing is downloaded). A CLIP tower ("clip"
    in the name) keeps its projection head: eva_giant_patch14_clip_224 with the official EVA_CLIP_g_14_X.pt is
    the paper's teacher, read by timm's own converter. Other timm models give their patch tokens (no head).
  - a checkpoint file of a TrV / EVA02-CLIP-style tower (SwiGLU; any layout eva02.backbone reads): its tokens
    through the `norm` and `head` the file holds. EVA-CLIP towers with a GELU MLP go through timm (above).
Targets are not re-normalized (the cosine loss ignores their length). --init PATH continues pre-training from a
MIM checkpoint (official, or --export's _p14.pt), and then --frozen-stages N|all / --lora-rank R train less of the
encoder (eva02.backbone.tuning; the exports fold LoRA adapters into plain weights). Hyper-parameters default to
the paper's Table 22 recipe of --model (see eva02.backbone.mim.RECIPES). --resume continues from
DIR/checkpoint.pt (flags follow eva02.common.cli's convention). Writes DIR/log.jsonl (one line per step), TensorBoard
events in DIR (loss, lr, grad norm, throughput, memory; the first crops with their masked patches), DIR/curves.png
(--wandb PROJECT mirrors the events to Weights & Biases) and, with --export,
DIR/<model>_mim_p14.pt ({"module": ...}, the official MIM layout of the size: Ti/S packed w12 and fused qkv, B/L
separate, RoPE buffers as the official model registers them) and DIR/<model>_mim_p14to16.pt (detection /
segmentation init).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from eva02.common.cli import EXIT_OK, add_common_args, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

import torch
import torch.distributed as dist

from eva02.backbone.mim import DEFAULT_MASK_RATIO, RECIPES, PretrainConfig, export_official, pretrain
from eva02.backbone.mim.demo import write_demo_images, write_random_teacher
from eva02.backbone.mim.train import CHECKPOINT_NAME, LOG_NAME
from eva02.common.memory import peak_memory_mib
from eva02.common.runlog import draw_curves, start_wandb, tensorboard_command

# --demo: a CPU-sized run (EVA-02-Ti at 112 px against a random 2-block teacher, 36 steps).
DEMO = dict(model="eva02_Ti", input_size=112, batch_size=8, epochs=3, lr=1e-3, warmup_epochs=0.5,
            arch={}, images=96)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(RECIPES), default="eva02_B")
    p.add_argument("--teacher", help="teacher checkpoint file, or a timm model name (with --teacher-weights)")
    p.add_argument("--teacher-weights", help="local weights file of a timm teacher")
    p.add_argument("--teacher-heads", type=int, help="attention heads of a TrV teacher (default: head_dim 64)")
    p.add_argument("--data", help="folder of training images (searched recursively)")
    add_common_args(p, "output", "precision", "resume", "unsafe_pickle", "fsdp", "frozen_stages", "lora_rank", "wandb")
    p.add_argument("--init", metavar="PATH", help="continue pre-training from these weights: a MIM checkpoint of the "
                   "same model and teacher width (official, or --export's _p14.pt); needed by --frozen-stages / "
                   "--lora-rank")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (the cosine ends here)")
    p.add_argument("--batch-size", type=int, default=32, help="images per process and micro-step")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=float, help="default: the recipe lr scaled to the effective batch")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--drop-path", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--mask-ratio", type=float, default=DEFAULT_MASK_RATIO)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500, help="optimizer steps between checkpoints")
    p.add_argument("--attn-impl", choices=("sdpa", "math", "xformers"), default="sdpa")
    p.add_argument("--use-checkpoint", action="store_true", help="activation checkpointing")
    p.add_argument("--compile-blocks", action="store_true", help="torch.compile every student block")
    p.add_argument("--arch", nargs="*", default=[], metavar="KEY=INT",
                   help="TrV architecture overrides for a shrunk student, e.g. depth=4")
    p.add_argument("--export", action="store_true", help="after training, write the official p14 / p14to16 files")
    p.add_argument("--export-only", action="store_true", help="only export OUTPUT/checkpoint.pt")
    p.add_argument("--export-name", help="file stem of the exports (default: <model>_mim)")
    p.add_argument("--demo", action="store_true", help="generate images and a random teacher under OUTPUT and "
                                                       "run a small CPU-sized pre-training with export")
    args = p.parse_args(argv)
    try:
        args.arch = {k: int(v) for k, v in (item.split("=", 1) for item in args.arch)}
    except ValueError:
        p.error(f"--arch takes KEY=INT pairs, got {args.arch}")
    if args.demo:
        apply_demo(args)
    elif not args.export_only and not (args.teacher and args.data):
        p.error("--teacher and --data are required (or --demo / --export-only)")
    return args


def apply_demo(args: argparse.Namespace) -> None:
    """Fills in the demo run; the generated data and teacher go under OUTPUT/demo_data."""
    data = os.path.join(args.output, "demo_data")
    for key in ("model", "input_size", "batch_size", "epochs", "lr", "warmup_epochs", "arch"):
        setattr(args, key, DEMO[key])
    args.export = True
    args.data, args.teacher = os.path.join(data, "images"), os.path.join(data, "teacher.pt")
    if not os.path.isdir(args.data):
        write_demo_images(args.data, DEMO["images"])
    if not os.path.isfile(args.teacher):
        write_random_teacher(args.teacher)


def masking_panels(dataset, count: int = 4) -> torch.Tensor:
    """The first `count` training crops as the student sees them: masked patches greyed. (N, 3, H, W) in [0, 1]."""
    from eva02.backbone.mim.recipe import CLIP_MEAN, CLIP_STD

    panels = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset[index]
        image = image * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
        grid = image.shape[-1] // 14
        covered = mask.view(grid, grid).repeat_interleave(14, 0).repeat_interleave(14, 1).bool()
        panels.append(torch.where(covered, 0.5 + 0.25 * (image - 0.5), image).clamp(0, 1))
    return torch.stack(panels)


def init_distributed() -> torch.device:
    """Joins the torchrun process group when there is one; returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def main(argv=None) -> int:
    args = parse_args(argv)
    # force: a library that configured the root logger when imported (lvis does) must not silence this run's log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True)
    stem = args.export_name or f"{args.model}_mim"
    if args.export_only:
        ckpt = os.path.join(args.output, CHECKPOINT_NAME)
        for path in export_official(ckpt, args.output, stem):
            print(f"wrote {path}")
        return EXIT_OK

    device = init_distributed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    cfg = PretrainConfig(
        model=args.model, teacher=args.teacher, data=args.data, output=args.output,
        teacher_weights=args.teacher_weights, teacher_heads=args.teacher_heads, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, accum_steps=args.accum_steps, lr=args.lr,
        min_lr=args.min_lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        drop_path=args.drop_path, grad_clip=args.grad_clip, input_size=args.input_size, mask_ratio=args.mask_ratio,
        precision=args.precision, num_workers=args.workers, seed=args.seed,
        save_every=args.save_every, resume=args.resume, weights_only=not args.unsafe_pickle, attn_impl=args.attn_impl,
        use_checkpoint=args.use_checkpoint, compile_blocks=args.compile_blocks, arch=args.arch,
        parallel="fsdp" if args.fsdp else "ddp", init=args.init,
        frozen_stages=-1 if args.frozen_stages is None else args.frozen_stages,
        lora=dict(rank=args.lora_rank) if args.lora_rank else None,
    )
    bar = writer = None
    clock = {"last": 0.0, "batch": 0}

    def on_start(info: dict) -> None:
        nonlocal bar, writer
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            from tqdm import tqdm

            start_wandb(args.wandb, args.output, config=vars(args))
            # purge_step: a resumed run redoes the steps after its checkpoint; TensorBoard drops the old ones
            writer = SummaryWriter(args.output, purge_step=info["step"])
            writer.add_images("masking", masking_panels(info["dataset"]), info["step"])
            bar = tqdm(total=info["total_steps"], initial=info["step"], desc=f"MIM {args.model}", unit="step",
                       dynamic_ncols=True)
        clock["last"], clock["batch"] = time.perf_counter(), info["effective_batch"]

    def on_step(record: dict) -> None:
        now = time.perf_counter()
        seconds, clock["last"] = now - clock["last"], now
        if writer is not None:
            for key in ("loss", "lr", "grad_norm"):
                writer.add_scalar(key, record[key], record["step"])
            writer.add_scalar("images_per_second", clock["batch"] / max(seconds, 1e-9), record["step"])
            writer.add_scalar("memory_mib", peak_memory_mib(device), record["step"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", epoch=record["epoch"])

    try:
        result = pretrain(cfg, on_step=on_step, device=device, on_start=on_start)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    if rank == 0:
        history = result["history"]
        if history:
            curves = draw_curves(args.output, title=f"MIM {args.model}")
            first, last = history[0]["loss"], history[-1]["loss"]
            print(f"step {result['step']}: loss {first:.4f} -> {last:.4f}; log {os.path.join(args.output, LOG_NAME)}, "
                  f"curves {curves} (TensorBoard: {tensorboard_command(args.output)})")
        if args.export:
            for path in export_official(result["checkpoint"], args.output, stem):
                print(f"wrote {path}")
        with open(os.path.join(args.output, "summary.json"), "w") as f:
            json.dump({"step": result["step"], "checkpoint": result["checkpoint"],
                       "final_loss": history[-1]["loss"] if history else None,
                       "skipped_images": result["skipped_images"]}, f, indent=1)
    if dist.is_initialized():
        dist.destroy_process_group()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
