"""Timing and peak memory, shared by the benchmark scripts in this folder (run as `python bench/NAME.py`)."""
import resource
import time

import torch

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # --precision: autocast dtype


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
