"""Frozen MIM teachers and the targets each computes (see FrozenTeacher)."""
from __future__ import annotations

import logging
import math
import os
import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eva02.common.precision import autocast

from ..checkpoint import LoadReport, infer_trv_config, load_checkpoint, read_weights, to_trv_names
from ..trv import TrV
from .recipe import CLIP_MEAN, CLIP_STD

__all__ = ["FrozenTeacher", "TrVTeacher", "TimmTeacher", "build_teacher", "autocast"]

log = logging.getLogger("eva02.mim")


class FrozenTeacher(nn.Module):
    """A frozen encoder giving the MIM targets, its patch features; subclasses implement patch_features.

    Targets are what the teacher outputs, not re-normalized, as the official code uses them (the cosine loss is
    blind to their length). What each teacher computes:
      - TrVTeacher (an EVA-02 / EVA02-CLIP-style tower from a checkpoint file): head(norm(tokens))[:, 1:], with
        `norm` and `head` (the CLIP projection) when the file holds them.
      - TimmTeacher (a timm model and a local weights file): a CLIP tower (name with "clip", e.g.
        eva_giant_patch14_clip_224 with the official EVA-CLIP-g file, the paper's teacher) gives
        head(norm(tokens))[:, 1:], the official EVA-CLIP target (`visual(x)` with its projection); any other model
        its `forward_features` without prefix tokens (a CNN: its last map).

    Inputs arrive normalized with the CLIP mean / std (the student's); a teacher trained with other statistics
    re-normalizes them to its own. When the teacher's patch grid differs from the student's, its feature map is
    resized bilinearly to the student's grid.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        shift = torch.tensor(CLIP_MEAN) - torch.tensor(mean)
        scale = torch.tensor(CLIP_STD) / torch.tensor(std)
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", (shift / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> "FrozenTeacher":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # always in eval mode (no drop path, frozen norms)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in the teacher's own normalization -> (B, h * w, D) patch features, square grid."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid: tuple[int, int],
                amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """images (B, 3, H, W), CLIP-normalized -> targets (B, grid_h * grid_w, D), float32."""
        x = images * self.in_scale + self.in_shift
        with autocast(images.device, amp_dtype):
            feats = self.patch_features(x)
        feats = feats.float()
        B, N, D = feats.shape
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"teacher gave {N} patch tokens, not a square grid")
        if (side, side) != tuple(grid):
            fmap = feats.transpose(1, 2).reshape(B, D, side, side)
            fmap = F.interpolate(fmap, size=tuple(grid), mode="bilinear", align_corners=False)
            feats = fmap.flatten(2).transpose(1, 2)
        return feats


class TrVTeacher(FrozenTeacher):
    """A TrV / EVA-CLIP-style vision tower: blocks -> final `norm` -> `head` projection (when the checkpoint has
    them, as the EVA-CLIP visual tower the paper uses), cls token dropped."""

    def __init__(self, encoder: TrV, norm: nn.Module, head: nn.Module, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__(mean, std)
        self.encoder, self.norm, self.head = encoder, norm, head
        self.freeze()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, num_heads: int | None = None,
                        weights_only: bool = True) -> "TrVTeacher":
        """Loads any layout load_checkpoint reads, EVA-CLIP files (tower under `visual.`) included."""
        flat, source = read_weights(path, weights_only)
        sd = to_trv_names(flat, LoadReport())
        if "blocks.0.mlp.fc1.weight" in sd:
            raise KeyError(f"{source}: an EVA-CLIP tower with a GELU MLP (fc1 / fc2), e.g. EVA-CLIP-g, is not a TrV: "
                           "use it through timm, --teacher timm:eva_giant_patch14_clip_224 --teacher-weights FILE")
        cfg, patch, img_size = infer_trv_config(sd, num_heads, source)
        encoder = TrV(cfg, patch_size=patch, img_size=img_size, with_cls_token="cls_token" in sd)
        report = load_checkpoint(encoder, sd, source=source)
        if report.missing or report.unexpected:
            raise ValueError(f"teacher checkpoint {source} does not fit a TrV: missing {report.missing[:6]}, "
                             f"unexpected {report.unexpected[:6]}")
        norm, head = nn.Identity(), nn.Identity()
        if "norm.weight" in sd:
            norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
            norm.load_state_dict({k: sd[f"norm.{k}"] for k in ("weight", "bias")})
        if "head.weight" in sd:  # the CLIP projection of an EVA-CLIP visual tower
            out_dim, in_dim = sd["head.weight"].shape
            head = nn.Linear(in_dim, out_dim, bias="head.bias" in sd)
            head.load_state_dict({k: sd[f"head.{k}"] for k in head.state_dict()})
        log.info("teacher %s: TrV width %d depth %d patch %d, norm=%s head=%s", source, encoder.embed_dim,
                 encoder.cfg.depth, encoder.patch_size, "norm.weight" in sd, "head.weight" in sd)
        return cls(encoder, norm, head)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_tokens(x)
        prefix = 1 if self.encoder.cls_token is not None else 0
        return self.head(self.norm(tokens[:, prefix:]))


class TimmTeacher(FrozenTeacher):
    """A timm model built with pretrained=False (no hub download) and loaded from a local weights file.

    The file goes through the model family's own timm converter when it has one (`checkpoint_filter_fn`; e.g.
    an official EVA-CLIP file with its `visual.` tower loads into `eva_giant_patch14_clip_224`, the paper's
    teacher). A CLIP tower (`project=None` and "clip" in the name, or `project=True`) keeps its head, the CLIP
    projection, which must then be in the file: targets are head(norm(tokens))[:, 1:] as the official EVA-02
    pre-training uses them. Any other model's classifier is never used and need not be in the file; its targets are
    `forward_features` without the prefix (cls / register) tokens, or a CNN's last map. weights None: timm's random
    initialization, the architecture alone (memory planning).
    """

    def __init__(self, name: str, weights: str | os.PathLike | None, weights_only: bool = True,
                 project: bool | None = None, **create_kwargs):
        import timm

        model = timm.create_model(name, pretrained=False, **create_kwargs)
        use_head = "clip" in name if project is None else project
        if weights is not None:
            _load_timm_weights(model, name, weights, weights_only, use_head)
        cfg = model.pretrained_cfg
        super().__init__(cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD))
        self.model = model
        self.project = model.get_classifier() if use_head else nn.Identity()
        self.freeze()

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.ndim == 4:  # CNN: (B, C, h, w)
            return feats.flatten(2).transpose(1, 2)
        return self.project(feats[:, getattr(self.model, "num_prefix_tokens", 0):])


def _load_timm_weights(model: nn.Module, name: str, weights: str | os.PathLike, weights_only: bool,
                       use_head: bool) -> None:
    sd, source = read_weights(weights, weights_only)
    family_converter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if family_converter is not None:
        sd = family_converter(sd, model)
    classifier = model.pretrained_cfg.get("classifier") or "head"
    heads = () if use_head else tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    try:
        result = model.load_state_dict({k: v for k, v in sd.items() if not k.startswith(heads)}, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{source} does not fit timm model {name!r}: {e}") from e
    missing = [k for k in result.missing_keys if not heads or not k.startswith(heads)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{source} does not fit timm model {name!r}: missing {missing[:6]}, "
                         f"unexpected {result.unexpected_keys[:6]}")


def build_teacher(spec: str, weights: str | None = None, num_heads: int | None = None,
                  weights_only: bool = True, img_size: int | None = None) -> FrozenTeacher:
    """A checkpoint path -> TrVTeacher; otherwise a timm model name (optionally `timm:NAME`) whose weights come
    from the local file `weights` (never downloaded), built for `img_size` inputs where the model takes a size
    (timm's ViTs fix theirs at construction)."""
    if os.path.isfile(spec):
        return TrVTeacher.from_checkpoint(spec, num_heads, weights_only)
    name = spec[len("timm:"):] if spec.startswith("timm:") else spec
    if weights is None:
        raise FileNotFoundError(f"teacher {spec!r} is not a checkpoint file; as a timm model name it needs a local "
                                "weights file (--teacher-weights), nothing is downloaded")
    if img_size is not None:
        try:
            return TimmTeacher(name, weights, weights_only, img_size=img_size)
        except TypeError as e:  # a model without an input size (CNNs) runs at any size; other errors propagate
            if "img_size" not in str(e):
                raise
    return TimmTeacher(name, weights, weights_only)
