"""Optimizer parameter groups for EVA-02 detection: layer-wise lr decay, weight decay on every parameter.

The decay rule is `eva02.backbone.layer_decay` (one rule for det and seg): layer id 0 for patch_embed /
pos_embed, i + 1 for block i, depth + 1 for the pyramid and heads; lr = base_lr * rate ** (depth + 1 - id).
Official EVA-02 detection applies weight decay to every parameter (norms and pos_embed too;
docs/reference.md §2).
"""
from __future__ import annotations

from torch import nn

from eva02.backbone import param_groups
from eva02.backbone.checkpoint import unwrap_model

__all__ = ["layer_decay_param_groups"]


def layer_decay_param_groups(model: nn.Module, base_lr: float, weight_decay: float, lr_decay_rate: float,
                             depth: int | None = None) -> list[dict]:
    """Param groups for a detector whose TrV sits at `model.backbone.net`; depth defaults to that TrV's."""
    model = unwrap_model(model)
    if depth is None:
        try:
            depth = model.backbone.net.cfg.depth
        except AttributeError as e:
            raise ValueError("layer_decay_param_groups: the model has no TrV at model.backbone.net; "
                             "pass depth explicitly") from e
    return param_groups(model.named_parameters(), base_lr, weight_decay, depth, lr_decay_rate, no_decay=None)
