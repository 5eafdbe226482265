"""Peak GPU memory of a MIM pre-training step, without a GPU (eva02.common.memory).

The trace runs the pieces `pretrain` runs, one micro-step per optimizer step (accum_steps 1), twice so that the
second step has AdamW's state: the paper's teacher (EVA-CLIP-g, timm's eva_giant_patch14_clip_224 with its CLIP
projection: 1024-wide targets; frozen, fp32 weights, run without gradients under the step's autocast), the student
(create_mim_student with the recipe's drop path), mim_loss on the masked patches, backward, gradient clipping,
AdamW over the layer-decay groups; sharded by FSDP2 (one unit per block) as parallel="fsdp" shards it. Inputs:
`batch` crops of size x size with the official number of masked patches each (40%: 105 of 256 at 224 px). Both
models are built on the meta device (no weights in host memory), then made fake.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from eva02.common.memory import MemoryEstimate, estimate_memory
from eva02.common.precision import autocast, autocast_dtype
from eva02.common.sharding import shard

from ..layer_decay import MIM_NO_DECAY, param_groups
from .data import DEFAULT_MASK_RATIO
from .model import create_mim_student, mim_loss
from .recipe import RECIPES
from .teachers import TimmTeacher

__all__ = ["plan_mim", "mim_step", "PAPER_TEACHER", "DEFAULT_PRECISION"]

PAPER_TEACHER = "eva_giant_patch14_clip_224"
# pretrain's default on a GPU: bf16 where the GPU has it (sharded runs refuse fp16: no sharded loss scaler there)
DEFAULT_PRECISION = "bf16"
PATCH = 14


def mim_step(model: str, batch: int, size: int = 224, precision: str = DEFAULT_PRECISION,
             checkpointing: bool = False, sharded: bool = False, teacher: str = PAPER_TEACHER, steps: int = 2,
             on_meta: bool = True, **overrides):
    """(build, run) of plan_mim's step, for estimate_memory or, on real tensors, measure_peak (on_meta False: the
    models are built with weights). teacher: a timm CLIP tower. overrides: the student's frozen_stages / lora
    (eva02.backbone.tuning) as PretrainConfig takes them, or its architecture (depth=...: a shrunk student)."""
    if sharded and precision == "fp16":
        raise ValueError("fp16 under FSDP: MIM pre-training refuses it (no sharded loss scaler); use bf16 or fp32")
    recipe = RECIPES[model]
    dtype = autocast_dtype(precision)
    grid = (size // PATCH,) * 2
    # made here, outside the trace, so that it keeps its values: the masked patches' count sets the head's size
    mask = torch.zeros(batch, grid[0] * grid[1], dtype=torch.bool)
    mask[:, :round(DEFAULT_MASK_RATIO * mask.shape[1])] = True

    def build():
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            teacher_model = TimmTeacher(teacher, None, img_size=size)
            student = create_mim_student(model, teacher_model.project.out_features, img_size=size,
                                         use_checkpoint=checkpointing, drop_path_rate=recipe.drop_path, **overrides)
        return nn.ModuleDict(dict(student=student.train(), teacher=teacher_model))

    def run(models, phase):
        student, teacher_model = models["student"], models["teacher"]
        device = next(student.parameters()).device
        if sharded:
            shard(student, student.encoder.blocks, device)
        groups = param_groups(student.named_parameters(), recipe.lr, recipe.weight_decay, student.encoder.cfg.depth,
                              1.0, no_decay=MIM_NO_DECAY)
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)
        images = torch.zeros(batch, 3, size, size, device=device)
        # on a GPU (measure_peak) the mask goes there; the trace keeps it as it is, with its values
        on_device = mask if device.type == "cpu" else mask.to(device)
        for i in range(steps):
            with phase("first step" if i == 0 else "training step"):
                targets = teacher_model(images, grid, dtype)
                with autocast(device, dtype):
                    loss = mim_loss(student(images, on_device), targets, on_device)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), recipe.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del targets, loss

    return build, run


def plan_mim(model: str, batch: int, size: int = 224, precision: str = DEFAULT_PRECISION,
             checkpointing: bool = False, target: str = "cuda", attention: str = "auto", gpus: int = 1,
             sharded: bool = False, teacher: str = PAPER_TEACHER, **tuning) -> MemoryEstimate:
    """Peak memory of one GPU's MIM pre-training step of the preset `model` (RECIPES) for `batch` crops of
    size x size. gpus > 1: DDP over the gpus, or sharded by FSDP2 (sharded; rank 0's step). tuning: frozen_stages /
    lora (pretrain's --frozen-stages / --lora-rank). target "cpu" counts as the CPU allocator does."""
    sharded = sharded and gpus > 1
    build, run = mim_step(model, batch, size, precision, checkpointing, sharded, teacher, **tuning)
    return estimate_memory(build, run, target=target, attention=attention, ddp=gpus > 1 and not sharded,
                           world=gpus if sharded else 1)
