"""The official multi-scale test resize (SETR_Resize with setr_multi_scale), sizes computed by hand."""
import numpy as np
import pytest
from mmengine.registry import init_default_scope
from mmseg.registry import TRANSFORMS


def resized(h, w, scale, min_short_side=512):
    init_default_scope("mmseg")
    transform = TRANSFORMS.build(dict(type="ShortSideResize", scale=scale, min_short_side=min_short_side))
    return transform({"img": np.zeros((h, w, 3), np.uint8)})["img"].shape[:2]


@pytest.mark.parametrize("h, w, scale, expected", [
    # ratio 0.5 of (2048, 512): short side max(256, 512) = 512; long 400 * 512 / 300 = 682.67 -> 683
    (300, 400, (1024, 256), (512, 683)),
    # ratio 1.5: short 768, factor 768 / 512 = 1.5 -> long int(683 * 1.5 + 0.5) = 1025
    (512, 683, (3072, 768), (768, 1025)),
    # portrait: the short side is the width
    (400, 300, (1024, 256), (683, 512)),
    # a wide image at ratio 1.75: short 896, long 8960 (mmseg's Resize would cap the long side at 3584)
    (100, 1000, (3584, 896), (896, 8960)),
])
def test_short_side_is_max_of_scale_and_crop_and_long_side_is_uncapped(h, w, scale, expected):
    assert resized(h, w, scale) == expected
