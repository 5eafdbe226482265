"""Layer-wise learning-rate decay: the one rule shared by detection, segmentation and pre-training.

Layer ids (official EVA-02 det and seg): patch_embed, pos_embed, cls_token and mask_token -> 0; block i -> i + 1;
everything else (feature pyramid, heads, necks) -> depth + 1. A parameter's lr scale is
rate ** (depth + 1 - layer_id), so the heads train at the base lr and the patch embedding at rate ** (depth + 1).
Names may carry any wrapper prefix (`backbone.net.`, `backbone.`, `module.`).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

import torch

__all__ = ["layer_id", "lr_scale", "no_decay_rule", "SEG_NO_DECAY", "MIM_NO_DECAY", "param_groups"]

_EMBED = re.compile(r"(^|\.)(patch_embed|pos_embed|cls_token|mask_token)(\.|$)")
_BLOCK = re.compile(r"(^|\.)blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """Layer id of a parameter name in a model whose TrV has `depth` blocks."""
    if _EMBED.search(name):
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(2)) + 1
    return depth + 1


def lr_scale(name: str, depth: int, rate: float) -> float:
    """Layer-wise lr decay factor of a parameter: rate ** (depth + 1 - layer id); the head's is 1."""
    return rate ** (depth + 1 - layer_id(name, depth))


def no_decay_rule(names: Iterable[str] = ()) -> Callable[[str, torch.Tensor], bool]:
    """A weight-decay exemption: 1-D parameters and biases always, plus parameters whose name ends in one of
    `names` (matched on the last component, so wrapper prefixes do not matter).

    The official runs differ per task (docs/reference.md §7): segmentation exempts only 1-D parameters and biases
    (its constructor compared `backbone.`-prefixed names with 'pos_embed' / 'cls_token', so those WERE decayed in
    the published runs); MIM pre-training also exempts pos_embed and cls_token (the mask token is decayed)."""
    names = frozenset(names)

    def no_decay(name: str, param: torch.Tensor) -> bool:
        last = name.rsplit(".", 1)[-1]
        return param.ndim <= 1 or last == "bias" or last in names

    return no_decay


SEG_NO_DECAY = no_decay_rule()
MIM_NO_DECAY = no_decay_rule(("pos_embed", "cls_token"))


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    weight_decay: float,
    depth: int,
    rate: float,
    no_decay: Callable[[str, torch.Tensor], bool] | None = None,
) -> list[dict]:
    """Optimizer parameter groups, one per (layer id, decay) pair, with keys params, lr, weight_decay,
    lr_scale and layer_id. `no_decay(name, param)` -> True puts a parameter at weight decay 0; None decays
    every parameter (the official detection rule)."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        decay = not (no_decay and no_decay(name, p))
        scale = lr_scale(name, depth, rate)
        g = groups.setdefault((lid, decay), {
            "params": [], "param_names": [], "layer_id": lid, "lr_scale": scale, "lr": lr * scale,
            "weight_decay": weight_decay if decay else 0.0,
        })
        g["params"].append(p)
        g["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
