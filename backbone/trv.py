"""TrV, the EVA-02 vision transformer: one implementation for detection, segmentation and MIM pre-training.

Architecture (EVA-02 paper, Table 5 and Appendix A.1):
    patch embed (conv p x p) -> + absolute position embedding (resized bicubically to the grid)
    -> blocks: x + drop_path(attn(norm1 x)); x + drop_path(swiglu(norm2 x))
    attention: q/k/v projections, q and v biases (no k bias), 2D RoPE on q and k, scale head_dim ** -0.5
    SwiGLU: w3(ffn_ln(silu(w1 x) * w2 x)); ffn_ln ("sub-LN") for B/L only.

Dense prediction (ViTDet style): blocks listed in `global_blocks` attend over the whole grid, the others
inside `window_size` windows (zero-padded bottom/right, no mask, as ViTDet). RoPE tables are computed for
the actual grid on every forward, never stored, so any H, W divisible by the patch size works.

With `with_cls_token=True` (segmentation, pre-training) a cls token, with its own position-embedding slot and
no RoPE, goes first through every block (global attention only), as in the official seg and MIM models;
forward() still returns maps of the patch tokens. Detection (ViTDet) has no cls token.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .rope import RopeTable, apply_rope, rope_table
from .tuning import LoRALinear, add_lora, freeze_trv, frozen_modules

__all__ = ["TrV", "TrVConfig", "PRESETS", "create_trv", "preset_config", "ATTN_IMPLS", "xformers_available"]

ATTN_IMPLS = ("sdpa", "math", "xformers")


@dataclass(frozen=True)
class TrVConfig:
    """Architecture of one EVA-02 variant (paper Table 5)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int  # SwiGLU hidden width: int(embed_dim * 4 * 2 / 3)
    sub_ln: bool  # LayerNorm inside the FFN (B/L); Ti/S are plain pre-LN

    @property
    def packed(self) -> bool:
        """The official layout of this variant (docs/reference.md §7): Ti/S (no sub-LN) hold q/k/v as one
        `attn.qkv` and w1/w2 as one xformers `mlp.w12` and are initialized as such; B/L keep them separate."""
        return not self.sub_ln


PRESETS = {
    "eva02_Ti": TrVConfig(embed_dim=192, depth=12, num_heads=3, mlp_hidden=512, sub_ln=False),
    "eva02_S": TrVConfig(embed_dim=384, depth=12, num_heads=6, mlp_hidden=1024, sub_ln=False),
    "eva02_B": TrVConfig(embed_dim=768, depth=12, num_heads=12, mlp_hidden=2048, sub_ln=True),
    "eva02_L": TrVConfig(embed_dim=1024, depth=24, num_heads=16, mlp_hidden=2730, sub_ln=True),
}


def xformers_available() -> bool:
    """True where xformers imports and its memory-efficient kernel runs (it needs a GPU)."""
    try:
        from xformers.ops import memory_efficient_attention

        q = torch.zeros(1, 1, 1, 8, device="cuda")
        memory_efficient_attention(q, q, q)
        return True
    except Exception:
        return False


def _xformers_attention(q, k, v):
    try:
        from xformers.ops import memory_efficient_attention
    except Exception as e:  # ImportError, or an extension built for another torch
        raise RuntimeError(f"attn_impl='xformers' but xformers does not load here ({e}); use 'sdpa'") from e
    # xformers takes (B, N, heads, head_dim)
    out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, heads, N, d) inputs with the chosen kernel."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if impl == "math":
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return attn.softmax(dim=-1) @ v
    if impl == "xformers":
        return _xformers_attention(q, k, v)
    raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")


class Attention(nn.Module):
    """Multi-head self-attention with q/v biases and RoPE on q and k.

    q, k and v share one fused (3C, C) projection (one matmul instead of three); official checkpoints
    hold them as q_proj / k_proj / v_proj and are fused on load (see checkpoint.py).
    """

    def __init__(self, dim: int, num_heads: int, attn_impl: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.attn_impl = attn_impl

    def forward(self, x: torch.Tensor, rope: RopeTable | None, num_prefix: int = 0) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C). RoPE rotates all but the first `num_prefix` tokens (the cls token)."""
        B, N, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        if isinstance(self.qkv, LoRALinear):  # its forward would add no q / v bias: the adapter's part alone
            qkv = qkv + self.qkv.lora_delta(x)
        qkv = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if rope is not None:
            q = apply_rope(q, rope, num_prefix).type_as(v)
            k = apply_rope(k, rope, num_prefix).type_as(v)
        x = attention(q, k, v, self.attn_impl)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SwiGLU(nn.Module):
    """w3(ffn_ln(silu(w1 x) * w2 x)); ffn_ln is the sub-LN of EVA-02 B/L, Identity for Ti/S."""

    def __init__(self, dim: int, hidden: int, sub_ln: bool):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=1e-6) if sub_ln else nn.Identity()
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def exporting() -> bool:
    """Whether the model is being traced (torch.jit.trace, ONNX export): sizes are then graph values, so the
    code takes the branch that holds for every size instead of testing this size."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws * ws, C), zero-padding H and W up to multiples of ws."""
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % ws, (-W) % ws
    if exporting() or pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C), (Hp, Wp)


