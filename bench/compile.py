"""torch.compile against eager for the TrV, side by side in one run: the `compile_blocks` switch.

For each size: the detection backbone as the COCO config of that size builds it (see build), run eagerly and
with compile_blocks=True, same weights, timed in alternation (machine drift hits both alike), for inference and
for a training step (forward, a mean-square loss, backward). The first compiled call's time less the first eager
call's is the compile time (paid once per process and input size). Peak memory (CUDA allocator) is measured per
case in the same process, the allocator's peak reset before each; on the CPU it is not shown (the compiler's
own memory would be mixed in). The two are compared too: the backbone's output (inference), the patch
embedding's gradient (training), which flows through every block.

Usage: python bench/compile.py [--variant eva02_B] [--sizes 512 1024] [--iters 3] [--modes infer train]
       [--checkpointing] [--device cpu|cuda] [--precision fp32|fp16|bf16]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from eva02.common.precision import PRECISIONS, autocast_dtype
from timing import backbone_step, synced  # bench/timing.py: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]


def build(variant: str, size: int, compile_blocks: bool, checkpointing: bool, device: str):
    """The backbone of the COCO config for this size: bsl (Table 28: window 16, 4 global blocks) up to 1024,
    sys (Table 30: window 32, 6 or 8 global blocks) above; RoPE grid = size / 16. Drop path is off, so the
    eager and compiled training steps compute the same thing."""
    from detectron2.config import LazyConfig, instantiate

    from eva02.det.config import set_input_size

    recipe = "bsl" if size <= 1024 else "sys"
    cfg = LazyConfig.load(str(ROOT / f"configs/coco/{variant}_{recipe}.py"))
    set_input_size(cfg.model, cfg.dataloader, size)
    cfg.model.backbone.net.update(use_checkpoint=checkpointing, compile_blocks=compile_blocks, drop_path_rate=0.0)
    torch.manual_seed(0)
    return instantiate(cfg.model.backbone.net).to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="eva02_B", choices=["eva02_B", "eva02_L"])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="input sides (default 1024 1536 on CUDA, 512 1024 on the CPU)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per case, after the warm-up")
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in both models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=None,
                        help="autocast dtype (default: fp16 on CUDA, as the configs' AMP; fp32 on the CPU)")
    args = parser.parse_args()
    args.precision = args.precision or ("fp16" if args.device == "cuda" else "fp32")
    sizes = args.sizes or ([1024, 1536] if args.device == "cuda" else [512, 1024])
    dtype = autocast_dtype(args.precision)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, {args.precision}, torch {torch.__version__}, {args.variant}, batch {args.batch}, "
          f"checkpointing {'on' if args.checkpointing else 'off'}; median of {args.iters} interleaved runs")
    print(f"{'size':>6s}{'mode':>7s}{'eager s':>10s}{'compiled s':>12s}{'speed-up':>10s}{'compile s':>11s}"
          f"{'peak MB eager / compiled':>27s}{'max |diff|':>12s}")
    for size in sizes:
        x = torch.randn(args.batch, 3, size, size, device=args.device)
        models = {c: build(args.variant, size, c, args.checkpointing, args.device) for c in (False, True)}
        for mode in args.modes:
            fns = {c: backbone_step(m, x, mode, dtype) for c, m in models.items()}
            compile_s = synced(fns[True], args.device) - synced(fns[False], args.device)
            outs = {c: f() for c, f in fns.items()}
            diff = (outs[True].float() - outs[False].float()).abs().max().item()
            times, peaks = {c: [] for c in fns}, {}
            for _ in range(args.iters):
                for c, f in fns.items():
                    times[c].append(synced(f, args.device))
            for c, f in fns.items():
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    f()
                    peaks[c] = torch.cuda.max_memory_allocated() / 2**20
            eager, compiled = (sorted(times[c])[len(times[c]) // 2] for c in (False, True))
            peak = f"{peaks[False]:.0f} / {peaks[True]:.0f}" if peaks else "-"
            print(f"{size:6d}{mode:>7s}{eager:10.3f}{compiled:12.3f}{eager / compiled:9.2f}x{compile_s:11.1f}"
                  f"{peak:>27s}{diff:12.2e}")


if __name__ == "__main__":
    main()
