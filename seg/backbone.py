"""The TrV as an mmseg backbone: features of `out_indices` blocks turned into a 4-level pyramid.

Official EVA-02 segmentation layout (docs/reference.md §7): a cls token (own position slot, no RoPE) runs through
every block beside the patch tokens; the patch tokens of four blocks are rescaled x4 (deconv, BN, GELU, deconv), x2
(deconv), x1 (identity) and x0.5 (max-pool), one level per block, all at the TrV width, so UperNet and Mask2Former
see strides 4, 8, 16, 32 of the input. The class *is* a TrV (subclass), so its parameters sit under
`backbone.blocks.N`, `backbone.patch_embed`, `backbone.pos_embed` in a segmentor: the names that
`eva02.backbone.layer_id` and official mmseg checkpoints use. The pyramid lives under `backbone.pyramid`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from mmengine.logging import print_log
from mmseg.models.necks import Feature2Pyramid
from mmseg.registry import MODELS

from eva02.backbone import TrV, preset_config

from .checkpoint import load_backbone_weights

__all__ = ["EVA02"]


@MODELS.register_module()
class EVA02(TrV):
    """EVA-02 TrV backbone for mmseg.

    Args:
        arch: preset name ("eva02_Ti", "eva02_S", "eva02_B", "eva02_L").
        arch_overrides: architecture fields replacing the preset's (embed_dim, depth, num_heads, mlp_hidden,
            sub_ln), e.g. a shrunk test backbone.
        img_size: training crop side; the absolute position embedding is kept at img_size / patch_size per
            side (official: the pre-trained 16x16 grid is resized once, at load).
        patch_size: 16 for segmentation (p14 checkpoints are resized on load).
        out_indices: the blocks feeding the pyramid levels, in order (official B: 3, 5, 7, 11; L: 7, 11, 15, 23);
            a block may repeat.
        rescales: pyramid scale factors, one per out index.
        norm_cfg: normalization inside the x4 branch (SyncBN officially; BN on CPU).
        window_size, global_blocks: 0 (default) = global attention in every block, as official.
        with_cls_token: keep the official cls token through all blocks (True, as every official seg model);
            False drops it (not the official model).
        pretrained: a checkpoint in any layout `eva02.backbone.load_checkpoint` reads, or a whole segmentor
            checkpoint (ours or official, whose pyramid loads too); loaded by init_weights().
        init_cfg: mmseg's convention `dict(type="Pretrained", checkpoint=PATH)`, the same as pretrained=PATH.
        strict_pretrained: a pretrained TrV weight left unloaded (or a checkpoint TrV key the model lacks) is an
            error; False only logs it.
        pretrained_weights_only: read `pretrained` with torch's weights_only loading (False runs pickled code:
            trusted files only; tools/train_seg.py --unsafe-pickle).
        use_checkpoint: activation checkpointing of every block.
        Other keyword arguments (drop_path_rate, attn_impl, rope_grid, ...) go to TrV.

    forward: (B, 3, H, W) -> tuple of 4 maps (B, C, H/4, W/4), (B, C, H/8, W/8), (B, C, H/16, W/16),
    (B, C, H/32, W/32) for patch 16 and the default rescales.
    """

    def __init__(
        self,
        arch: str = "eva02_B",
        arch_overrides: dict | None = None,
        img_size: int = 512,
        patch_size: int = 16,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        rescales: Sequence[float] = (4, 2, 1, 0.5),
        norm_cfg: dict | None = None,
        with_cls_token: bool = True,
        pretrained: str | None = None,
        init_cfg: dict | None = None,
        strict_pretrained: bool = True,
        pretrained_weights_only: bool = True,
        **trv_kwargs,
    ):
        if len(out_indices) != len(rescales):
            raise ValueError(f"EVA02 backbone: {len(out_indices)} out_indices but {len(rescales)} rescales")
        if init_cfg is not None:
            if init_cfg.get("type") != "Pretrained" or "checkpoint" not in init_cfg or pretrained:
                raise ValueError(f"EVA02 backbone: init_cfg must be dict(type='Pretrained', checkpoint=PATH) "
                                 f"(or pass pretrained=PATH instead, not both), got {init_cfg}")
            pretrained = init_cfg["checkpoint"]
        cfg = preset_config(arch, **(arch_overrides or {}))
        # The TrV returns each block once; the pyramid may take one block twice (shallow test backbones).
        super().__init__(cfg, patch_size=patch_size, img_size=img_size, out_indices=sorted(set(out_indices)),
                         with_cls_token=with_cls_token, **trv_kwargs)
        self.pyramid_indices = tuple(out_indices)
        norm_cfg = norm_cfg or dict(type="SyncBN", requires_grad=True)
        self.pyramid = Feature2Pyramid(cfg.embed_dim, list(rescales), norm_cfg)
        self.pretrained = pretrained
        self.strict_pretrained = strict_pretrained
        self.pretrained_weights_only = pretrained_weights_only

    def init_weights(self) -> None:
        """Official TrV init, then the pretrained weights if any (mmengine's runner calls this once)."""
        super().init_weights()
        if getattr(self, "pretrained", None):
            report = load_backbone_weights(self, self.pretrained, weights_only=self.pretrained_weights_only,
                                           strict=self.strict_pretrained)
            print_log(f"EVA02 backbone: weights from {self.pretrained}\n{report}", logger="current")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = dict(zip(self.out_indices, super().forward(x)))
        return self.pyramid([feats[i] for i in self.pyramid_indices])
