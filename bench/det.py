"""Detection backbone and whole detector, inference and training step: SDPA against the `math` attention path (the
official release's computation without xformers), time and peak memory side by side in one run.

For each config (default: the COCO bsl and sys configs of B and L, i.e. 1024 and 1536 crops, on a GPU; L sys and
L bsl on the CPU, where --size makes them affordable), each part, each mode, the two attention paths:
  - backbone: the config's TrV (window / global blocks, RoPE grid, drop path) on a batch of crop-sized inputs;
    training step = forward, a mean-square loss, backward.
  - detector: the whole Cascade Mask R-CNN, randomly initialized. Inference: one 640x480 image resized by the
    config's test resize and padded to the square by the model, score threshold --score-thresh (default 0: random
    weights give near-uniform class scores, below bsl's 0.05, so every RoI is post-processed and the full top-100
    masks drawn, as a trained model does on a busy image). Training step: EVATrainer.run_step (autocast, the
    config's AdamW with layer decay) on crop-sized blank images with --objects boxes and masks each.
The only difference between the two runs of a case is `model.backbone.net.attn_impl`. Each case runs in a
subprocess of its own so its peak memory (CUDA allocator peak, or the process's max RSS on the CPU, which includes
the weights) is its own. timm's Eva has no windowed attention; bench/backbone.py compares against it at 224.

Usage: python bench/det.py [--configs CFG ...] [--parts backbone detector] [--modes infer train] [--iters 2]
       [--batch 1] [--size N] [--objects 20] [--score-thresh 0] [--device cpu|cuda] [--precision fp32|fp16|bf16]
(--size overrides every config's crop size.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
# bench/timing.py: the script's folder is on sys.path
from eva02.common.precision import PRECISIONS, autocast, autocast_dtype
from timing import backbone_step, peak_memory_mb, timed

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIGS = ("configs/coco/eva02_B_bsl.py", "configs/coco/eva02_B_sys.py", "configs/coco/eva02_L_bsl.py",
               "configs/coco/eva02_L_sys.py")
CPU_CONFIGS = ("configs/coco/eva02_L_sys.py", "configs/coco/eva02_L_bsl.py")
ATTN_IMPLS = ("sdpa", "math")


def load(config: str, attn_impl: str, args):
    from detectron2.config import LazyConfig

    from eva02.det.config import set_input_size

    cfg = LazyConfig.load(str(ROOT / config) if not Path(config).is_absolute() else config)
    cfg.model.backbone.net.attn_impl = attn_impl
    for predictor in cfg.model.roi_heads.box_predictors:
        predictor.test_score_thresh = args.score_thresh
    if args.size:
        set_input_size(cfg.model, cfg.dataloader, args.size)
    return cfg


def config_backbone_step(cfg, args, dtype):
    """(step, input description) for the config's TrV alone."""
    from detectron2.config import instantiate

    net = instantiate(cfg.model.backbone.net).to(args.device)
    size = int(cfg.model.backbone.square_pad)
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    return backbone_step(net, x, args.mode, dtype), f"{size}x{size}"


def detector_step(cfg, args, dtype):
    """(step, input description) for the whole detector."""
    import detectron2.data.transforms as T
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from eva02.det.engine import EVATrainer
    from eva02.det.memory import training_images

    model = instantiate(cfg.model).to(args.device).train(args.mode == "train")
    if args.mode == "infer":
        image = torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8).numpy()
        aug_input = T.AugInput(image)
        T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1)).to(args.device)
        inputs = [{"image": tensor, "height": 480, "width": 640}] * args.batch

        def infer():
            with torch.inference_mode(), autocast(args.device, dtype):
                model(inputs)

        return infer, f"{tensor.shape[1]}x{tensor.shape[2]} in {cfg.model.backbone.square_pad}"
    size = int(cfg.model.backbone.square_pad)
    polygons = cfg.dataloader.train.mapper.get("instance_mask_format", "polygon") == "polygon"
    data = training_images(args.batch, size, args.objects, polygons, model.roi_heads.num_classes)
    cfg.optimizer.params.model = model
    trainer = EVATrainer(model, iter(lambda: data, None), instantiate(cfg.optimizer), precision=dtype,
                         device=args.device)
    storage = EventStorage(0)

    def train():
        with storage:
            trainer.run_step()

    return train, f"{size}x{size}, {args.objects} objects"


def run_case(config: str, attn_impl: str, args) -> dict:
    cfg = load(config, attn_impl, args)
    torch.manual_seed(0)
    dtype = autocast_dtype(args.precision)
    step, described = (config_backbone_step if args.part == "backbone" else detector_step)(cfg, args, dtype)
    sec = timed(step, args.iters, args.device)
    return {"sec": sec, "peak_mb": peak_memory_mb(args.device), "input": described}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+")
    parser.add_argument("--parts", nargs="+", default=["backbone", "detector"], choices=["backbone", "detector"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per case (after one warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--size", type=int, default=0, help="override the crop size of every config")
    parser.add_argument("--objects", type=int, default=20, help="boxes and masks per training image")
    parser.add_argument("--score-thresh", type=float, default=0.0, help="box score threshold of every config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=None,
                        help="autocast dtype (default: fp16 on CUDA, as the configs' AMP; fp32 on the CPU)")
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)  # config attn_impl part mode
    args = parser.parse_args()
    args.precision = args.precision or ("fp16" if args.device.startswith("cuda") else "fp32")
    if args.case:
        config, attn_impl, args.part, args.mode = args.case
        print(json.dumps(run_case(config, attn_impl, args)))
        return
    configs = args.configs or list(GPU_CONFIGS if args.device.startswith("cuda") else CPU_CONFIGS)
    for config in configs:
        if not (ROOT / config).is_file() and not Path(config).is_file():
            parser.error(f"config not found: {config}")

    def child(config, attn_impl, part, mode):
        cmd = [sys.executable, __file__, "--case", config, attn_impl, part, mode, "--iters", str(args.iters),
               "--batch", str(args.batch), "--size", str(args.size), "--objects", str(args.objects),
               "--score-thresh", str(args.score_thresh), "--device", args.device, "--precision", args.precision]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{config} {part} {mode} with attn_impl={attn_impl} failed:\n{run.stderr[-3000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}, {args.precision}, torch {torch.__version__}, batch {args.batch}, "
          f"{args.iters} timed iterations after 1 warm-up (median)")
    print(f"{'config':22s}{'part':>9s}{'mode':>6s}{'input':>26s}{'attn':>6s}{'s/iter':>9s}{'img/s':>8s}"
          f"{'peak MB':>9s}")
    for config in configs:
        for part in args.parts:
            for mode in args.modes:
                results = {impl: child(config, impl, part, mode) for impl in ATTN_IMPLS}
                for impl, r in results.items():
                    print(f"{Path(config).stem:22s}{part:>9s}{mode:>6s}{r['input']:>26s}{impl:>6s}{r['sec']:9.3f}"
                          f"{args.batch / r['sec']:8.2f}{r['peak_mb']:9.0f}")
                sdpa, math = results["sdpa"], results["math"]
                print(f"{'':22s}math / sdpa: time {math['sec'] / sdpa['sec']:.2f}x, peak memory "
                      f"{math['peak_mb'] / sdpa['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
