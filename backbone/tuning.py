"""What of a TrV trains: freezing its embeddings and first blocks (or all of it), and LoRA adapters on its
attention and MLP projections, merged into plain weights afterwards.

Both are arguments of the TrV (`frozen_stages=`, `lora=`; the name and the counting are mmdet's / mmseg's), so
every framework's config sets them where it sets the backbone: detection `model.backbone.net.frozen_stages`,
segmentation `model.backbone.frozen_stages`.

    frozen_stages=-1      everything trains (default)
    frozen_stages=0       the patch embedding, position embedding and tokens are frozen
    frozen_stages=N       ... and blocks 0..N-1
    frozen_stages="all"   the whole encoder (the same as its depth; the detection pyramid / segmentation neck and
                          the heads train)
    lora=dict(rank=8, alpha=16, targets=("qkv", "proj", "w1", "w2", "w3"))
                          every targeted nn.Linear of every block becomes a LoRALinear, and only the adapters
                          train in the encoder (frozen_stages is then ignored)

Frozen parameters get requires_grad=False (the layer-decay optimizer groups leave them out: eva02.backbone
.layer_decay), and frozen blocks stay in eval mode while the model trains (no drop path), as mmseg's
`frozen_stages`. A LoRALinear keeps nn.Linear's `weight` / `bias` names, so a plain checkpoint loads into an
adapter model as it is; the adapters start at zero update (B = 0) and are the only weights a starting
checkpoint may lack (`is_adapter_key`). `merge_lora(state_dict)` folds them into plain weights, W + s B A, which
every tool loads (tools/convert_checkpoint.py --to merged); loading an unmerged checkpoint into a model without
adapters is refused (eva02.backbone.checkpoint.check_complete).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LORA_TARGETS", "LoRALinear", "add_lora", "freeze_trv", "frozen_modules", "is_adapter_key",
           "merge_lora"]

LORA_TARGETS = ("qkv", "proj", "w1", "w2", "w3")  # attention's fused q/k/v and output, SwiGLU's three
_ADAPTER = (".lora_a", ".lora_b", ".lora_scale")


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update: y = x W^T + b + s (x A^T) B^T with A (rank, in), B (out, rank) and
    s = alpha / rank. A starts kaiming-uniform, B at zero, so the layer starts as the plain one."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rank: int = 8, alpha: float = 16.0):
        super().__init__(in_features, out_features, bias)
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear's own weights
        self.register_buffer("lora_scale", torch.tensor(alpha / rank))

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's part of the output: s (x A^T) B^T."""
        return F.linear(F.linear(x, self.lora_a), self.lora_b) * self.lora_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.lora_delta(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_rank={self.lora_a.shape[0]}, lora_scale={float(self.lora_scale):g}"


def add_lora(trv: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Iterable[str] = LORA_TARGETS) -> int:
    """Replace each targeted nn.Linear of every block (attn.qkv / attn.proj, mlp.w1 / w2 / w3) by a LoRALinear
    holding the same weights; returns how many. Only the adapters of the encoder train afterwards."""
    targets = tuple(targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are no TrV projections; choose from {LORA_TARGETS}")
    count = 0
    for block in trv.blocks:
        for parent in (block.attn, block.mlp):
            for name in targets:
                old = getattr(parent, name, None)
                if not isinstance(old, nn.Linear) or isinstance(old, LoRALinear):
                    continue
                new = LoRALinear(old.in_features, old.out_features, old.bias is not None, rank, alpha)
                new.to(old.weight.device)
                with torch.no_grad():
                    new.weight.copy_(old.weight)
                    if old.bias is not None:
                        new.bias.copy_(old.bias)
                setattr(parent, name, new)
                count += 1
    for name, param in trv.named_parameters():
        param.requires_grad_(name.endswith((".lora_a", ".lora_b")))
    return count


def frozen_modules(trv: nn.Module, frozen_stages: int | str) -> list[nn.Module]:
    """The blocks `frozen_stages` names (module doc), which stay in eval mode while training."""
    if frozen_stages == "all":
        return list(trv.blocks)
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or \
            not -1 <= frozen_stages <= len(trv.blocks):
        raise ValueError(f"frozen_stages={frozen_stages!r}: use -1 (nothing), 0 (the embeddings), N (and the first "
                         f"N blocks, N <= {len(trv.blocks)}) or 'all'")
    return list(trv.blocks[:max(frozen_stages, 0)])


def freeze_trv(trv: nn.Module, frozen_stages: int | str) -> None:
    """requires_grad=False for what `frozen_stages` names (module doc): the embeddings and tokens, then blocks."""
    blocks = frozen_modules(trv, frozen_stages)
    if frozen_stages == -1:
        return
    embeddings = [trv.patch_embed, *(p for p in (trv.pos_embed, trv.cls_token, trv.mask_token) if p is not None)]
    for part in (*embeddings, *blocks):
        for param in part.parameters() if isinstance(part, nn.Module) else (part,):
            param.requires_grad_(False)


def is_adapter_key(name: str) -> bool:
    """A LoRA adapter's state-dict key: absent from a starting checkpoint by design."""
    return name.endswith(_ADAPTER)


@torch.no_grad()
def merge_lora(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain state dict: every adapter folded into its weight, W + s B A (in float32, back to W's dtype), and
    the adapter keys dropped. Any key prefix works (backbone.net., backbone., module.)."""
    merged = {k: v for k, v in state_dict.items() if not is_adapter_key(k)}
    for key in state_dict:
        if not key.endswith(".lora_a"):
            continue
        prefix = key[: -len(".lora_a")]
        weight = state_dict[prefix + ".weight"]
        a, b = state_dict[key].float(), state_dict[prefix + ".lora_b"].float()
        scale = state_dict[prefix + ".lora_scale"].float()
        merged[prefix + ".weight"] = (weight.float() + scale * (b @ a)).to(weight.dtype)
    return merged
