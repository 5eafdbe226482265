"""Block-wise masking for MIM pre-training (BEiT style, as EVA-02 uses it; paper §2.2).

Rectangles of patches are masked one after another until the target count is reached: each rectangle covers
at least `min_block` patches, has an aspect ratio (height / width) in [min_aspect, 1 / min_aspect] and may
overlap earlier ones, but never adds more new patches than are still missing. Draws come from a
`random.Random`, so a mask is a pure function of its seed (data-loader workers and resumed runs draw the same
masks).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

__all__ = ["BlockMaskGenerator", "DEFAULT_MASK_RATIO", "MaskBlock"]

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
        mask_ratio: fraction of the grid to mask (rounded to a patch count).
        min_block: fewest patches in one rectangle (16 officially).
        max_block: most patches in one rectangle; None = the whole masking budget.
        min_aspect: smallest height / width of a rectangle; the largest is 1 / min_aspect.
        attempts: tries per rectangle before giving up (the mask then stays a little short of the target).
    """

    def __init__(
        self,
        grid: int | tuple[int, int],
        mask_ratio: float = DEFAULT_MASK_RATIO,
        min_block: int = 16,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        attempts: int = 50,
    ):
        self.height, self.width = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        self.num_masked = round(mask_ratio * self.height * self.width)
        if 0 < self.num_masked < min_block or min_block > self.height * self.width:
            raise ValueError(f"{self.num_masked} masked patches of a {self.height}x{self.width} grid cannot hold "
                             f"blocks of min_block={min_block} patches")
        self.min_block = min_block
        self.max_block = max_block or self.num_masked
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.attempts = attempts

    def __repr__(self) -> str:
        return (f"BlockMaskGenerator({self.height}x{self.width}, {self.num_masked} masked, blocks "
                f"{self.min_block}..{self.max_block}, aspect {math.exp(self.log_aspect[0]):.2f}.."
                f"{math.exp(self.log_aspect[1]):.2f})")

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
        lo_aspect, hi_aspect = self.log_aspect
        for _ in range(self.attempts):
            area = rng.uniform(self.min_block, max(self.min_block, budget))
            aspect = math.exp(rng.uniform(lo_aspect, hi_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            # Rounding can leave the bounds: such a draw is rejected rather than clipped.
            if h == 0 or w == 0 or h * w < self.min_block or not lo_aspect <= math.log(h / w) <= hi_aspect:
                continue
            if h > self.height or w > self.width:
                continue
            top = rng.randint(0, self.height - h)
            left = rng.randint(0, self.width - w)
            new = h * w - int(mask[top:top + h, left:left + w].sum())
            if 0 < new <= budget:
                mask[top:top + h, left:left + w] = True
                blocks.append(MaskBlock(top, left, h, w))
                return new
        return 0
