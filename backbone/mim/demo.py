"""The embedded default of the MIM demo and tests: generated images and a random stand-in teacher."""
from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoint import save_atomic, to_official
from ..trv import create_trv

__all__ = ["write_demo_images", "write_random_teacher"]


def write_demo_images(folder: str | os.PathLike, count: int, size: int = 64, seed: int = 0) -> list[str]:
    """Writes `count` procedural PNGs (smooth colour waves with random rectangles and discs): the embedded
    default data of the demo and the tests, structured enough for a teacher's features to vary with it."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) / size, torch.arange(size) / size, indexing="ij")
    paths = []
    for i in range(count):
        freq, phase = torch.rand(3, 2, generator=g) * 6 - 3, torch.rand(3, generator=g) * 6
        img = torch.stack([0.5 + 0.5 * torch.sin(f[0] * xx + f[1] * yy + p) for f, p in zip(freq, phase)], -1)
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            colour = torch.rand(3, generator=g)
            x0, y0 = (torch.rand(2, generator=g) * 0.8).tolist()
            r = float(torch.rand(1, generator=g)) * 0.22 + 0.08
            if torch.rand(1, generator=g) < 0.5:
                shape = (xx >= x0) & (xx < x0 + r) & (yy >= y0) & (yy < y0 + r)
            else:
                shape = (xx - x0) ** 2 + (yy - y0) ** 2 < r * r
            img[shape] = colour
        path = os.path.join(folder, f"img_{i:04d}.png")
        Image.fromarray((img * 255).to(torch.uint8).numpy()).save(path)
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
