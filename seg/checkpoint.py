"""Checkpoints into EVA-02 segmentors: this project's own and the official release's (reference §7).

Official EVA-02 segmentation checkpoints (mmseg 0.x UperNet, `{"meta", "state_dict", ...}`) hold the TrV under
`backbone.` with separate q/k/v, a cls token and RoPE buffers, the pyramid as `backbone.fpn1..fpn4`, and the
`decode_head.*` / `auxiliary_head.*` of mmseg's UPerHead / FCNHead (the same names in mmseg 1.x). The TrV part
goes through `eva02.backbone.load_checkpoint` (the one converter: q/k/v fusion, RoPE buffers ignored,
patch-kernel and position-embedding resizing); the official pyramid names map onto mmseg's Feature2Pyramid:

    fpn1 (deconv, BN, GELU, deconv)  -> pyramid.upsample_4x     fpn3 (identity), fpn4 (max-pool): no weights
    fpn2 (deconv)                    -> pyramid.upsample_2x
"""
from __future__ import annotations

import os

import torch
from torch import nn

from eva02.backbone import LoadReport, load_checkpoint
from eva02.backbone.checkpoint import IncompleteCheckpointError, check_complete, read_weights

__all__ = ["OFFICIAL_PYRAMID", "IncompleteCheckpointError", "rename_official_pyramid", "load_backbone_weights",
           "load_segmentor_checkpoint"]

OFFICIAL_PYRAMID = (("fpn1.", "pyramid.upsample_4x."), ("fpn2.", "pyramid.upsample_2x."))


def rename_official_pyramid(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Official `{prefix}fpn1.* / fpn2.*` keys -> this project's `{prefix}pyramid.upsample_4x.* / upsample_2x.*`."""
    out = {}
    for key, value in sd.items():
        for old, new in OFFICIAL_PYRAMID:
            if key.startswith(prefix + old):
                key = prefix + new + key[len(prefix + old):]
                break
        out[key] = value
    return out


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, weights_only: bool = True,
                          strict: bool = True) -> LoadReport:
    """Load a backbone (`EVA02`) from any TrV layout, or from a whole segmentor checkpoint (ours or official),
    whose pyramid is then loaded too. With `strict`, a TrV weight left unloaded, a TrV-looking checkpoint key
    the model lacks, or a pyramid left half loaded is an error (IncompleteCheckpointError)."""
    sd, source = read_weights(path, weights_only)
    sd = rename_official_pyramid(sd, "backbone." if any(k.startswith("backbone.") for k in sd) else "")
    report = load_checkpoint(backbone, sd, source=source)
    # A backbone-only checkpoint (MIM, p14to16) has no pyramid: it starts fresh, as in every official run.
    has_pyramid = any(k.startswith("pyramid.") for k in report.loaded)
    missing = [k for k in report.missing if has_pyramid or not k.startswith("pyramid.")]
    if strict:
        check_complete(source, missing, report.unexpected, "set the backbone's strict_pretrained=False")
    return report


def load_segmentor_checkpoint(model: nn.Module, path: str | os.PathLike, weights_only: bool = True,
                              strict: bool = True) -> str:
    """Load a whole segmentor (backbone, pyramid, decode and auxiliary heads) from our checkpoint or an official
    EVA-02 one. With `strict`, any model weight left unloaded or checkpoint tensor unused is an error naming them
    (RoPE buffers are derived and never count). Returns a one-paragraph summary for the log."""
    sd, source = read_weights(path, weights_only)
    sd = rename_official_pyramid(sd, "backbone.")
    backbone_sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    report = load_checkpoint(model.backbone, backbone_sd, source=source)
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    own = model.state_dict()
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
              for k, v in rest.items() if k in own and own[k].shape != v.shape]
    if shapes:
        raise ValueError(f"{source}: shape mismatch (another class count or head width?): {'; '.join(shapes[:4])}")
    result = model.load_state_dict(rest, strict=False)
    missing = ["backbone." + k for k in report.missing]
    missing += [k for k in result.missing_keys if not k.startswith("backbone.")]
    unused = ["backbone." + k for k in report.unexpected + report.skipped] + list(result.unexpected_keys)
    if strict:
        check_complete(source, missing, unused, "pass --allow-partial (tools/test_seg.py)")
    return (f"loaded {source}: backbone {len(report.loaded)} tensors ({'; '.join(report.converted) or 'as is'}), "
            f"heads {len(rest) - len(result.unexpected_keys)} tensors, {len(report.derived)} RoPE buffers "
            f"ignored (recomputed){f'; left unloaded: {missing}; unused: {unused}' if missing or unused else ''}")
