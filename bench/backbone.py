"""Backbone speed and memory, side by side against references measured in the same run.

1. TrV vs timm's Eva, same variant and weights, 224 px, batch 8 (inference): time ratio.
2. EVA-02-B at 1024x1024, patch 16, window 16, 4 global blocks (the detection setting): achieved GFLOP/s
   (fvcore's count, one multiply-add = 1) as a fraction of a plain fp32 matmul's GFLOP/s in the same
   convention, measured on the shape of the model's largest matmul; plus peak memory.

Each case runs in its own subprocess so that its peak memory (CUDA allocator peak, or the process's max
RSS on CPU) is its own. Usage: python bench/backbone.py [--variant eva02_B] [--iters 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def timed(fn, iters: int, device: str) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_case(case: str, args) -> dict:
    from eva02.backbone import create_trv, load_checkpoint
    from eva02.backbone.flops import count_flops

    device, dtype = args.device, torch.float32
    torch.manual_seed(0)
    if case in ("trv224", "timm224"):
        import timm

        timm_names = {"eva02_Ti": "eva02_tiny_patch14_224", "eva02_S": "eva02_small_patch14_224",
                      "eva02_B": "eva02_base_patch14_224", "eva02_L": "eva02_large_patch14_224"}
        model = timm.create_model(timm_names[args.variant], pretrained=False).eval()
        x = torch.randn(8, 3, 224, 224, device=device)
        if case == "timm224":
            model = model.to(device)
            fn = lambda: model.forward_features(x)  # noqa: E731
        else:  # the same weights in our TrV; the timm model is freed before timing
            weights, model = model.state_dict(), create_trv(args.variant, with_cls_token=True).eval()
            load_checkpoint(model, weights)
            del weights
            model = model.to(device)
            fn = lambda: model.forward_tokens(x)  # noqa: E731
        with torch.inference_mode():
            sec = timed(fn, args.iters, device)
        return {"sec": sec, "peak_mb": peak_memory_mb(device)}

    if case == "det1024":
        model = create_trv("eva02_B", patch_size=16, window_size=16, global_blocks=(2, 5, 8, 11), rope_grid=64).eval()
        x = torch.randn(1, 3, 1024, 1024)
        flops = count_flops(model, x)
        model, x = model.to(device), x.to(device)
        with torch.inference_mode():
            sec = timed(lambda: model(x), args.iters, device)
        return {"sec": sec, "flops": flops, "peak_mb": peak_memory_mb(device)}

    if case == "matmul":
        # The model's largest matmul at 1024 px: 64 * 64 tokens through the SwiGLU w1/w2 (768 -> 2048).
        a = torch.randn(4096, 768, device=device, dtype=dtype)
        b = torch.randn(768, 2048, device=device, dtype=dtype)
        sec = timed(lambda: a @ b, max(args.iters, 20), device)
        return {"sec": sec, "flops": 4096 * 768 * 2048}
    raise ValueError(case)


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

    print(f"device: {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    trv, ref = child("trv224"), child("timm224")
    print(f"\n{args.variant}, 224 px, batch 8, inference")
    print(f"  {'':12s}{'s/batch':>10s}{'img/s':>9s}{'peak MB':>10s}")
    for name, r in (("eva02 TrV", trv), ("timm Eva", ref)):
        print(f"  {name:12s}{r['sec']:10.3f}{8 / r['sec']:9.1f}{r['peak_mb']:10.0f}")
    print(f"  time ratio TrV / timm: {trv['sec'] / ref['sec']:.3f} (below 1: faster than timm)")

    det, mm = child("det1024"), child("matmul")
    det_rate, mm_rate = det["flops"] / det["sec"] / 1e9, mm["flops"] / mm["sec"] / 1e9
    print("\neva02_B, 1024x1024, patch 16, window 16, global blocks (2, 5, 8, 11), batch 1, inference")
    print(f"  model: {det['flops'] / 1e9:.1f} GFLOPs in {det['sec']:.3f} s = {det_rate:.1f} GFLOP/s, "
          f"peak {det['peak_mb']:.0f} MB")
    print(f"  fp32 matmul 4096x768 @ 768x2048: {mm_rate:.1f} GFLOP/s")
    print(f"  fraction of the matmul rate: {det_rate / mm_rate:.2f}")


if __name__ == "__main__":
    main()
