"""The embedded default of the MIM demo and tests: generated images and a random stand-in teacher."""
from __future__ import annotations

import os

import torch
from torch import nn

from eva02.common.files import save_atomic
from eva02.common.shapes import draw_scene

from ..checkpoint import to_official
from ..trv import create_trv

__all__ = ["write_demo_images", "write_random_teacher"]


def write_demo_images(folder: str | os.PathLike, count: int, size: int = 64, seed: int = 0) -> list[str]:
    """Writes `count` PNGs of the generated shapes (eva02.common.shapes): the embedded default data of the demo
    and the tests, structured enough for a teacher's features to vary with it."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"img_{i:04d}.png")
        Image.fromarray(draw_scene(rng, size)[0]).save(path)
        paths.append(path)
    return paths


def write_random_teacher(path: str | os.PathLike, width: int = 64, depth: int = 2, seed: int = 1) -> str:
    """Saves a randomly initialized small TrV tower (patch 14, head_dim 64, final norm) in the official MIM
    layout: a stand-in teacher for demos and tests where no CLIP weights can be downloaded."""
    torch.manual_seed(seed)
    trv = create_trv("eva02_Ti", depth=depth, embed_dim=width, num_heads=max(1, width // 64),
                     mlp_hidden=int(width * 4 * 2 / 3), with_cls_token=True)
    norm = nn.LayerNorm(width, eps=1e-6)
    save_atomic({"module": {**to_official(trv), **{f"norm.{k}": v for k, v in norm.state_dict().items()}}}, path)
    return os.fspath(path)
