"""Block-wise mask generator against the official EVA-02 generator.

fixtures/official_masking_stats.json was made by running `EVA-02/asuka/masking_generator.py` of
github.com/baaivision/EVA at commit 5623d08 with the pre-training arguments ((16, 16), 105 patches, min 16, aspect
0.3) after `random.seed(0)`: 20000 consecutive masks, their statistics, and the first 5 masks themselves.
"""
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from eva02.backbone.mim import BlockMaskGenerator

OFFICIAL = json.loads((Path(__file__).parent / "fixtures" / "official_masking_stats.json").read_text())
N = 4000  # masks drawn here; the official statistics are over 20000


@pytest.fixture(scope="module")
def drawn():
    gen, rng = BlockMaskGenerator(16), random.Random(0)
    return [gen.sample(rng) for _ in range(N)]


def test_same_seed_gives_the_official_masks(drawn):
    """The same random stream, call for call: the official generator's first masks after random.seed(0)."""
    expected = torch.tensor(OFFICIAL["first_5_masks_after_random_seed_0"], dtype=torch.bool)
    assert torch.equal(torch.stack([mask for mask, _ in drawn[:5]]), expected)
    assert [int(mask.sum()) for mask, _ in drawn[:5]] == OFFICIAL["first_5_masked_counts"]


def test_official_distribution_over_thousands_of_masks(drawn):
    """Counts, block sizes and aspects, blocks per mask and the per-position frequency, with its quirks: about a
    third of the masks stop short of 105, 40% of the blocks are below 16 patches, 6% out of the aspect range."""
    counts = torch.tensor([int(mask.sum()) for mask, _ in drawn], dtype=torch.float64)
    blocks = [b for _, bs in drawn for b in bs]
    areas = torch.tensor([b.height * b.width for b in blocks], dtype=torch.float64)
    aspect = torch.tensor([b.height / b.width for b in blocks])
    stats = OFFICIAL["blocks"]
    assert counts.max() <= 105 and counts.min() >= min(map(int, OFFICIAL["masked_count_hist"])) - 3
    assert counts.mean() == pytest.approx(OFFICIAL["masked_count_mean"], abs=0.08)  # ~5 standard errors
    assert float((counts == 105).double().mean()) == pytest.approx(OFFICIAL["fraction_masks_with_exactly_105"], abs=0.04)
    assert float((areas < 16).double().mean()) == pytest.approx(stats["fraction_area_lt_16"], abs=0.02)
    outside = (aspect < 0.3) | (aspect > 1 / 0.3)
    assert float(outside.double().mean()) == pytest.approx(stats["fraction_aspect_outside_[0.3,1/0.3]"], abs=0.01)
    assert len(blocks) / N == pytest.approx(stats["blocks_per_mask_mean"], abs=0.1)
    assert max(b.height for b in blocks) <= stats["max_h"] and max(b.width for b in blocks) <= stats["max_w"]
    ours = Counter(b.height for b in blocks)
    for h, count in stats["h_hist"].items():  # block heights: same distribution, bin by bin
        assert ours[int(h)] / len(blocks) == pytest.approx(count / stats["num_blocks"], abs=0.01)
    frequency = torch.stack([mask for mask, _ in drawn]).double().mean(0)
    torch.testing.assert_close(frequency, torch.tensor(OFFICIAL["position_frequency_16x16"], dtype=torch.float64),
                               atol=0.035, rtol=0)


def test_mask_is_the_union_of_its_blocks(drawn):
    for mask, blocks in drawn[:200]:
        rebuilt = torch.zeros(16, 16, dtype=torch.bool)
        for b in blocks:
            assert b.top + b.height <= 16 and b.left + b.width <= 16 and 0 < b.height < 16 and 0 < b.width < 16
            rebuilt[b.top:b.top + b.height, b.left:b.left + b.width] = True
        assert torch.equal(rebuilt, mask)


def test_seeded_and_reproducible():
    gen = BlockMaskGenerator(16)
    a, b = gen(random.Random("0/3/17")), gen(random.Random("0/3/17"))
    assert torch.equal(a, b)
    others = [gen(random.Random(f"0/3/{i}")) for i in range(18, 28)]
    assert not all(torch.equal(a, o) for o in others)


def test_other_grids_and_bad_settings():
    gen = BlockMaskGenerator((14, 20), mask_ratio=0.5)
    assert gen.num_masked == 140
    assert all(int(gen(random.Random(i)).sum()) <= 140 for i in range(50))
    with pytest.raises(ValueError, match="mask_ratio"):
        BlockMaskGenerator(16, mask_ratio=1.5)
