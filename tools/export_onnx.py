#!/usr/bin/env python
"""Export an EVA-02 backbone with its feature pyramid to ONNX, any input height and width, and check the file in
onnxruntime against PyTorch.

    .venv/bin/python tools/export_onnx.py --config-file configs/coco/eva02_L_sys.py --weights W.pth \
        --output eva02_L_det_backbone.onnx [--check-sizes 1024x1024 768x1024] [--opset 17]
    .venv/bin/python tools/export_onnx.py --config-file configs/ade20k/upernet_eva02_L_640.py --weights W.pth \
        --output eva02_L_seg_backbone.onnx

What is exported (the config's kind decides):
  - detection (a detectron2 LazyConfig): `model.backbone`, the TrV + ViTDet's simple feature pyramid. Input
    `image`: (B, 3, H, W) float32, already normalized (pixel mean / std) and padded as the detector pads it
    (to the square `model.backbone.square_pad`, or any multiple of 32); outputs p2 ... p6 (strides 4 ... 64).
  - segmentation (an mmengine config): `model.backbone`, the TrV (with the official cls token) + its 4-level
    pyramid. Input `image`: (B, 3, H, W) normalized, H and W multiples of the patch size; outputs the 4 levels.
  - not exported: the detection heads (RPN, RoI heads, NMS / soft-NMS, mask pasting) and the segmentation
    decode heads. Their data-dependent control flow (proposal counts, per-class NMS loops) does not trace to a
    fixed graph; run them in PyTorch on the exported backbone's features, or rebuild them with your runtime's
    NMS plugins.
H and W are dynamic: RoPE, window padding and the position-embedding resize are computed in the graph from the
input size (`eva02.backbone.trv.exporting`). Opset 17 (LayerNorm, GELU as ops). The check runs both models on
the real photos scikit-image ships (astronaut, chelsea), resized to each --check-sizes entry, and fails (exit 1)
when the largest difference exceeds --tolerance relative to the largest output value. For TensorRT:
`trtexec --onnx=FILE --minShapes=image:1x3xHminxWmin --optShapes=... --maxShapes=...` builds an engine with a
dynamic-shape profile; the graph has no custom ops.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eva02.backbone.cli import EXIT_OK, EXIT_PARTIAL, UsageError, add_common_args, run_tool

DET_LEVELS = ("p2", "p3", "p4", "p5", "p6")


class FeatureTuple(torch.nn.Module):
    """A backbone returning a dict (detectron2) or a tuple (mmseg) as a tuple of maps, in a fixed order."""

    def __init__(self, backbone: torch.nn.Module, names: tuple[str, ...] | None):
        super().__init__()
        self.backbone, self.names = backbone, names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone(image)
        return tuple(out[name] for name in self.names) if self.names else tuple(out)


def is_detection_config(config_file: str) -> bool:
    """A detectron2 LazyConfig (its `model` is a LazyCall), not an mmengine config (whose `_base_` files and
    `_base_.x` references LazyConfig cannot load)."""
    from detectron2.config import LazyConfig

    try:
        cfg = LazyConfig.load(config_file)
    except Exception:  # noqa: BLE001  (an mmengine config fails in its own ways)
        return False
    return "_target_" in (cfg.get("model") or {})


def build_backbone(config_file: str, weights: str, overrides: list[str], weights_only: bool):
    """(backbone as FeatureTuple in eval mode, output names, kind) for a detection or segmentation config."""
    if is_detection_config(config_file):
        from detectron2.config import instantiate

        from eva02.det.checkpoint import EVACheckpointer
        from eva02.det.config import load_config

        model = instantiate(load_config(config_file, overrides).model).eval()
        if weights:
            EVACheckpointer(model, weights_only=weights_only, require="backbone").load(weights, checkpointables=[])
        return FeatureTuple(model.backbone, DET_LEVELS).eval(), list(DET_LEVELS), "detection"
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import eva02.seg  # noqa: F401  (registers EVA02)
    from eva02.seg.checkpoint import load_backbone_weights
    from eva02.seg.run import load_config

    cfg = load_config(config_file, None, overrides)
    init_default_scope("mmseg")
    backbone_cfg = dict(cfg.model.backbone, pretrained=None)
    backbone = MODELS.build(backbone_cfg).eval()
    if weights:
        load_backbone_weights(backbone, weights, weights_only=weights_only)
    names = [f"level{i}" for i in range(len(backbone.pyramid_indices))]
    return FeatureTuple(backbone, None).eval(), names, "segmentation"


def real_photos(sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """scikit-image's astronaut and chelsea photos, ImageNet-normalized, resized to each (H, W)."""
    import skimage.data
    import torch.nn.functional as F

    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    photos = []
    for photo, size in zip((skimage.data.astronaut(), skimage.data.chelsea()) * len(sizes), sizes):
        x = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float()
        photos.append((F.interpolate(x, size=size, mode="bilinear", align_corners=False) - mean) / std)
    return photos


def export(model: torch.nn.Module, names: list[str], path: str, size: tuple[int, int], opset: int) -> None:
    dummy = torch.zeros(1, 3, *size)
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), path, opset_version=opset, dynamo=False, input_names=["image"],
                          output_names=names,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        **{n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names}})


def compare(model: torch.nn.Module, path: str, photos: list[torch.Tensor]) -> list[float]:
    """Largest |onnxruntime - PyTorch| over every output, relative to the largest |PyTorch| value, per photo."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    errors = []
    for x in photos:
        with torch.no_grad():
            ref = [t.numpy() for t in model(x)]
        got = session.run(None, {"image": x.numpy()})
        errors.append(max(float(np.abs(r - g).max()) / max(float(np.abs(r).max()), 1e-12) for r, g in zip(ref, got)))
    return errors


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"size {text!r}: expected HxW, e.g. 1024x768") from None
    return h, w


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, "config", "output", "unsafe_pickle")
    parser.add_argument("--weights", default="", metavar="PATH",
                        help="detector / segmentor / backbone checkpoint (default: random init, for trying)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check-sizes", nargs="+", default=["1024x1024", "768x1024"], metavar="HxW",
                        help="sizes at which onnxruntime is compared with PyTorch (multiples of 32 for detection)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference accepted")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    if not Path(args.config_file).is_file():
        raise UsageError(f"--config-file {args.config_file}: no such file")
    sizes = [parse_size(s) for s in args.check_sizes]
    model, names, kind = build_backbone(args.config_file, args.weights, args.overrides, not args.unsafe_pickle)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    export(model, names, args.output, sizes[0], args.opset)
    print(f"exported the {kind} backbone + pyramid to {args.output} (opset {args.opset}, outputs {', '.join(names)}, "
          f"dynamic batch / height / width) in {time.perf_counter() - start:.0f} s")
    errors = compare(model, args.output, real_photos(sizes))
    for size, error in zip(sizes, errors):
        print(f"  onnxruntime vs PyTorch at {size[0]}x{size[1]}: largest difference {error:.2e} of the largest value")
    if max(errors) > args.tolerance:
        print(f"largest difference above --tolerance {args.tolerance}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