def window_unpartition(x: torch.Tensor, ws: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of window_partition: (B * nW, ws * ws, C) -> (B, H, W, C), padding removed."""
    (Hp, Wp), (H, W) = padded_hw, hw
    B = x.shape[0] // (Hp * Wp // ws // ws)
    x = x.view(B, Hp // ws, Wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :].contiguous() if exporting() or (Hp, Wp) != (H, W) else x


class Block(nn.Module):
    """Pre-norm transformer block; window attention when window_size > 0, else global."""

    def __init__(self, cfg: TrVConfig, drop_path: float, window_size: int, attn_impl: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, attn_impl)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = SwiGLU(cfg.embed_dim, cfg.mlp_hidden, cfg.sub_ln)
        self.window_size = window_size

    def forward(self, x: torch.Tensor, rope: RopeTable | None, num_prefix: int = 0) -> torch.Tensor:
        """x: (B, H, W, C) spatial tokens, or (B, N, C) token sequences (global attention only)."""
        y = self.norm1(x)
        if x.ndim == 4:
            B, H, W, C = x.shape
            if self.window_size > 0:
                y, padded = window_partition(y, self.window_size)
                y = window_unpartition(self.attn(y, rope), self.window_size, padded, (H, W))
            else:
                y = self.attn(y.reshape(B, H * W, C), rope).view(B, H, W, C)
        else:
            y = self.attn(y, rope, num_prefix)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def call_block(blk: Block, x: torch.Tensor, rope: RopeTable | None, num_prefix: int) -> torch.Tensor:
    return blk(x, rope, num_prefix)


@functools.cache
def compiled_block_call() -> Callable[..., torch.Tensor]:
    """call_block under torch.compile, made once per process. Compiling a function of the block rather than
    each module (nn.Module.compile) leaves the modules plain: deep copies (EMA), pickles and state dicts are
    unchanged, and every block of one kind (windowed, global) reuses the same compiled graph. Shapes are static:
    each input size gets kernels of its own (a training run meets one or two); kernels made for any size were
    slower (bench/compile.py, docs/benchmarks.md)."""
    return torch.compile(call_block, dynamic=False)


class TrV(nn.Module):
    """EVA-02 vision transformer.

    Args:
        cfg: the variant (see PRESETS).
        patch_size: 14 (pre-training) or 16 (detection / segmentation).
        img_size: pre-training image size; sets the absolute position-embedding grid (img_size // patch_size).
        window_size: window side in tokens for non-global blocks; 0 makes every block global.
        global_blocks: indexes of blocks with global attention (the others use windows if window_size > 0).
        rope_grid: side G of the square the global RoPE table is laid on (cell i at position i * 16 / G);
            None uses the longest side of the actual grid.
        attn_impl: "sdpa" (default), "math" or "xformers".
        drop_path_rate: stochastic depth, increasing linearly over the blocks to this value.
        use_checkpoint: activation checkpointing of every block while training.
        compile_blocks: run every block through torch.compile (regional compilation: blocks of one kind share
            one compiled graph, so compiling costs about one block, not the whole depth). Off while tracing for
            ONNX; the first call at each new input size compiles again.
        out_indices: blocks whose outputs forward() returns, as a list of maps; None returns the last block's.
        with_cls_token: a cls token runs through every block beside the patch tokens (official segmentation
            and pre-training); needs global attention in every block.
        with_mask_token: a learnable token replacing masked patches in pre-training (see forward_tokens).
        rope_pt_grid: the pre-training grid that RoPE positions are scaled to (224 / 14 = 16).
        frozen_stages: -1 (nothing), 0 (the embeddings), N (and the first N blocks) or "all": not trained
            (eva02.backbone.tuning).
        lora: dict(rank, alpha, targets) for LoRA adapters on the blocks' projections; only they train in the
            encoder (eva02.backbone.tuning).
    """

    def __init__(
        self,
        cfg: TrVConfig,
        patch_size: int = 14,
        img_size: int = 224,
        window_size: int = 0,
        global_blocks: Sequence[int] = (),
        rope_grid: int | None = None,
        attn_impl: str = "sdpa",
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        compile_blocks: bool = False,
        out_indices: Sequence[int] | None = None,
        with_cls_token: bool = False,
        with_mask_token: bool = False,
        rope_pt_grid: int = 16,
        frozen_stages: int | str = -1,
        lora: dict | None = None,
    ):
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        bad = [i for i in list(global_blocks) + list(out_indices or []) if not 0 <= i < cfg.depth]
        if bad:
            raise ValueError(f"block indexes {bad} out of range for depth {cfg.depth}")
        if with_cls_token and window_size > 0 and len(set(global_blocks)) < cfg.depth:
            raise ValueError("with_cls_token=True needs global attention in every block (window_size=0)")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_size = patch_size
        self.pos_grid = img_size // patch_size
        self.window_size = window_size
        self.global_blocks = tuple(sorted(global_blocks))
        self.rope_grid = rope_grid
        self.rope_pt_grid = rope_pt_grid
        self.use_checkpoint = use_checkpoint
        self.compile_blocks = compile_blocks
        self.out_indices = tuple(out_indices) if out_indices is not None else None

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, cfg.embed_dim, patch_size, patch_size)
        # One slot for the cls token first, as in every official checkpoint; dense prediction drops it.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, cfg.embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if with_cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if with_mask_token else None

        dpr = torch.linspace(0, drop_path_rate, cfg.depth, device="cpu").tolist()  # also under a meta device
        self.blocks = nn.ModuleList(
            Block(cfg, dpr[i], 0 if i in self.global_blocks else window_size, attn_impl) for i in range(cfg.depth)
        )
        self.init_weights()
        self.lora = dict(lora) if lora else None
        self.frozen = -1 if self.lora else frozen_stages  # LoRA freezes the whole base; its blocks keep training
        if self.lora:
            add_lora(self, **self.lora)
        freeze_trv(self, self.frozen)

    def train(self, mode: bool = True) -> "TrV":
        """nn.Module.train, with frozen blocks kept in eval mode (no drop path)."""
        super().train(mode)
        for block in frozen_modules(self, self.frozen):
            block.eval()
        return self

    # ---------------------------------------------------------------- initialization
    @torch.no_grad()
    def init_weights(self) -> None:
        """Official EVA-02 pre-training initialization (docs/reference.md §4, §7): xavier normal for every Linear
        weight, over the official layout's matrices (Ti/S: the fused (3C, C) qkv and the packed (2H, C) w1/w2;
        B/L: q, k, v, w1, w2 each on its own), zero biases; xavier uniform for the patch kernel viewed 2-D, its
        bias left at PyTorch's default; normal(0, 0.02) truncated at +-0.02 for position embedding and tokens;
        with sub-LN, w1/w2/w3, proj and the v projection scaled by sqrt(ln(2 depth))."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            if self.cfg.packed:  # one (2H, C) matrix, as the official xformers SwiGLU `w12`
                packed = torch.empty(2 * self.cfg.mlp_hidden, self.embed_dim)
                nn.init.xavier_normal_(packed)
                blk.mlp.w1.weight.copy_(packed[: self.cfg.mlp_hidden])
                blk.mlp.w2.weight.copy_(packed[self.cfg.mlp_hidden:])
            else:  # q, k, v each its own (C, C) matrix
                for w in blk.attn.qkv.weight.chunk(3, dim=0):
                    nn.init.xavier_normal_(w)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for p in (self.pos_embed, self.cls_token, self.mask_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02, a=-0.02, b=0.02)
        if self.cfg.sub_ln:
            scale = math.sqrt(math.log(2 * self.cfg.depth))
            for blk in self.blocks:
                for lin in (blk.mlp.w1, blk.mlp.w2, blk.mlp.w3, blk.attn.proj):
                    lin.weight.mul_(scale)
                blk.attn.qkv.weight[2 * self.embed_dim :].mul_(scale)  # the v projection

    # ---------------------------------------------------------------- embeddings
    def abs_pos(self, hw: tuple[int, int]) -> torch.Tensor:
        """Absolute position embedding without the cls slot, resized to hw: (1, H, W, C)."""
        g = self.pos_grid
        pos = self.pos_embed[:, 1:].reshape(1, g, g, -1)
        if exporting() or (g, g) != tuple(hw):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=hw, mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)
        return pos

    def rope_tables(self, hw: tuple[int, int], device: torch.device) -> tuple[RopeTable | None, RopeTable]:
        """(window table, global table) for a feature grid hw; the window table is None without windows."""
        head_dim = self.embed_dim // self.cfg.num_heads
        pt = self.rope_pt_grid
        win = None
        if self.window_size > 0 and len(self.global_blocks) < self.cfg.depth:
            ws = self.window_size
            win = rope_table(head_dim, (ws, ws), pt / ws, device)
        side = self.rope_grid or (torch.maximum(torch.as_tensor(hw[0]), torch.as_tensor(hw[1])) if exporting()
                                  else max(hw))  # traced sizes: the larger one chosen in the graph
        glb = rope_table(head_dim, hw, pt / side, device)
        return win, glb

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> patch embeddings (B, H/p, W/p, C)."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not divisible by the patch size {p}")
        return self.patch_embed.proj(x).permute(0, 2, 3, 1)

    # ---------------------------------------------------------------- forward
    def _run_block(self, blk: Block, x: torch.Tensor, rope: RopeTable | None, num_prefix: int = 0):
        call = compiled_block_call() if self.compile_blocks and not exporting() else call_block
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(call, blk, x, rope, num_prefix, use_reentrant=False)
        return call(blk, x, rope, num_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, 3, H, W) -> last block's map (B, C, H/p, W/p), or a list of maps for out_indices."""
        if self.cls_token is not None:
            return self._forward_with_cls(x)
        x = self.patchify(x)
        hw = tuple(x.shape[1:3])
        x = x + self.abs_pos(hw)
        win, glb = self.rope_tables(hw, x.device)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x, win if blk.window_size > 0 else glb)
            if self.out_indices is not None and i in self.out_indices:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        if self.out_indices is not None:
            return outs
        return x.permute(0, 3, 1, 2).contiguous()

    def _forward_with_cls(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """forward() with the cls token in every block; the maps hold the patch tokens only."""
        H, W = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        wanted, outs = set(self.out_indices or ()), []

        def collect(i: int, tokens: torch.Tensor) -> None:
            if i in wanted:
                outs.append(tokens)

        last = self.forward_tokens(x, on_block=collect)

        def to_map(tokens: torch.Tensor) -> torch.Tensor:  # (B, 1 + H W, C) -> (B, C, H, W), cls dropped
            return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, H, W).contiguous()

        return [to_map(t) for t in outs] if self.out_indices is not None else to_map(last)

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                       on_block: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Token path, global attention only: (B, 3, H, W) -> tokens (B, [1 +] N, C) of the last block.

        mask: (B, N) bool, True where the patch embedding is replaced by the mask token (pre-training).
        on_block(i, tokens): called with the output of every block i.
        The cls token (if any) comes first, gets its own position slot and no RoPE.
        """
        if self.window_size > 0 and len(self.global_blocks) < self.cfg.depth:
            raise ValueError("forward_tokens needs global attention in every block (window_size=0)")
        x = self.patchify(x)
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("a mask was given but the model has no mask token (with_mask_token=False)")
            w = mask.reshape(B, H * W, 1).type_as(x)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = x + self.abs_pos((H, W)).reshape(1, H * W, C)
        num_prefix = 0
        if self.cls_token is not None:
            cls = self.cls_token + self.pos_embed[:, :1]
            x = torch.cat((cls.expand(B, -1, -1), x), dim=1)
            num_prefix = 1
        _, glb = self.rope_tables((H, W), x.device)
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x, glb, num_prefix)
            if on_block is not None:
                on_block(i, x)
        return x


def preset_config(name: str, **arch_overrides) -> TrVConfig:
    """The TrVConfig of a preset ("eva02_Ti", "eva02_S", "eva02_B", "eva02_L") with architecture fields
    (embed_dim, depth, num_heads, mlp_hidden, sub_ln) replaced; None values keep the preset's."""
    if name not in PRESETS:
        raise KeyError(f"unknown TrV preset {name!r}; choose from {sorted(PRESETS)}")
    fields = sorted(TrVConfig.__dataclass_fields__)
    for key in arch_overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise ValueError(f"{key!r} is not a TrV architecture field{f'; did you mean {close[0]!r}' if close else ''} "
                             f"(fields: {', '.join(fields)})")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in arch_overrides.items() if v is not None})


def create_trv(name: str, **overrides) -> TrV:
    """Build a preset ("eva02_Ti", "eva02_S", "eva02_B", "eva02_L") with TrV keyword overrides.

    Architecture fields of the preset (embed_dim, depth, num_heads, mlp_hidden, sub_ln) can be overridden
    too, e.g. create_trv("eva02_B", depth=2, embed_dim=64, num_heads=2, mlp_hidden=170) for tests.
    """
    arch = {k: overrides.pop(k) for k in list(overrides) if k in TrVConfig.__dataclass_fields__}
    return TrV(preset_config(name, **arch), **overrides)
