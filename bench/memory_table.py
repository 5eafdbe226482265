"""docs/memory.md's per-mode tables: the largest training batch per GPU that fits each GPU size, from the planner.

    python bench/memory_table.py --config-file CONFIG | --mim MODEL [--gib 12 16 24 40 80] [--gpus 8] [--every-size]

For each mode (the config as is, bf16, FSDP2 over --gpus, the encoder frozen, LoRA rank 8) the planner
(tools/plan_memory.py's Planner) traces the training step at a few batches instead of a bisection per size. What a
GPU needs is convex in the batch (at every moment of the step each live tensor is constant or proportional to the
batch; the peak is the largest of those lines), so between two traced batches the chord over-estimates it and
answers read from chords are safe. Batches 1 and 2 are traced, then the batches the chords give for the largest
size (and its next one) until both are traced, a few times at most: that answer is then exact, the smaller sizes'
are read from chords (safe; --every-size settles each of them the same way).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("plan_memory_tool", ROOT / "tools/plan_memory.py")
TOOL = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(TOOL)

from eva02.common.memory import CUDA_OVERHEAD_BYTES, FRAGMENTATION, gib  # noqa: E402


MAX_REFINEMENTS = 4  # traces after batches 1 and 2, per size settled


def _largest(traced: dict[int, float], gpu_bytes: float) -> int:
    """The largest batch whose need, read off the chords between the traced batches (past the last one: its chord
    extended), fits gpu_bytes; 0 if batch 1 does not fit."""
    batches = sorted(traced)
    if traced[1] > gpu_bytes:
        return 0
    for low, high in zip(batches, batches[1:]):
        if traced[high] > gpu_bytes:
            break
    slope = (traced[high] - traced[low]) / (high - low)
    return low + int((gpu_bytes - traced[low]) // slope) if slope > 0 else high


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config-file")
    what.add_argument("--mim")
    parser.add_argument("--gib", type=float, nargs="+", default=[12, 16, 24, 40, 80])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--every-size", action="store_true",
                        help="settle every size's answer by traces, not only the largest size's")
    args = parser.parse_args(argv)
    source = ["--mim", args.mim] if args.mim else ["--config-file", args.config_file]
    planner = TOOL.Planner(TOOL.parse_args([*source, "--gpus", str(args.gpus), "--mode", "train"]))
    precision, checkpointing = planner.precision_default, planner.checkpointing_default
    modes = {f"as is ({precision}, checkpointing {'on' if checkpointing else 'off'})": (precision, False, ""),
             "bf16": ("bf16", False, ""),
             f"FSDP2 over {args.gpus} GPUs": (planner.sharded_precision(precision), True, ""),
             **{tuning: (precision, False, tuning) for tuning in TOOL.TUNINGS}}
    print(f"{args.mim or args.config_file}: largest training batch per GPU ({args.gpus} GPUs, {planner.size} px)")
    print("| mode | needed at batch 1 (GiB) | batch 2 adds (GiB) | " + " | ".join(f"{g:g} GiB" for g in args.gib)
          + " | batches traced |")
    print("|---|---|---|" + "---|" * (len(args.gib) + 1))
    for label, (mode_precision, sharded, tuning) in modes.items():
        traced: dict[int, float] = {}

        def trace(batch: int) -> None:
            traced[batch] = planner.plan(batch, True, mode_precision, checkpointing, sharded, tuning).needed()

        trace(1)
        trace(2)
        for gpu_bytes in sorted((g * 2**30 for g in args.gib), reverse=True):
            for _ in range(MAX_REFINEMENTS if args.every_size or gpu_bytes == max(args.gib) * 2**30 else 0):
                batch = _largest(traced, gpu_bytes)
                # settled: the answer traced, and the next batch traced or past the last traced one (there the
                # extended chord under-estimates: it not fitting is certain)
                unsettled = [n for n in (batch, batch + 1) if n and n not in traced and (n == batch or n < max(traced))]
                if not unsettled:
                    break
                trace(unsettled[0])
        row = [_largest(traced, g * 2**30) for g in args.gib]
        print(f"| {label} | {gib(traced[1]):.1f} | {gib(traced[2] - traced[1]):.2f} | " + " | ".join(map(str, row))
              + f" | {', '.join(str(b) for b in sorted(traced))} |", flush=True)
    print(f"(needed: the traced peak x{1 + FRAGMENTATION:.2f} + {gib(CUDA_OVERHEAD_BYTES):.0f} GiB, with DDP's buckets "
          f"where not sharded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
