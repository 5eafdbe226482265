"""Backbone speed and memory, side by side against references measured in the same run.

1. TrV vs timm's Eva, same variant, 224 px, batch 8 (inference): time ratio and peak memory.
2. EVA-02-B at 1024x1024, patch 16, window 16, 4 global blocks (the detection setting): achieved GFLOP/s as a
   fraction of a plain fp32 matmul's GFLOP/s, measured on the shape of the model's largest matmul; plus peak
   memory. Units: fvcore counts multiply-adds (MACs); FLOPs = 2 x MACs for the model and the matmul alike. The
   model's time is the median of --iters runs; the matmul's is the best of many, so the fraction is of the rate
   this machine actually reaches.

The 224 pair is timed in alternation in one process (machine drift hits both alike); every peak memory
(CUDA allocator peak, or the process's max RSS on CPU) is measured in a subprocess of its own. Usage: python bench/backbone.py [--variant eva02_B] [--iters 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from eva02.backbone import create_trv
from eva02.backbone.flops import count_flops
from timing import peak_memory_mb, timed  # bench/timing.py: the script's folder is on sys.path


def build_224(kind: str, variant: str, device: str):
    """(model, forward) for TrV or timm's Eva of the same variant, 224 px, batch 8."""
    x = torch.randn(8, 3, 224, 224, device=device)
    if kind == "timm":
        import timm

        timm_names = {"eva02_Ti": "eva02_tiny_patch14_224", "eva02_S": "eva02_small_patch14_224",
                      "eva02_B": "eva02_base_patch14_224", "eva02_L": "eva02_large_patch14_224"}
        model = timm.create_model(timm_names[variant], pretrained=False).eval().to(device)
        return model, lambda: model.forward_features(x)
    # the same architecture (outputs equal timm's for equal weights: tests/backbone)
    model = create_trv(variant, with_cls_token=True).eval().to(device)
    return model, lambda: model.forward_tokens(x)


def detection_model():
    """EVA-02-B as the COCO bsl detector runs it (Table 28): 1024 px, window 16, 4 global blocks."""
    return create_trv("eva02_B", patch_size=16, window_size=16, global_blocks=(2, 5, 8, 11), rope_grid=64).eval()


def run_case(case: str, args) -> dict:
    """One model alone in this process: its peak memory for one forward (and the detection model's timing)."""
    device = args.device
    torch.manual_seed(0)
    with torch.inference_mode():
        if case in ("trv", "timm"):
            _, forward = build_224(case, args.variant, device)
            forward()
            return {"peak_mb": peak_memory_mb(device)}
        if case == "det1024":
            model = detection_model()
            x = torch.randn(1, 3, 1024, 1024)
            flops = count_flops(model, x)
            model, x = model.to(device), x.to(device)
            sec = timed(lambda: model(x), args.iters, device)
            return {"sec": sec, "macs": flops, "peak_mb": peak_memory_mb(device)}
        if case == "matmul":
            # The model's largest matmul at 1024 px: 64 * 64 tokens through the SwiGLU w1 / w2 (768 -> 2048).
            a = torch.randn(4096, 768, device=device)
            b = torch.randn(768, 2048, device=device)
            timed(lambda: a @ b, 3, device)  # warm-up
            best = min(timed(lambda: a @ b, 1, device) for _ in range(max(args.iters, 30)))
            return {"sec": best, "macs": 4096 * 768 * 2048}
    raise ValueError(case)


def interleaved_times(forwards: dict, iters: int, device: str) -> dict:
    """Median seconds per call of each function, timed in alternation so machine drift hits all alike."""
    times = {k: [] for k in forwards}
    with torch.inference_mode():
        for f in forwards.values():
            f()
        for _ in range(iters):
            for k, f in forwards.items():
                times[k].append(timed(f, 1, device))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="eva02_B")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return

    def child(case):
        cmd = [sys.executable, __file__, "--case", case, "--variant", args.variant, "--iters", str(args.iters),
               "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    # Subprocesses first: a child inherits its parent's max RSS across exec, so the parent stays small until then.
    mem = {k: child(k)["peak_mb"] for k in ("trv", "timm")}
    det, mm = child("det1024"), child("matmul")
    models = {k: build_224(k, args.variant, args.device) for k in ("trv", "timm")}
    secs = interleaved_times({k: fwd for k, (_, fwd) in models.items()}, args.iters, args.device)

    print(f"device: {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"\n{args.variant}, 224 px, batch 8, inference (timed interleaved; peak memory each in its own process)")
    print(f"  {'':12s}{'s/batch':>10s}{'img/s':>9s}{'peak MB':>10s}")
    for name, k in (("eva02 TrV", "trv"), ("timm Eva", "timm")):
        print(f"  {name:12s}{secs[k]:10.3f}{8 / secs[k]:9.1f}{mem[k]:10.0f}")
    print(f"  time ratio TrV / timm: {secs['trv'] / secs['timm']:.3f} (below 1: faster than timm)")

    det_rate, mm_rate = 2 * det["macs"] / det["sec"] / 1e9, 2 * mm["macs"] / mm["sec"] / 1e9
    print("\neva02_B, 1024x1024, patch 16, window 16, global blocks (2, 5, 8, 11), batch 1, inference")
    print(f"  model: {det['macs'] / 1e9:.1f} G multiply-adds = {2 * det['macs'] / 1e9:.1f} GFLOPs in "
          f"{det['sec']:.3f} s (median) = {det_rate:.1f} GFLOP/s, "
          f"peak {det['peak_mb']:.0f} MB")
    print(f"  fp32 matmul 4096x768 @ 768x2048: {mm_rate:.1f} GFLOP/s (best of {max(args.iters, 30)} runs)")
    print(f"  fraction of the matmul rate: {det_rate / mm_rate:.2f}")


if __name__ == "__main__":
    main()
