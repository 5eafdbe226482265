"""Block-wise mask generator: ratio, block shape bounds, reproducibility."""
import random

import pytest
import torch

from eva02.backbone.masking import DEFAULT_MASK_RATIO, BlockMaskGenerator


def test_official_default_masks_105_of_256():
    gen = BlockMaskGenerator(16)
    assert gen.num_masked == 105
    counts = torch.tensor([int(gen(random.Random(i)).sum()) for i in range(500)], dtype=torch.float)
    assert counts.max() <= 105  # never more than the target
    assert counts.mean() >= 0.98 * 105  # and, over many draws, within 2% of it
    assert abs(counts.mean() / 256 - DEFAULT_MASK_RATIO) < 0.01


@pytest.mark.parametrize("grid, ratio", [((16, 16), 0.4), ((14, 20), 0.5), ((8, 8), 0.4)])
def test_ratio_and_block_bounds(grid, ratio):
    gen = BlockMaskGenerator(grid, mask_ratio=ratio, min_block=16, min_aspect=0.3)
    total = 0
    for seed in range(300):
        mask, blocks = gen.sample(random.Random(seed))
        assert mask.shape == grid and mask.dtype == torch.bool
        rebuilt = torch.zeros(grid, dtype=torch.bool)
        for b in blocks:
            assert b.height * b.width >= 16
            assert 0.3 - 1e-9 <= b.height / b.width <= 1 / 0.3 + 1e-9
            assert b.top + b.height <= grid[0] and b.left + b.width <= grid[1]
            rebuilt[b.top:b.top + b.height, b.left:b.left + b.width] = True
        assert torch.equal(rebuilt, mask)  # the mask is exactly the union of its blocks
        total += int(mask.sum())
    mean_ratio = total / 300 / (grid[0] * grid[1])
    assert ratio - 0.05 <= mean_ratio <= ratio + 1e-9


def test_seeded_and_reproducible():
    gen = BlockMaskGenerator(16)
    a, b = gen(random.Random("0/3/17")), gen(random.Random("0/3/17"))
    assert torch.equal(a, b)
    others = [gen(random.Random(f"0/3/{i}")) for i in range(18, 28)]
    assert not all(torch.equal(a, o) for o in others)


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="min_block"):
        BlockMaskGenerator(4, mask_ratio=0.5, min_block=16)  # 8 masked patches cannot hold a 16-patch block
    with pytest.raises(ValueError, match="mask_ratio"):
        BlockMaskGenerator(16, mask_ratio=1.5)
