"""The global random generators' states: captured, restored, and kept around a block (needs torch and numpy)."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "rng_preserved"]


def capture_rng() -> dict:
    """The states of torch's (CPU and CUDA), numpy's and Python's global generators, as tensors and plain
    numbers (a checkpoint holding them stays loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": list(python_state), "gauss": python_gauss},
    }


def restore_rng(state: dict) -> None:
    """Put the generators back in a state capture_rng returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


@contextlib.contextmanager
def rng_preserved():
    """Run the block, then put every generator back as it was before."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)
