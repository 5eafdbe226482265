"""2D rotary position embedding of EVA-02, computed for the actual grid.

Per head, the first half of head_dim encodes the row coordinate and the second half the column.
Each half of width d = head_dim / 2 uses frequencies 1 / 10000 ** (2i / d), i < d / 2, each repeated
twice (interleaved pairs), and rotates each pair (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
Positions are scaled to the pre-training grid: cell i sits at i * scale (scale = 16 / side), so a
fine-tuning grid of any size spans the 16 positions RoPE was pre-trained on.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RopeTable", "rope_table", "apply_rope", "rotate_half"]


class RopeTable(NamedTuple):
    cos: torch.Tensor  # (N, head_dim), rows of the grid in raster order
    sin: torch.Tensor
    rot: torch.Tensor  # (N, head_dim / 2) complex: e^(i angle) of each interleaved pair


def axis_angles(head_dim: int, length: int, scale: float, device=None) -> torch.Tensor:
    """Angles (length, head_dim / 2) for one axis; pairs share an angle (interleaved)."""
    d = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32)[: d // 2] / d))
    t = torch.arange(length, device=device, dtype=torch.float32) * scale
    return torch.outer(t, freqs.repeat_interleave(2))  # the same products; a 1-D repeat exports to ONNX cleanly


def rope_table(head_dim: int, hw: tuple[int, int], scale: float, device=None) -> RopeTable:
    """cos / sin tables (H * W, head_dim) for an H x W grid whose cell (i, j) sits at (i, j) * scale."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    H, W = hw
    rows = axis_angles(head_dim, H, scale, device)[:, None, :].expand(H, W, -1)
    cols = axis_angles(head_dim, W, scale, device)[None, :, :].expand(H, W, -1)
    angles = torch.cat((rows, cols), dim=2).reshape(H * W, head_dim)
    return RopeTable(angles.cos(), angles.sin(), torch.polar(torch.ones_like(angles[:, ::2]), angles[:, ::2]))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (x1, x2) -> (-x2, x1)."""
    # A gather and a sign, no stack / reshape: the ONNX exporter mis-infers the rank of those here.
    index = torch.arange(x.shape[-1], device=x.device)
    odd = index % 2
    return x.index_select(x.dim() - 1, index + 1 - 2 * odd) * (2 * odd - 1).to(x.dtype)


def apply_rope(x: torch.Tensor, table: RopeTable, num_prefix: int = 0) -> torch.Tensor:
    """Rotate x (..., N, head_dim) in fp32; the first num_prefix tokens (cls) are left as they are.

    Eagerly, each interleaved pair (x1, x2) is the complex number x1 + i x2 and the rotation one complex multiply
    by e^(i angle): about 10x less memory traffic than the cos / sin form on CPU. Tracing and ONNX / TensorRT
    export have no complex tensors, and torch.compile generates no code for them (it fuses the real form instead),
    so there the same rotation runs in real arithmetic."""
    if num_prefix:
        return torch.cat((x[..., :num_prefix, :], apply_rope(x[..., num_prefix:, :], table)), dim=-2)
    xf = x.float()
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or \
            torch.compiler.is_compiling():
        return xf * table.cos + rotate_half(xf) * table.sin
    pairs = xf.unflatten(-1, (-1, 2))
    if pairs.storage_offset() % 2 or any(st % 2 for st in pairs.stride()[:-2]) or pairs.stride(-1) != 1:
        pairs = pairs.contiguous()  # view_as_complex needs pair-aligned strides
    return torch.view_as_real(torch.view_as_complex(pairs) * table.rot).flatten(-2)
