"""Sharded data parallel on PyTorch's own machinery (FSDP2, `torch.distributed.fsdp.fully_shard`): one unit per
TrV block plus the rest of the model as the root unit, so a process holds 1 / world of every parameter, gradient
and AdamW state between the all-gathers of one block's forward and backward.

Checkpoints stay ordinary files: `full_model_state` / `full_optimizer_state` gather the model's weights (plain
names and tensors, what every tool reads) and the optimizer's state keyed by parameter name
(torch.distributed.checkpoint.state_dict), on rank 0's CPU; `load_full_states` / `load_optimizer_state` scatter
them back, into a sharded model or a plain one, so a run resumes with or without sharding. Copies kept beside the
model (an EMA) follow its sharding with `shard_like` and are gathered with `gathered`. `unsharded(model)` holds the
whole weights on every process for an evaluation, whose processes run different numbers of forward passes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

__all__ = ["shard", "is_sharded", "full_states", "full_model_state", "full_optimizer_state", "load_full_states",
           "load_optimizer_state", "by_name", "shard_like", "gathered", "unsharded", "OPTIMIZER_BY_NAME"]

OPTIMIZER_BY_NAME = "by_name"  # checkpoint["optimizer_layout"] of a state keyed by parameter name


def shard(model: nn.Module, blocks: Iterable[nn.Module], device: torch.device) -> nn.Module:
    """fully_shard every block, then the model (its remaining parameters: embeddings, heads), over all processes
    of the default group on `device`'s type (gloo on the CPU, nccl on GPUs). Rank 0's weights and buffers are
    sent to the others first, as DDP does (processes seeded apart initialize apart). Returns the model, sharded
    in place."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            dist.broadcast(tensor, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict:
    """The model's whole state dict on rank 0's CPU (other ranks get an empty dict). Every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state keyed by parameter name, on rank 0's CPU (as full_model_state)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(full_model_state, full_optimizer_state)."""
    return full_model_state(model), full_optimizer_state(model, optimizer)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load full_optimizer_state's layout (as every process read it) into the optimizer of a sharded or plain
    (or DDP-wrapped) model."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    # keys an lr scheduler added to the saved groups (initial_lr), which a fresh optimizer lacks: torch's loader
    # takes only the keys the optimizer has
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        for key, value in saved.items():
            group.setdefault(key, value)
    set_optimizer_state_dict(model, optimizer, state, options=_options())


def by_name(optimizer_state: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """A positional optimizer state (torch's Optimizer.state_dict, as a run without sharding saves it) keyed by
    parameter name, the layout load_optimizer_state takes. `optimizer` lists the parameters of `model` (sharded or
    not) in the order of the optimizer that saved the state: the same config builds the same groups."""
    names = {p: name for name, p in model.named_parameters()}
    order = [names[p] for group in optimizer.param_groups for p in group["params"]]
    return {"state": {order[i]: values for i, values in optimizer_state["state"].items()},
            "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                             for group in optimizer_state["param_groups"]]}


def load_full_states(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                     optimizer_state: dict) -> None:
    """Load whole states (full_states' layout, as every process read them from the checkpoint) into a sharded or
    a plain model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, model_state, options=_options())
    load_optimizer_state(model, optimizer, optimizer_state)


def shard_like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A whole tensor cut as `reference` (a sharded parameter or buffer) is: this process's part, as a DTensor;
    `tensor` itself when the reference is not sharded or the tensor is already. Every process holds the whole
    tensor, so nothing is sent."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(reference, DTensor) or isinstance(tensor, DTensor):
        return tensor
    return distribute_tensor(tensor.to(reference.device), reference.device_mesh, reference.placements,
                             src_data_rank=None)


def gathered(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """state with its sharded tensors made whole, on every process (all of them must call it)."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every process holds the whole weights of a sharded model and its forward passes gather
    nothing (no collective: processes may run different numbers of them, as an evaluation's do); sharded again
    afterwards. A plain model passes through."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            # the root keeps its weights from forward to backward in training too (FSDP2's setting for a root)
            unit.set_reshard_after_forward(unit is not model, recurse=False)
