"""Detector inference time per image and peak memory: SDPA vs the `math` attention path, side by side.

Models: the EVA-02-L "sys" COCO config (1536 crop, window 32, 8 global blocks, soft-NMS + maskness) and the
"bsl" one (1024 crop, window 16, 4 global blocks, plain NMS), randomly initialized: speed does not depend on
the weights, but random weights give near-uniform class scores (about 1/81), below bsl's threshold 0.05, so
the score threshold is set to --score-thresh (default 0, the sys value) for every config: each then
post-processes every RoI and draws its full top-100 masks, as a trained model does on a busy image.
Input: one 640x480 image resized by the config's test resize (longest side = crop) and padded to the square
by the model. The only difference between the two runs of a config is `model.backbone.net.attn_impl`.

Each case runs in its own subprocess so its peak memory (CUDA allocator peak, or the process's max RSS on the
CPU, which includes the model's weights) is its own.

Usage: python bench/det.py [--iters 2] [--size N] [--configs CFG ...] [--score-thresh 0] [--device cpu|cuda]
       [--precision fp32|fp16|bf16]
(--size overrides every config's crop size, e.g. to make L at 1536 affordable on a small CPU.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from timing import PRECISIONS, peak_memory_mb, timed  # bench/timing.py: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("configs/coco/eva02_L_sys.py", "configs/coco/eva02_L_bsl.py")
ATTN_IMPLS = ("sdpa", "math")


def run_case(config: str, attn_impl: str, args) -> dict:
    """Build the config's model with the given attention path; time one image's inference."""
    import detectron2.data.transforms as T
    from detectron2.config import LazyConfig, instantiate

    from eva02.det.config import set_input_size

    cfg = LazyConfig.load(str(ROOT / config) if not Path(config).is_absolute() else config)
    cfg.model.backbone.net.attn_impl = attn_impl
    for predictor in cfg.model.roi_heads.box_predictors:
        predictor.test_score_thresh = args.score_thresh
    if args.size:
        set_input_size(cfg.model, cfg.dataloader, args.size)
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(args.device).eval()
    image = torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8).numpy()
    aug_input = T.AugInput(image)
    T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))(aug_input)
    tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1)).to(args.device)
    inputs = [{"image": tensor, "height": 480, "width": 640}]
    dtype = PRECISIONS[args.precision]
    detections = []

    def infer():
        with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            detections.append(len(model(inputs)[0]["instances"]))

    with torch.inference_mode():
        sec = timed(infer, args.iters, args.device)
    return {"sec": sec, "peak_mb": peak_memory_mb(args.device), "padded": cfg.model.backbone.square_pad,
            "resized": list(tensor.shape[1:]), "detections": detections[-1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per case (after one warm-up)")
    parser.add_argument("--size", type=int, default=0, help="override the crop size of every config")
    parser.add_argument("--score-thresh", type=float, default=0.0, help="box score threshold of every config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default=None,
                        help="autocast dtype (default: fp16 on CUDA, as the configs' AMP; fp32 on the CPU)")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = args.precision or ("fp16" if args.device.startswith("cuda") else "fp32")
    if args.case:
        print(json.dumps(run_case(*args.case, args)))
        return

    for config in args.configs:
        if not (ROOT / config).is_file() and not Path(config).is_file():
            parser.error(f"config not found: {config}")

    def child(config, attn_impl):
        cmd = [sys.executable, __file__, "--case", config, attn_impl, "--iters", str(args.iters),
               "--size", str(args.size), "--score-thresh", str(args.score_thresh), "--device", args.device, "--precision", args.precision]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{config} with attn_impl={attn_impl} failed:\n{run.stderr[-3000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])

    print(f"device: {args.device} ({torch.get_num_threads()} threads), {args.precision}, torch {torch.__version__}, "
          f"{args.iters} timed iterations after 1 warm-up, batch 1")
    print(f"{'config':34s}{'input':>11s}{'attn':>6s}{'s/img':>9s}{'peak MB':>9s}{'dets':>6s}")
    for config in args.configs:
        results = {impl: child(config, impl) for impl in ATTN_IMPLS}
        for impl, r in results.items():
            size = f"{r['resized'][0]}x{r['resized'][1]}"
            print(f"{Path(config).stem:34s}{size:>11s}{impl:>6s}{r['sec']:9.3f}{r['peak_mb']:9.0f}{r['detections']:6d}")
        sdpa, math = results["sdpa"], results["math"]
        print(f"{'':34s}math / sdpa: time {math['sec'] / sdpa['sec']:.2f}x, peak memory "
              f"{math['peak_mb'] / sdpa['peak_mb']:.2f}x (padded to {sdpa['padded']})")


if __name__ == "__main__":
    main()
