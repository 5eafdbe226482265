"""What a detection run needs so that a resumed run computes what the uninterrupted one would have.

detectron2 restores the model, optimizer, lr scheduler, grad scaler and (with eva02's checkpointer) the EMA on
resume, but restarts the data stream and the random number generators from the beginning: the resumed run then
trains on the first batches again, with other RPN / RoI samples and augmentations. Here:
  - `RNGState`: a checkpointable holding the main process's torch / CUDA / numpy / Python generator states;
  - `ResumableSampler`: a training sampler that continues its stream after the samples already trained on;
  - `rng_preserved()` (eva02.common.rng) around evaluation in the middle of training: it leaves the generators
    as it found them, so a run with evaluation trains exactly as one without (and a resumed run, which did not
    evaluate, matches).
With num_workers=0 a resumed run (one process, or several under DDP or FSDP2) equals the uninterrupted one to the
last bit; with loader workers the samples continue where they stopped, while the workers' augmentation generators
restart.
"""
from __future__ import annotations

import itertools

import torch
import torch.utils.data as torchdata
from detectron2.utils import comm

from eva02.common.rng import capture_rng, restore_rng, rng_preserved

__all__ = ["RNGState", "ResumableSampler", "rng_preserved"]


class RNGState:
    """The generator states of every process as a checkpointable (state_dict / load_state_dict): each process
    draws its own augmentations and samples (detectron2 seeds them apart), so each gets its own states back.

    Loading restores numpy and Python's generators at once (the data augmentations of the next batch draw from
    them) and torch's at `apply_pending()`, which the trainer calls once the next batch is fetched: the first
    fetch of a resumed run creates the loader's iterator, which draws a seed from torch's generator, a draw the
    uninterrupted run made at its start."""

    def __init__(self):
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        """{"ranks": [states of process 0, 1, ...]}; every process must call it (it gathers)."""
        return {"ranks": comm.all_gather(capture_rng())}

    def load_state_dict(self, state: dict) -> None:
        if "ranks" in state:  # (a single state: written before the processes' states were gathered)
            ranks = state["ranks"]
            # saved by as many processes: this one's; by another number, the data stream differs anyway
            state = ranks[comm.get_rank()] if len(ranks) == comm.get_world_size() else ranks[0]
        restore_rng(state)
        self._pending = state

    def apply_pending(self) -> None:
        if self._pending is not None:
            torch.set_rng_state(self._pending["torch"])
            if self._pending["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._pending["cuda"])
            self._pending = None


class ResumableSampler(torchdata.Sampler):
    """A detectron2 training sampler (TrainingSampler, RepeatFactorTrainingSampler: infinite, each process
    taking every world_size-th index) that skips the first `skip` indices of this process's stream: set
    skip = iterations done x images per process per iteration when resuming."""

    def __init__(self, sampler: torchdata.Sampler, skip: int = 0):
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)
