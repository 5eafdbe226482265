"""Block-wise masking for MIM pre-training, as the official EVA-02 generator draws it (BEiT style; paper §2.2).

Rectangles of patches are masked one after another until the target count (105 of 256 officially) is reached or
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
