"""MIM pre-training of TrV: the package that produces EVA-02 weights (paper §2.2, Table 22), one module per concern.

    student: TrV (patch 14, cls + mask tokens) -> final LayerNorm `norm` -> Linear `lm_head` to the teacher width
    teacher: a frozen encoder giving the targets on the same crop (a timm CLIP tower with its projection, a TrV /
             EVA02-CLIP-style tower from a checkpoint, or any timm model with a local weights file)
    loss:    negative cosine similarity between student predictions and teacher targets, masked patches only

Modules:
    recipe    Table 22 hyper-parameters per variant, the cosine schedule, CLIP mean / std
    model     the student, the loss, official checkpoints in and out (`export_official`)
    teachers  frozen teachers and what each computes
    data      block-wise masking as the official generator draws it, the image folder and its crops
    train     `pretrain(PretrainConfig)`: the loop (AdamW, grad clip, fp16/bf16 autocast, accumulation, DDP,
              atomic resumable checkpoints)
    demo      generated images and a random teacher: the embedded default of the demo and the tests
    memory    the pre-training step on fake tensors: its GPU memory (tools/plan_memory.py --mim)
tools/pretrain_mim.py is its command line. Needs torch; PIL / torchvision (image folder) and timm (timm teachers)
are imported where used.
"""
from .data import DEFAULT_MASK_RATIO, BlockMaskGenerator, MaskBlock, MIMImageFolder
from .model import MIMStudent, create_mim_student, export_official, mim_loss
from .recipe import CLIP_MEAN, CLIP_STD, RECIPES, Recipe, cosine_lr
from .teachers import FrozenTeacher, TimmTeacher, TrVTeacher, build_teacher
from .train import PretrainConfig, pretrain

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "RECIPES", "Recipe", "cosine_lr", "MIMStudent", "create_mim_student", "mim_loss",
    "export_official", "FrozenTeacher", "TrVTeacher", "TimmTeacher", "build_teacher", "DEFAULT_MASK_RATIO",
    "BlockMaskGenerator", "MaskBlock", "MIMImageFolder", "PretrainConfig", "pretrain",
]
