"""MIM data: block-wise masking as the official EVA-02 generator draws it, the image folder and its crops.

Block-wise masking (BEiT style; paper §2.2). Rectangles of patches are masked one after another until the target count (105 of 256 officially) is reached or
a rectangle fails to fit in `attempts` tries. Each try draws, in this order, from a `random.Random`:
    area   = uniform(min_block, budget)        budget = patches still missing (capped at max_block); when the
                                               budget is below min_block this draws from [budget, min_block]
    aspect = exp(uniform(log min_aspect, -log min_aspect))
    h, w   = round(sqrt(area * aspect)), round(sqrt(area / aspect))   (Python's round: half to even)
    only if h < grid height and w < grid width (strictly: a block never spans the grid):
    top    = randint(0, height - h), left = randint(0, width - w)
and the rectangle is taken if it adds 1..budget new patches. Nothing is checked after rounding, so blocks smaller
than min_block (~40% of them at the official setting, mostly the last one) and aspects slightly out of range
(~6%) occur, and about a third of the masks stop a few patches short of 105 (mean ~104.4): the official
distribution, reproduced call for call, so the same seed gives the official code's masks. A mask is a pure
function of its `random.Random` (data-loader workers and resumed runs draw the same masks).
"""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass

import torch

from eva02.common.cli import IMAGE_EXTENSIONS
from .recipe import CLIP_MEAN, CLIP_STD

__all__ = ["DEFAULT_MASK_RATIO", "BlockMaskGenerator", "MaskBlock", "IMAGE_EXTENSIONS", "MIMImageFolder",
           "random_resized_crop_box", "epoch_keys"]

log = logging.getLogger("eva02.mim")

# The official setting masks 105 of the 256 patches of the 16x16 grid (224 / 14), "40%" in the paper.
DEFAULT_MASK_RATIO = 105 / 256


@dataclass(frozen=True)
class MaskBlock:
    """One masked rectangle: rows top..top+height-1, columns left..left+width-1."""

    top: int
    left: int
    height: int
    width: int


class BlockMaskGenerator:
    """Draws (H, W) bool masks, True = masked.

    Args:
        grid: patch grid side, or (H, W).
        mask_ratio: fraction of the grid to mask (rounded to a patch count; 105 / 256 officially).
        min_block: the lower end of the area draw (16 officially; not a guaranteed minimum, see above).
        max_block: the most new patches one rectangle may add; None = the whole masking budget (official).
        min_aspect: the aspect (height / width) draw spans [min_aspect, 1 / min_aspect] (0.3 officially).
        attempts: tries per rectangle before the mask is left as it is (10 officially).
    """

    def __init__(
        self,
        grid: int | tuple[int, int],
        mask_ratio: float = DEFAULT_MASK_RATIO,
        min_block: int = 16,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        attempts: int = 10,
    ):
        self.height, self.width = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        self.num_masked = round(mask_ratio * self.height * self.width)
        self.min_block = min_block
        self.max_block = max_block or self.num_masked
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.attempts = attempts

    def __repr__(self) -> str:
        return (f"BlockMaskGenerator({self.height}x{self.width}, {self.num_masked} masked, area draws from "
                f"{self.min_block}, aspect {math.exp(self.log_aspect[0]):.2f}..{math.exp(self.log_aspect[1]):.2f}, "
                f"{self.attempts} attempts)")

    def __call__(self, rng: random.Random) -> torch.Tensor:
        """A (H, W) bool mask."""
        return self.sample(rng)[0]

    def sample(self, rng: random.Random) -> tuple[torch.Tensor, list[MaskBlock]]:
        """A (H, W) bool mask and the rectangles drawn to make it."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        blocks: list[MaskBlock] = []
        count = 0
        while count < self.num_masked:
            added = self._add_block(mask, min(self.num_masked - count, self.max_block), rng, blocks)
            if added == 0:
                break
            count += added
        return mask, blocks

    def _add_block(self, mask: torch.Tensor, budget: int, rng: random.Random, blocks: list[MaskBlock]) -> int:
        """Masks one rectangle adding 1..budget new patches; returns how many it added (0 if none fitted)."""
        for _ in range(self.attempts):
            area = rng.uniform(self.min_block, budget)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h >= self.height or w >= self.width:
                continue
            top, left = rng.randint(0, self.height - h), rng.randint(0, self.width - w)
            new = h * w - int(mask[top:top + h, left:left + w].sum())
            if 0 < new <= budget:
                mask[top:top + h, left:left + w] = True
                blocks.append(MaskBlock(top, left, h, w))
                return new
        return 0





def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], rng: random.Random,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering `scale` of the area with aspect w/h in `ratio`; whole image if
    ten draws do not fit."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return 0, 0, height, width


class MIMImageFolder(torch.utils.data.Dataset):
    """Every image under `root` (recursively): random resized crop + horizontal flip, CLIP-normalized, with a
    block mask. Items are addressed by (epoch, index) keys; crop, flip and mask are drawn from a generator
    seeded by (seed, epoch, index), so any worker count and a resumed run see the same samples.

    A corrupt / unreadable image is reported (logged once) and replaced by the next readable one.
    Returns image (3, S, S) float and mask (N,) bool.
    """

    def __init__(self, root: str | os.PathLike, input_size: int, patch_size: int = 14,
                 crop_scale: tuple[float, float] = (0.2, 1.0), mask_ratio: float = DEFAULT_MASK_RATIO,
                 min_mask_block: int = 16, seed: int = 0):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.root = root
        self.paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not a multiple of the patch size {patch_size}")
        self.input_size, self.crop_scale, self.seed = input_size, crop_scale, seed
        self.masks = BlockMaskGenerator(input_size // patch_size, mask_ratio, min_mask_block)
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: str):
        from PIL import Image

        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode, so truncated files fail here

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision.transforms.functional as TF

        epoch, index = key if isinstance(key, tuple) else (0, key)
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                img = self._load(path)
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for broken files
                if path not in self.bad:
                    self.bad.add(path)
                    log.warning("skipping unreadable image %s: %s: %s", path, type(e).__name__, e)
                continue
            rng = random.Random(f"{self.seed}/{epoch}/{index}")
            top, left, h, w = random_resized_crop_box(img.width, img.height, self.crop_scale, rng)
            img = TF.resized_crop(img, top, left, h, w, [self.input_size] * 2,
                                  interpolation=TF.InterpolationMode.BICUBIC)
            if rng.random() < 0.5:
                img = TF.hflip(img)
            x = TF.normalize(TF.to_tensor(img), CLIP_MEAN, CLIP_STD)
            return x, self.masks(rng).flatten()
        raise RuntimeError(f"no readable image under {self.root} (all {len(self.paths)} failed)")


def epoch_keys(num_items: int, epoch: int, seed: int, rank: int, world: int) -> list[tuple[int, int]]:
    """This rank's (epoch, index) keys for one epoch: a seeded shuffle, equal shares for every rank."""
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    share = num_items // world
    return [(epoch, i) for i in perm[rank::world][:share]]
