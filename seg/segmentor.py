"""An EncoderDecoder whose heads always see the shape of the tensor they decode.

mmseg's slide inference hands each crop to the head with img_shape set to the crop but pad_shape still that
of the whole padded image; heads that resize their masks to pad_shape (Mask2FormerHead) then return maps of
the wrong size. Setting pad_shape to the decoded tensor's shape is right for whole-image inference too.
"""
from __future__ import annotations

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from torch import Tensor

__all__ = ["CropAwareEncoderDecoder"]


@MODELS.register_module()
class CropAwareEncoderDecoder(EncoderDecoder):
    def encode_decode(self, inputs: Tensor, batch_img_metas: list[dict]) -> Tensor:
        """inputs (B, 3, h, w) (a slide crop or the whole batch) -> seg logits (B, K, h, w)."""
        metas = [dict(meta, pad_shape=tuple(inputs.shape[2:])) for meta in batch_img_metas]
        return super().encode_decode(inputs, metas)
