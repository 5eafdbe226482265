"""Operation counting as fvcore counts: multiply-adds (one multiply-add = 1; FLOPs are twice that), with the
attention kernel counted too. The paper's and fvcore's "FLOPs" tables use this count.

fvcore has no handle for `aten::scaled_dot_product_attention`, so a fused-attention model would look
cheaper than the same model on the math path. fvcore is imported lazily: eva02.backbone needs only torch.
"""
from __future__ import annotations

import torch

__all__ = ["count_flops", "sdpa_flop_handle"]


def sdpa_flop_handle(inputs, outputs) -> int:
    """q k^T and attn v: 2 * (..., N, d) x (..., d, M) multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return 2 * batch * q[-2] * k[-2] * q[-1]


def count_flops(model: torch.nn.Module, *inputs) -> int:
    """Total multiply-adds of model(*inputs) (fvcore's "FLOPs"), scaled_dot_product_attention included."""
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())
