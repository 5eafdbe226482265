"""Checkpoints into EVA-02 segmentors: this project's own and the official release's (docs/reference.md §7).

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
import re

import torch
from torch import nn

from eva02.backbone import LoadReport, is_adapter_key, load_checkpoint
from eva02.backbone.checkpoint import IncompleteCheckpointError, check_complete, read_state_dict, read_weights
from eva02.common.class_rows import ClassRows, relay_class_layers

__all__ = ["OFFICIAL_PYRAMID", "CLASS_LAYERS", "IncompleteCheckpointError", "rename_official_pyramid",
           "load_backbone_weights", "checkpoint_classes", "load_segmentor_checkpoint"]

# The class-specific layers of the segmentors' heads (state-dict key pattern, row layout): mmseg's conv_seg of
# every decode / auxiliary head, and Mask2Former's class embedding with its extra no-object row.
CLASS_LAYERS = ((re.compile(r"(^|\.)conv_seg\.(weight|bias)$"), ClassRows()),
                (re.compile(r"(^|\.)cls_embed\.(weight|bias)$"), ClassRows(extra=1)))


def _class_layout(key: str) -> ClassRows | None:
    return next((layout for pattern, layout in CLASS_LAYERS if pattern.search(key)), None)


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
    whose pyramid is then loaded too, or from a detector (its cls token then starts at its init, as the pyramid of
    a backbone-only checkpoint does). With `strict`, a TrV weight left unloaded, a TrV-looking checkpoint key the
    model lacks, or a pyramid left half loaded is an error (IncompleteCheckpointError)."""
    sd, source = read_weights(path, weights_only)
    sd = rename_official_pyramid(sd, "backbone." if any(k.startswith("backbone.") for k in sd) else "")
    report = load_checkpoint(backbone, sd, source=source)
    # A backbone-only checkpoint (MIM, p14to16) has no pyramid: it starts fresh, as in every official run.
    has_pyramid = any(k.startswith("pyramid.") for k in report.loaded)
    missing = [k for k in report.missing if has_pyramid or not k.startswith("pyramid.")]
    # A detection backbone (detectron2's ViT, e.g. the detection demo's) has no cls token: ours keeps its init.
    if "cls_token" in missing:
        missing.remove("cls_token")
        report.converted.append("cls_token: none in the checkpoint (a detection backbone?), kept at its init")
    check_complete(source, [], [k for k in report.unexpected if is_adapter_key(k)], "")  # unmerged LoRA: refused
    if strict:
        check_complete(source, missing, report.unexpected, "set the backbone's strict_pretrained=False")
    return report


def checkpoint_classes(checkpoint: dict) -> list[str] | None:
    """The class names a checkpoint object records: mmengine's meta.dataset_meta.classes, or mmseg 0.x's
    meta.CLASSES; None when it has none (official EVA-02 releases)."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        return None
    classes = (meta.get("dataset_meta") or {}).get("classes") or meta.get("CLASSES")
    return [str(c) for c in classes] if classes else None


def load_segmentor_checkpoint(model: nn.Module, path: str | os.PathLike | dict, weights_only: bool = True,
                              strict: bool = True, classes: list[str] | None = None,
                              adapt_classes: bool = False, source: str | None = None) -> str:
    """Load a whole segmentor (backbone, pyramid, decode and auxiliary heads) from our checkpoint or an official
    EVA-02 one (a file, or the object read from one). With `strict`, any model weight left unloaded or checkpoint
    tensor unused is an error naming them (RoPE buffers are derived and never count). Returns a summary for the
    log: one paragraph, then one line per re-laid class layer.

    adapt_classes (fine-tuning on other classes): a class-specific head layer (CLASS_LAYERS) whose class count
    differs from the model's, or whose class names do (`classes`: the model's; the checkpoint's from its meta,
    `checkpoint_classes`), is re-laid by eva02.common.class_rows.relay_class_layers: the rows of classes found by
    name are kept, the others keep the model's current (initial) values. Otherwise such a mismatch is an error.
    source: the name errors give a checkpoint passed as an object (default "<state dict>")."""
    obj = path if isinstance(path, dict) else read_state_dict(path, weights_only)
    source = source or ("<state dict>" if isinstance(path, dict) else os.fspath(path))
    sd, _ = read_weights(obj)
    sd = rename_official_pyramid(sd, "backbone.")
    backbone_sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    if not backbone_sd:
        raise ValueError(f"{source}: not a segmentor checkpoint (no 'backbone.' weights; keys {sorted(sd)[:4]} ...); "
                         "a backbone-only one (MIM, p14to16) initializes training as model.backbone.pretrained=FILE")
    report = load_checkpoint(model.backbone, backbone_sd, source=source)
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    own = model.state_dict()
    relaid = relay_class_layers(rest, own, _class_layout, checkpoint_classes(obj), classes) if adapt_classes else []
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
              for k, v in rest.items() if k in own and own[k].shape != v.shape]
    if shapes:
        counts = sorted({(layout.num_classes(v.shape[0]), layout.num_classes(own[k].shape[0]))
                         for k, v in rest.items() for pattern, layout in CLASS_LAYERS
                         if k in own and own[k].shape != v.shape and pattern.search(k)})
        hint = (f" The checkpoint's heads are for {counts[0][0]} classes, the config's for {counts[0][1]}: a model "
                "trained on own data needs the same --data DIR (or the config its run dumped in its work dir); to "
                "fine-tune on other classes, tools/train_seg.py --weights re-lays the class layers.") if counts else ""
        raise ValueError(f"{source}: shape mismatch (another class count or head width?): "
                         f"{'; '.join(shapes[:4])}.{hint}")
    result = model.load_state_dict(rest, strict=False)
    missing = ["backbone." + k for k in report.missing]
    missing += [k for k in result.missing_keys if not k.startswith("backbone.")]
    unused = ["backbone." + k for k in report.unexpected + report.skipped] + list(result.unexpected_keys)
    check_complete(source, [], [k for k in unused if is_adapter_key(k)], "")  # unmerged LoRA: refused
    if strict:
        check_complete(source, missing, unused, "pass --allow-partial")
    summary = (f"loaded {source}: backbone {len(report.loaded)} tensors ({'; '.join(report.converted) or 'as is'}), "
               f"heads {len(rest) - len(result.unexpected_keys)} tensors, {len(report.derived)} RoPE buffers "
               f"ignored (recomputed){f'; left unloaded: {missing}; unused: {unused}' if missing or unused else ''}")
    return "\n".join([summary, *relaid])
