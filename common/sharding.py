"""Sharded data parallel on PyTorch's own machinery (FSDP2, `torch.distributed.fsdp.fully_shard`): one unit per
TrV block plus the rest of the model as the root unit, so a process holds 1 / world of every parameter, gradient
and AdamW state between the all-gathers of one block's forward and backward.

Checkpoints stay ordinary files: `full_states` gathers the model's weights (plain names and tensors, what every
tool reads) and the optimizer's state keyed by parameter name (torch.distributed.checkpoint.state_dict), on
rank 0's CPU; `load_full_states` scatters them back, into a sharded model or a plain one, so a run resumes with
or without sharding.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["shard", "full_states", "load_full_states", "OPTIMIZER_BY_NAME"]

OPTIMIZER_BY_NAME = "by_name"  # checkpoint["optimizer_layout"] of a state keyed by parameter name


def shard(model: nn.Module, blocks: Iterable[nn.Module], device: torch.device) -> nn.Module:
    """fully_shard every block, then the model (its remaining parameters: embeddings, heads), over all processes
    of the default group on `device`'s type (gloo on the CPU, nccl on GPUs). Returns the model, sharded in place."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict by parameter name), whole, on rank 0's CPU (other ranks get empty
    dicts). Every process must call it: it gathers."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return (get_model_state_dict(model, options=_options()),
            get_optimizer_state_dict(model, optimizer, options=_options()))


def load_full_states(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                     optimizer_state: dict) -> None:
    """Load whole states (full_states' layout, as every process read them from the checkpoint) into a sharded or
    a plain model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_state, options=_options())
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=_options())
