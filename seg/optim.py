"""Layer-wise lr decay for mmengine, built on the one rule in `eva02.backbone.layer_decay`.

Config:
    optim_wrapper = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=4e-5, betas=(0.9, 0.999), weight_decay=0.05),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=dict(layer_decay_rate=0.9),  # optional num_layers, checked against the backbone
    )
Layer ids (official): patch_embed / pos_embed / tokens -> 0, backbone.blocks.i -> i + 1, everything else
(pyramid, heads) -> depth + 1; lr = base lr * rate ** (depth + 1 - layer id). No weight decay for 1-D
parameters and biases; pos_embed and cls_token are decayed, as in the published runs (docs/reference.md §7).
`paramwise_cfg.no_decay_names=("pos_embed", "cls_token")` exempts them too (what the official constructor meant
to do), with or without the `backbone.` / `module.` prefix.
"""
from __future__ import annotations

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from eva02.backbone import no_decay_rule, param_groups
from eva02.common.precision import from_torch_name

__all__ = ["LayerDecayOptimWrapperConstructor", "fp32_without_gpu", "config_precision"]


def trv_depth(model: nn.Module) -> int:
    """Depth of the TrV inside a segmentor (its `backbone`), or of a bare TrV."""
    backbone = getattr(model, "backbone", model)
    cfg = getattr(backbone, "cfg", None)
    if cfg is None or not hasattr(cfg, "depth"):
        raise TypeError(f"LayerDecayOptimWrapperConstructor needs a TrV backbone, got {type(backbone).__name__}")
    return cfg.depth


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine optimizer-wrapper constructor with EVA-02 layer-wise lr decay (paramwise_cfg: layer_decay_rate,
    optional num_layers = TrV depth, optional no_decay_names exempted from weight decay besides 1-D parameters
    and biases). Each parameter group carries lr, weight_decay, lr_scale, layer_id and
    param_names; mmengine's schedulers scale every group's lr from its own starting value."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(paramwise_cfg) - {"layer_decay_rate", "num_layers", "no_decay_names"}
        if "layer_decay_rate" not in paramwise_cfg or unknown:
            raise KeyError(f"LayerDecayOptimWrapperConstructor: paramwise_cfg needs 'layer_decay_rate' and "
                           f"accepts 'num_layers' and 'no_decay_names' only, got {sorted(paramwise_cfg)}")
        self.layer_decay_rate = float(paramwise_cfg["layer_decay_rate"])
        self.num_layers = paramwise_cfg.get("num_layers")
        self.no_decay = no_decay_rule(paramwise_cfg.get("no_decay_names", ()))
        super().__init__(optim_wrapper_cfg, paramwise_cfg=None)
        self.paramwise_cfg = paramwise_cfg  # non-empty: mmengine then calls add_params

    def add_params(self, params: list, module: nn.Module, **kwargs) -> None:
        depth = trv_depth(module)
        if self.num_layers is not None and self.num_layers != depth:
            raise ValueError(f"paramwise_cfg.num_layers={self.num_layers} but the backbone has {depth} blocks")
        groups = param_groups(module.named_parameters(), self.base_lr, self.base_wd or 0.0, depth,
                              self.layer_decay_rate, no_decay=self.no_decay)
        for g in groups:
            print_log(f"layer {g['layer_id']:2d} lr_scale {g['lr_scale']:.4f} wd {g['weight_decay']}: "
                      f"{len(g['params'])} tensors", logger="current", level=10)  # DEBUG
        params.extend(groups)


def fp32_without_gpu(cfg) -> bool:
    """The paper configs train with fp16 AMP (`AmpOptimWrapper`), as the published runs did; mmengine's AMP wrapper
    needs a GPU. Where none exists, switch `cfg.optim_wrapper` to the plain fp32 `OptimWrapper` (in place) and
    return True; otherwise leave it and return False."""
    wrapper = cfg.optim_wrapper
    if wrapper.get("type") != "AmpOptimWrapper" or torch.cuda.is_available():
        return False
    wrapper.type = "OptimWrapper"
    for key in ("dtype", "loss_scale"):
        wrapper.pop(key, None)
    return True


def config_precision(cfg) -> str:
    """The config's precision name (eva02.common.precision), from its optimizer wrapper: an AmpOptimWrapper's
    dtype (mmengine's default float16), else fp32."""
    wrapper = cfg.optim_wrapper
    return from_torch_name(wrapper.get("dtype") or "float16") if wrapper.get("type") == "AmpOptimWrapper" else "fp32"
