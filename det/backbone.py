"""The TrV as a detectron2 `Backbone`, for ViTDet's `SimpleFeaturePyramid`.

`TrVBackbone` *is* a TrV (subclass), so inside a detector built as
`SimpleFeaturePyramid(net=TrVBackbone(...))` its parameters are named `backbone.net.<TrV keys>`, the names
official EVA-02 detectors use (after q/k/v fusion). The RoPE tables are derived from the actual grid on every
forward, so no square padding is needed by the backbone itself.
"""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from eva02.backbone import TrV, preset_config

__all__ = ["TrVBackbone"]


class TrVBackbone(TrV, Backbone):
    """EVA-02 TrV returning {out_feature: (B, C, H/16, W/16)} from the last block (no final norm).

    Args:
        arch: preset name ("eva02_Ti", "eva02_S", "eva02_B", "eva02_L").
        embed_dim, depth, num_heads, mlp_hidden, sub_ln: override the preset's architecture (tests shrink it).
        patch_size: 16 for detection (p14 checkpoints are resized on load).
        img_size: pre-training image size; the absolute position embedding has img_size / patch_size cells per
            side (224 / 16 = 14, the official detector layout) and is resized bicubically to the feature grid.
        window_size, global_blocks, rope_grid, drop_path_rate, use_checkpoint, compile_blocks, attn_impl,
            frozen_stages, lora: see `TrV` (the last two: eva02.backbone.tuning).
        out_feature: name of the returned feature map.
    """

    def __init__(
        self,
        arch: str = "eva02_B",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_hidden: int | None = None,
        sub_ln: bool | None = None,
        patch_size: int = 16,
        img_size: int = 224,
        window_size: int = 16,
        global_blocks: Sequence[int] = (2, 5, 8, 11),
        rope_grid: int | None = None,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        compile_blocks: bool = False,
        attn_impl: str = "sdpa",
        out_feature: str = "last_feat",
        frozen_stages: int | str = -1,
        lora: dict | None = None,
    ):
        cfg = preset_config(arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_hidden=mlp_hidden,
                            sub_ln=sub_ln)
        super().__init__(
            cfg, patch_size=patch_size, img_size=img_size, window_size=window_size,
            global_blocks=tuple(global_blocks), rope_grid=rope_grid, attn_impl=attn_impl,
            drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint, compile_blocks=compile_blocks,
            frozen_stages=frozen_stages, lora=lora,
        )
        self._out_feature = out_feature
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: cfg.embed_dim}
        self._out_feature_strides = {out_feature: patch_size}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W), H and W multiples of the patch size -> {out_feature: (B, C, H/p, W/p)}."""
        return {self._out_feature: TrV.forward(self, x)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {self._out_feature: ShapeSpec(channels=self.embed_dim, stride=self.patch_size)}
