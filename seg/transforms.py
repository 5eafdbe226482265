"""The official EVA-02 multi-scale test resize (mmseg 0.x `SETR_Resize` with `setr_multi_scale=True`).

For a test scale (long, short) = (2048, 512) * ratio, the image is resized, aspect kept, so that its SHORT side is
max(short, crop): ratios 0.5 and 0.75 evaluate at the crop size, and the long side is never capped. mmseg's
`Resize(keep_ratio=True)` fits inside (long, short) instead, shrinking wide images and evaluating ratios below 1
below the crop size; the published multi-scale numbers need the official rule (docs/reference.md §7).
"""
from __future__ import annotations

from mmcv.transforms import BaseTransform, Resize
from mmseg.registry import TRANSFORMS

__all__ = ["ShortSideResize"]


@TRANSFORMS.register_module()
class ShortSideResize(BaseTransform):
    """Resize so the short side is max(min(scale), min_short_side), aspect ratio kept, long side uncapped.

    Args:
        scale: the (long, short) test scale of one multi-scale ratio, e.g. (int(2048 * r), int(512 * r)).
        min_short_side: the crop size; no image is evaluated with a shorter side.
        interpolation, backend: as mmcv's Resize.
    """

    def __init__(self, scale: tuple[int, int], min_short_side: int, interpolation: str = "bilinear",
                 backend: str = "cv2"):
        self.scale = tuple(scale)
        self.min_short_side = min_short_side
        self.interpolation = interpolation
        self.backend = backend

    def transform(self, results: dict) -> dict:
        h, w = results["img"].shape[:2]
        short = max(min(self.scale), self.min_short_side)
        # (long, short) with the image's own aspect: mmcv's keep-ratio rescale then lands on `short` exactly.
        target = (short * max(h, w) / min(h, w), short)
        return Resize(scale=target, keep_ratio=True, interpolation=self.interpolation,
                      backend=self.backend).transform(results)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, min_short_side={self.min_short_side})"
