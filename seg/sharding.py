"""Sharded data parallel for segmentation runs (config `parallel = "fsdp"`, tools/train_seg.py --fsdp): PyTorch
FSDP2 through eva02.common.sharding, one unit per TrV block and the rest of the segmentor (neck, heads) as the root
unit, inside mmengine's Runner.

mmengine builds the optimizer, initializes the weights and loads checkpoints (load_from, --resume, --weights)
into the whole model; a sharded model takes whole tensors only through torch.distributed.checkpoint. So:
  - `ShardedSegmentor` (a model wrapper, `model_wrapper_cfg=dict(type="ShardedSegmentor")`) passes the steps
    through, as mmengine's DDP wrapper does, without wrapping anything;
  - `ShardingHook.before_train`, after every weight is loaded, shards the segmentor and points the optimizer (and
    the state a resumed run loaded into it) at the sharded parameters; validation runs on the unsharded weights
    (processes may run different numbers of images);
  - `GatheringRunner.save_checkpoint` has every process gather the whole weights and the optimizer state by
    parameter name before rank 0 writes them (mmengine writes on rank 0 only), so every tool reads the checkpoint;
  - a checkpoint with the optimizer state by name resumes with or without sharding (`ShardingHook` is registered
    by tools/train_seg.py in every run).
float16 AMP gets torch's ShardedGradScaler, which agrees over the processes on overflow.
"""
from __future__ import annotations

import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from mmseg.registry import HOOKS
from torch import nn

from eva02.common.sharding import (OPTIMIZER_BY_NAME, by_name, full_model_state, full_optimizer_state, is_sharded,
                                   load_optimizer_state, shard, unsharded)

__all__ = ["ShardedSegmentor", "ShardingHook", "GatheringRunner", "PARALLEL"]

# config key `parallel`: "ddp" (mmengine's DistributedDataParallel) or "fsdp" (this module)
PARALLEL = ("ddp", "fsdp")


@MODEL_WRAPPERS.register_module()
class ShardedSegmentor(nn.Module):
    """The model wrapper of a sharded run: the segmentor's own train / val / test steps (FSDP2 works inside the
    module itself, sharded by ShardingHook)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train_step(self, data, optim_wrapper):
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data):
        return self.module.val_step(data)

    def test_step(self, data):
        return self.module.test_step(data)


def _segmentor(runner) -> nn.Module:
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def _repoint_optimizer(optimizer: torch.optim.Optimizer, names: dict[nn.Parameter, str], model: nn.Module) -> None:
    """After sharding: the optimizer's groups hold the sharded parameters instead of the whole ones they were
    built on (its state is loaded afresh, by parameter name)."""
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[p]] for p in group["params"]]
    optimizer.state.clear()


@HOOKS.register_module()
class ShardingHook(Hook):
    """Shards the segmentor of a run whose model wrapper is ShardedSegmentor (module docstring), and resumes a
    checkpoint whose optimizer state is stored by parameter name (a sharded run's) with or without sharding."""

    # before_train after every hook that loads weights (SegmentorWeightsHook, VERY_HIGH); after_val_epoch before
    # CheckpointHook (VERY_LOW) saves the best checkpoint, which gathers the sharded weights
    priority = "LOW"

    def __init__(self):
        self._by_name: dict | None = None  # a resumed checkpoint's optimizer state by name, loaded in before_train
        self._unsharded = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if checkpoint.get("optimizer_layout") == OPTIMIZER_BY_NAME and runner._resume:
            self._by_name = checkpoint.pop("optimizer")  # mmengine would load it by position

    def before_train(self, runner) -> None:
        model, wrapper = _segmentor(runner), runner.optim_wrapper
        if isinstance(runner.model, ShardedSegmentor) and get_world_size() > 1:
            names = {p: name for name, p in model.named_parameters()}
            if wrapper.optimizer.state:  # resumed from a checkpoint of a run without sharding: by position
                self._by_name = by_name(wrapper.optimizer.state_dict(), wrapper.optimizer, model)
            shard(model, model.backbone.blocks, next(model.parameters()).device)
            _repoint_optimizer(wrapper.optimizer, names, model)
            scaler = getattr(wrapper, "loss_scaler", None)
            if isinstance(scaler, torch.amp.GradScaler):
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

                wrapper.loss_scaler = ShardedGradScaler(scaler._device)
                wrapper.loss_scaler.load_state_dict(scaler.state_dict())
        if self._by_name is not None:
            scaler_state = self._by_name.pop("loss_scaler", None)
            load_optimizer_state(model, wrapper.optimizer, self._by_name)
            if scaler_state is not None and getattr(wrapper, "loss_scaler", None) is not None:
                wrapper.loss_scaler.load_state_dict(scaler_state)
            self._by_name = None

    def before_val_epoch(self, runner) -> None:
        self._unsharded = unsharded(_segmentor(runner))
        self._unsharded.__enter__()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._unsharded.__exit__(None, None, None)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        gathered = getattr(runner, "gathered_states", None)
        if gathered is not None:  # GatheringRunner: the whole states, in place of this process's shards
            model_state, optimizer_state = gathered
            scaler = checkpoint.get("optimizer", {}).get("loss_scaler")
            checkpoint.update(state_dict=model_state, optimizer_layout=OPTIMIZER_BY_NAME,
                              optimizer={**optimizer_state, **({"loss_scaler": scaler} if scaler else {})})


class GatheringRunner(Runner):
    """mmengine's Runner, whose checkpoints of a sharded segmentor hold its whole weights and optimizer state:
    every process gathers them (mmengine saves on rank 0 only, too late to gather), ShardingHook puts them into
    the checkpoint rank 0 writes."""

    gathered_states: tuple[dict, dict] | None = None

    def save_checkpoint(self, *args, **kwargs):
        model = _segmentor(self)
        if is_sharded(model):
            self.gathered_states = full_model_state(model), full_optimizer_state(model, self.optim_wrapper.optimizer)
        try:
            super().save_checkpoint(*args, **kwargs)
        finally:
            self.gathered_states = None
