"""Exponential moving average of a detector's weights (official EVA-02 O365-initialized recipe, decay 0.9999).

The average covers every floating-point parameter and buffer, is updated after every optimizer step, and is
saved in checkpoints under `ema_state` as a flat {name: tensor} dict with the model's own key names (the layout
of the released O365-initialized detectors). Integer buffers are copied. Of a sharded model (FSDP2) each process
averages its own part, and checkpoints hold the whole average (eva02.common.sharding).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from eva02.backbone.checkpoint import unwrap_model
from eva02.common.sharding import gathered, shard_like

__all__ = ["ModelEMA"]


class ModelEMA:
    """Checkpointable EMA state. Empty until `update` (or `load_state_dict`) first runs; the first update
    copies the model, so an EMA created before loading initial weights starts from those weights."""

    def __init__(self, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.state: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole average (every process of a sharded model must call it: it gathers)."""
        return gathered(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.detach().clone() for k, v in state.items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * weights (plain copy on the first call and for integer tensors)."""
        current = unwrap_model(model).state_dict()
        if not self.state:
            self.state = {k: v.detach().clone() for k, v in current.items()}
            return
        self._shard_like(current)
        for k, v in current.items():
            ema = self.state[k]
            if ema.device != v.device:
                ema = self.state[k] = ema.to(v.device)
            if v.is_floating_point():
                ema.lerp_(v.detach(), 1.0 - self.decay)
            else:
                ema.copy_(v)

    def _shard_like(self, current: dict[str, torch.Tensor]) -> None:
        """A whole average loaded from a checkpoint, cut as the (sharded) model's weights are."""
        self.state = {k: shard_like(self.state[k], v) for k, v in current.items()}

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module):
        """Within the block the model holds the EMA weights; its own weights are restored afterwards."""
        if not self.state:
            raise RuntimeError("the EMA holds no weights yet (no training step has run)")
        target = unwrap_model(model)
        backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
        self._shard_like(backup)
        target.load_state_dict(self.state)
        try:
            yield target
        finally:
            target.load_state_dict(backup)
