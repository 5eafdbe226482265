"""The MIM pre-training loop: `pretrain(PretrainConfig)`."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from eva02.common.files import remove_stale_temporaries, save_atomic
from eva02.common.precision import autocast, autocast_dtype
from eva02.common.sharding import OPTIMIZER_BY_NAME, full_states, load_full_states, shard

from ..layer_decay import MIM_NO_DECAY, param_groups
from .data import DEFAULT_MASK_RATIO, MIMImageFolder, epoch_keys
from .model import create_mim_student, mim_loss, read_training_checkpoint
from .recipe import RECIPES, cosine_lr
from .teachers import FrozenTeacher, build_teacher

__all__ = ["PretrainConfig", "pretrain", "CHECKPOINT_NAME", "LOG_NAME"]

log = logging.getLogger("eva02.mim")
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


@dataclass
class PretrainConfig:
    """One pre-training run. None means "from the Table 22 recipe of `model`" (see RECIPES).

    batch_size is per process and micro-step; the effective batch is batch_size * accum_steps * world size,
    and lr=None scales the recipe lr linearly from the recipe's total batch to it.
    """

    model: str
    teacher: str
    data: str
    output: str
    teacher_weights: str | None = None
    teacher_heads: int | None = None
    epochs: int = 1
    max_steps: int | None = None  # stop (and end the cosine) here instead of after `epochs`
    batch_size: int = 32
    accum_steps: int = 1
    lr: float | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    drop_path: float | None = None
    grad_clip: float | None = None
    input_size: int = 224
    mask_ratio: float = DEFAULT_MASK_RATIO
    precision: str | None = None  # fp32 / fp16 / bf16 (eva02.common.precision); None: bf16 on a GPU with it, else fp32
    num_workers: int = 4
    seed: int = 0
    save_every: int = 500  # optimizer steps between checkpoints (one is always written at the end)
    resume: bool = True  # continue from output/checkpoint.pt when it exists
    weights_only: bool = True  # read the teacher's file with torch's weights_only (False: trusted files only)
    attn_impl: str = "sdpa"
    use_checkpoint: bool = False
    compile_blocks: bool = False  # torch.compile every student block (see TrV)
    arch: dict = field(default_factory=dict)  # TrV architecture overrides (tests: a shrunk student)
    # continued pre-training: the student starts from these weights (a MIM checkpoint of the same model and teacher
    # width: an official release or --export's _p14.pt), and may train less of its encoder (eva02.backbone.tuning)
    init: str | None = None
    frozen_stages: int | str = -1
    lora: dict | None = None
    # under torchrun: "ddp" (every process holds the whole student) or "fsdp" (FSDP2, one unit per block:
    # parameters, gradients and AdamW state sharded over the processes; eva02.common.sharding)
    parallel: str = "ddp"


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    if precision is None:  # the default: bf16 where the GPU has it
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return autocast_dtype(precision)


def pretrain(cfg: PretrainConfig, on_step: Callable[[dict], None] | None = None,
             device: torch.device | str | None = None, teacher: FrozenTeacher | None = None,
             on_start: Callable[[dict], None] | None = None) -> dict:
    """Runs (or resumes) MIM pre-training; returns {"step", "history", "checkpoint", "skipped_images"}
    (unreadable images seen by this process; data-loader workers log theirs).

    Every optimizer step appends {"step", "epoch", "loss", "lr", "grad_norm"} to the history (and to
    output/log.jsonl on rank 0) and calls on_step with it; on_start gets {"step", "total_steps",
    "steps_per_epoch", "images", "effective_batch", "lr", "dataset" (the MIMImageFolder)} once set up.
    `teacher` replaces the one cfg.teacher names (any FrozenTeacher, e.g. a wrapper around another CLIP
    implementation). Under torchrun, call torch.distributed init_process_group first: the student is wrapped in
    DDP (cfg.parallel "ddp") or sharded by FSDP2 ("fsdp"), each rank reads its own share; checkpoints hold the
    whole student either way.
    """
    if cfg.model not in RECIPES:
        raise KeyError(f"unknown model {cfg.model!r}; choose from {sorted(RECIPES)}")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel={cfg.parallel!r}: use 'ddp' or 'fsdp'")
    rank, world = _dist_info()
    sharded = cfg.parallel == "fsdp" and world > 1
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = RECIPES[cfg.model]
    amp_dtype = _autocast_dtype(cfg.precision, device)
    if sharded and amp_dtype == torch.float16:
        raise ValueError("fp16 under FSDP needs a sharded loss scaler, which this loop does not have: use bf16 "
                         "(--precision bf16) or fp32")
    grad_clip = recipe.grad_clip if cfg.grad_clip is None else cfg.grad_clip
    if (cfg.frozen_stages != -1 or cfg.lora) and not cfg.init:
        raise ValueError("frozen_stages / lora train part of a pre-trained student: give the weights it starts from "
                         "(init, --init); frozen random weights would stay random")

    dataset = MIMImageFolder(cfg.data, cfg.input_size, 14, recipe.crop_scale, cfg.mask_ratio, seed=cfg.seed)
    micro_per_step = cfg.batch_size * cfg.accum_steps
    steps_per_epoch = (len(dataset) // world) // micro_per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images in {cfg.data} are fewer than one optimizer step needs "
                         f"(batch {cfg.batch_size} x accum {cfg.accum_steps} x {world} processes)")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup_steps = round((recipe.warmup_epochs if cfg.warmup_epochs is None else cfg.warmup_epochs) * steps_per_epoch)
    effective_batch = micro_per_step * world
    base_lr = cfg.lr if cfg.lr is not None else recipe.lr * effective_batch / recipe.batch_size
    min_lr = recipe.min_lr if cfg.min_lr is None else cfg.min_lr
    min_lr = min(min_lr, base_lr)

    if teacher is None:
        teacher = build_teacher(cfg.teacher, cfg.teacher_weights, cfg.teacher_heads, cfg.weights_only,
                                cfg.input_size)
    teacher = teacher.to(device)
    grid = (cfg.input_size // 14,) * 2
    probe = teacher(torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=device), grid, amp_dtype)
    torch.manual_seed(cfg.seed)  # same initial student on every rank
    student = create_mim_student(
        cfg.model, probe.shape[-1], img_size=cfg.input_size, attn_impl=cfg.attn_impl,
        use_checkpoint=cfg.use_checkpoint, compile_blocks=cfg.compile_blocks,
        drop_path_rate=recipe.drop_path if cfg.drop_path is None else cfg.drop_path,
        frozen_stages=cfg.frozen_stages, lora=cfg.lora, **cfg.arch,
    )
    ckpt_path = os.path.join(cfg.output, CHECKPOINT_NAME)
    resuming = cfg.resume and os.path.isfile(ckpt_path)
    if cfg.init and not resuming:  # (a resumed run has its own weights)
        student.load_official(cfg.init, cfg.weights_only)
        log.info("student initialized from %s", cfg.init)
    student.to(device)
    if sharded:
        shard(student, student.encoder.blocks, device)
    groups = param_groups(student.named_parameters(), base_lr,
                          recipe.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
                          student.encoder.cfg.depth, 1.0, no_decay=MIM_NO_DECAY)
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=recipe.betas, eps=recipe.eps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    log_path = os.path.join(cfg.output, LOG_NAME)
    step, history = 0, []
    if resuming:
        ckpt = read_training_checkpoint(ckpt_path)
        if ckpt["config"]["model"] != cfg.model:
            raise ValueError(f"{ckpt_path} is a {ckpt['config']['model']} run, not {cfg.model}; use another --output")
        if ckpt.get("optimizer_layout") == OPTIMIZER_BY_NAME:  # written by a sharded run
            load_full_states(student, optimizer, ckpt["student"], ckpt["optimizer"])
        elif sharded:
            raise ValueError(f"{ckpt_path} was written by a run without FSDP: resume it with parallel 'ddp'")
        else:
            student.load_state_dict(ckpt["student"])
            optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, history = ckpt["step"], list(ckpt["history"])
        log.info("resumed %s at step %d", ckpt_path, step)
    if rank == 0:  # the log is rewritten from the checkpoint's history: steps after the last save are redone
        os.makedirs(cfg.output, exist_ok=True)
        remove_stale_temporaries(cfg.output)
        with open(log_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
    log.info("MIM %s: %d images, %d steps/epoch, %d steps, effective batch %d, lr %.3g, amp %s, teacher %s",
             cfg.model, len(dataset), steps_per_epoch, total_steps, effective_batch, base_lr, amp_dtype, cfg.teacher)

    if on_start is not None:
        on_start({"step": step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                  "images": len(dataset), "effective_batch": effective_batch, "lr": base_lr, "dataset": dataset})
    model = student
    if world > 1 and not sharded:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=device_ids)

    def save():
        if sharded:  # every process takes part in gathering the whole states; rank 0 writes them
            weights, optimizer_state = full_states(student, optimizer)
            layout = OPTIMIZER_BY_NAME
        else:
            weights, optimizer_state, layout = student.state_dict(), optimizer.state_dict(), "by_index"
        if rank == 0:
            save_atomic({"student": weights, "optimizer": optimizer_state, "optimizer_layout": layout,
                         "scaler": scaler.state_dict(), "step": step, "history": history, "config": asdict(cfg)},
                        ckpt_path)

    model.train()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        keys = epoch_keys(len(dataset), epoch, cfg.seed, rank, world)
        keys = keys[start * micro_per_step: steps_per_epoch * micro_per_step]  # resume mid-epoch
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=keys, drop_last=True,
                                             num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        batches = iter(loader)
        for _ in range(start, steps_per_epoch):
            if step >= total_steps:
                break
            lr = cosine_lr(step, total_steps, warmup_steps, base_lr, min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.accum_steps):
                images, mask = next(batches)
                images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
                targets = teacher(images, grid, amp_dtype)
                last = micro == cfg.accum_steps - 1
                if sharded:  # FSDP2: reduce-scatter the gradients at the last micro-step only
                    student.set_requires_gradient_sync(last)
                sync = model.no_sync() if world > 1 and not sharded and not last else contextlib.nullcontext()
                with sync:
                    with autocast(device, amp_dtype):
                        loss = mim_loss(model(images, mask), targets, mask)
                    scaler.scale(loss / cfg.accum_steps).backward()
                loss_sum += loss.detach()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP: its parts summed over the processes
                grad_norm = grad_norm.full_tensor()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if world > 1:
                dist.all_reduce(loss_sum)
            loss_value = loss_sum.item() / (cfg.accum_steps * world)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"MIM loss is {loss_value} at step {step}; the last good state is {ckpt_path}")
            step += 1
            record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)}
            history.append(record)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if on_step is not None:
                on_step(record)
            if step % cfg.save_every == 0 or step == total_steps:
                save()
    return {"step": step, "history": history, "checkpoint": ckpt_path, "skipped_images": sorted(dataset.bad)}
