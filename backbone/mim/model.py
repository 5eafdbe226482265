"""The MIM student (TrV + final norm + head to the teacher width), its loss, and official checkpoints in and out."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from eva02.common.files import save_atomic

from ..checkpoint import (LoadReport, load_checkpoint, official_p14_to_p16, read_state_dict, read_weights,
                          resize_pos_embed, to_official)
from ..rope import rope_table
from ..trv import TrV, create_trv
from ..tuning import is_adapter_key, merge_lora

__all__ = ["MIMStudent", "create_mim_student", "mim_loss", "export_official"]


class MIMStudent(nn.Module):
    """TrV encoder + final LayerNorm + linear head to the teacher width.

    Attribute names give the official layout on export: `encoder.*` becomes the top-level backbone keys,
    `norm.*` and `lm_head.*` stay (see official_state_dict). The `encoder.` prefix is one that
    load_checkpoint strips, so a training checkpoint's student also loads straight into a TrV.
    """

    def __init__(self, encoder: TrV, target_dim: int, patch_grad_scale: float = 0.1):
        """patch_grad_scale: the gradient reaching the patch embedding is multiplied by it (the official
        `--stop_grad_conv1` of every released run: x.detach() * 0.9 + x * 0.1); 1.0 leaves it alone."""
        super().__init__()
        if encoder.cls_token is None or encoder.mask_token is None:
            raise ValueError("the MIM student needs a TrV built with with_cls_token=True and with_mask_token=True")
        self.encoder = encoder
        self.norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
        self.lm_head = nn.Linear(encoder.embed_dim, target_dim)
        # Official init: the xavier-normal pass covers lm_head too (it overrides the earlier trunc-normal).
        nn.init.xavier_normal_(self.lm_head.weight)
        nn.init.zeros_(self.lm_head.bias)
        if patch_grad_scale != 1.0:  # on the conv's output, as official; a module hook survives FSDP's sharding
            encoder.patch_embed.proj.register_forward_hook(_ScaledGradient(patch_grad_scale))

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), mask (B, N) bool -> predictions (M, D) for the M masked patches, batch-major."""
        tokens = self.encoder.forward_tokens(images, mask)[:, 1:]  # drop the cls token
        return self.lm_head(self.norm(tokens[mask]))

    def load_official(self, checkpoint: str | os.PathLike | dict, weights_only: bool = True) -> LoadReport:
        """Load an official MIM checkpoint (any size's layout, `module`-wrapped or not; or our own export) into the
        encoder, `norm` and `lm_head`; a weight left unloaded or a backbone key that fits nowhere is an error."""
        flat, source = read_weights(checkpoint, weights_only)
        report = load_checkpoint(self.encoder, flat, source=source)
        missing = [k for k in report.missing if not is_adapter_key(k)]  # LoRA adapters start fresh
        for name in ("norm", "lm_head"):
            module = getattr(self, name)
            part = {k: flat[f"{name}.{k}"] for k in module.state_dict() if f"{name}.{k}" in flat}
            missing += [f"{name}.{k}" for k in module.state_dict() if k not in part]
            if len(part) == len(module.state_dict()):
                module.load_state_dict(part)
        if missing or report.unexpected:
            raise ValueError(f"{source}: not this student's checkpoint: missing {missing[:6]}, unexpected "
                             f"{report.unexpected[:6]}")
        return report

    def official_state_dict(self, rope_grid: int | None = None) -> dict[str, torch.Tensor]:
        """Weights under the official MIM names and layout of the student's size (Ti/S: fused qkv and packed
        w12; B/L: separate q/k/v and w1 / w2), with `norm`, `lm_head` and the RoPE buffers the official model
        registers (`rope.freqs_cos/sin` and again under every block's `attn.rope.`) for a rope_grid x rope_grid
        input (default: the student's own grid), without the `module` wrapper."""
        out = to_official(self.encoder)
        for name in ("norm", "lm_head"):
            out.update({f"{name}.{k}": v.clone() for k, v in getattr(self, name).state_dict().items()})
        grid = rope_grid or self.encoder.pos_grid
        # Official pre-training RoPE: positions 0 .. grid-1 (pt_seq_len = ft_seq_len = the input grid).
        table = rope_table(self.encoder.embed_dim // self.encoder.cfg.num_heads, (grid, grid), 1.0)
        for prefix in ["rope."] + [f"blocks.{i}.attn.rope." for i in range(self.encoder.cfg.depth)]:
            out[prefix + "freqs_cos"], out[prefix + "freqs_sin"] = table.cos.clone(), table.sin.clone()
        return out


class _ScaledGradient:
    """Forward hook: the module's output unchanged, its gradient multiplied by `scale` on the way back (the
    official x.detach() * (1 - scale) + x * scale, without its rounding)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return _ScaleGrad.apply(output, self.scale)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def create_mim_student(name: str, target_dim: int, patch_grad_scale: float = 0.1, **overrides) -> MIMStudent:
    """A preset TrV at patch 14 with cls and mask tokens, wrapped as a MIM student; overrides go to create_trv.
    RoPE positions are those of the input grid (official pre-training: 0 .. grid - 1 at any input size)."""
    kwargs = {"patch_size": 14, "img_size": 224, **overrides}
    kwargs.setdefault("rope_pt_grid", kwargs["img_size"] // kwargs["patch_size"])
    encoder = create_trv(name, **kwargs, with_cls_token=True, with_mask_token=True)
    return MIMStudent(encoder, target_dim, patch_grad_scale)


def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity on masked positions only.

    pred (M, D): the student's predictions at the masked positions; target (B, N, D) teacher features;
    mask (B, N) bool with M True entries. Unmasked targets never enter the loss.
    """
    return -F.cosine_similarity(pred.float(), target[mask].float(), dim=-1).mean()



def read_training_checkpoint(path: str) -> dict:
    """A pretrain_mim training checkpoint (student, config, optimizer, ...); KeyError naming the file otherwise."""
    ckpt = read_state_dict(path)
    for key in ("student", "config"):
        if key not in ckpt:
            raise KeyError(f"{path}: not a pretrain_mim checkpoint (no '{key}'; keys {sorted(ckpt)[:8]}); give "
                           "tools/pretrain_mim.py an --output folder of its own runs")
    return ckpt


def _student_from_training_checkpoint(path: str) -> MIMStudent:
    ckpt = read_training_checkpoint(path)
    cfg = ckpt["config"]
    student = create_mim_student(cfg["model"], ckpt["student"]["lm_head.weight"].shape[0],
                                 img_size=cfg["input_size"], **cfg.get("arch", {}))
    student.load_state_dict(merge_lora(ckpt["student"]))  # a LoRA run's adapters folded into plain weights
    return student


def export_official(student: MIMStudent | str | os.PathLike, output_dir: str | os.PathLike,
                    stem: str) -> tuple[str, str]:
    """Writes `{stem}_p14.pt` ({"module": official weights} as the released MIM files, position embedding on the
    16x16 grid) and `{stem}_p14to16.pt` (patch kernel 16x16, position embedding 14x14 + cls, top-level keys)
    for detection / segmentation.

    student: a MIMStudent or a pretrain_mim training checkpoint path. Returns the two paths.
    """
    if not isinstance(student, MIMStudent):
        student = _student_from_training_checkpoint(os.fspath(student))
    # The released files hold the 16x16 (224 / 14) grid whatever size a run trained at.
    official = student.official_state_dict(rope_grid=224 // 14)
    official["pos_embed"] = resize_pos_embed(official["pos_embed"], 224 // 14)
    p14 = os.path.join(output_dir, f"{stem}_p14.pt")
    p16 = os.path.join(output_dir, f"{stem}_p14to16.pt")
    save_atomic({"module": official}, p14)
    save_atomic(official_p14_to_p16(official, img_size=224), p16)
    return p14, p16
