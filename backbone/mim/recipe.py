"""Pre-training hyper-parameters of each EVA-02 variant (paper Table 22), the lr schedule and input statistics."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CLIP_MEAN", "CLIP_STD", "Recipe", "RECIPES", "cosine_lr"]

# Pre-training inputs use the CLIP mean / std (docs/reference.md §4), for the student and the CLIP teacher alike.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Recipe:
    """Pre-training hyper-parameters of one variant; lr is for the total batch `batch_size`."""

    lr: float
    batch_size: int
    drop_path: float
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 3.0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    # Not in Table 22: the floor of the cosine, as in the BEiT-family pre-training scripts EVA-02 builds on.
    min_lr: float = 1e-5


RECIPES = {  # Table 22: lr / total batch / drop path for Ti, S, B, L; the rest is shared
    "eva02_Ti": Recipe(lr=3e-3, batch_size=4096, drop_path=0.0),
    "eva02_S": Recipe(lr=3e-3, batch_size=4096, drop_path=0.0),
    "eva02_B": Recipe(lr=1.5e-3, batch_size=2048, drop_path=0.0),
    "eva02_L": Recipe(lr=1.5e-3, batch_size=2048, drop_path=0.1),
}


def cosine_lr(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine from `base` down to `floor` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
