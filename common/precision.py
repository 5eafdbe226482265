"""Numeric precision, one vocabulary for the tools, configs, bench scripts and library alike:

    fp32   no autocast
    fp16   float16 autocast (training on a GPU adds a dynamic loss scaler)
    bf16   bfloat16 autocast

Weights stay fp32 in every mode (autocast casts per operation). Configs hold these names where the setting is ours
(detection's train.amp.precision); mmengine's AmpOptimWrapper keeps its own `dtype` argument ("float16"), which
`from_torch_name` / `torch_name` translate.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "autocast_dtype", "from_torch_name", "torch_name"]

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None for fp32); ValueError naming the choices otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def torch_name(precision: str) -> str | None:
    """"float16" / "bfloat16" (torch's and mmengine's name of the autocast dtype), None for fp32."""
    dtype = autocast_dtype(precision)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def from_torch_name(name: str) -> str:
    """The precision name of a torch dtype name ("float16" -> "fp16")."""
    for precision, dtype in PRECISIONS.items():
        if dtype is not None and str(dtype) == f"torch.{name}":
            return precision
    raise ValueError(f"dtype {name!r}: autocast takes float16 or bfloat16")


def autocast(device: str | torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` (autocast_dtype's answer) on the device's type; no context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
