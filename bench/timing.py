"""Timing and peak memory, shared by the benchmark scripts in this folder (run as `python bench/NAME.py`)."""
import resource
import time

import torch

from eva02.common.precision import autocast



def synced(fn, device: str) -> float:
    """Seconds of one call, the GPU's queued work included."""
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def timed(fn, iters: int, device: str) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = sorted(synced(fn, device) for _ in range(iters))
    return times[len(times) // 2]


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def backbone_step(net, x: torch.Tensor, mode: str, dtype):
    """A callable running a detection backbone (TrVBackbone) once on x: inference ("infer": returns its map), or
    a training step ("train": forward, a mean-square loss, backward; returns the patch embedding's gradient,
    which flows through every block). Sets the net's train / eval mode."""
    net.train(mode == "train")

    def infer():
        with torch.inference_mode(), autocast(str(x.device), dtype):
            return net(x)[net._out_feature]

    def train():
        net.zero_grad(set_to_none=True)
        with autocast(str(x.device), dtype):
            loss = net(x)[net._out_feature].float().square().mean()
        loss.backward()
        return net.patch_embed.proj.weight.grad

    return infer if mode == "infer" else train
