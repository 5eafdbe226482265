#!/usr/bin/env python
"""Export an EVA-02 backbone with its feature pyramid (or, with --whole, a whole detector) to ONNX, any input
height and width, and check the file in onnxruntime against PyTorch.

    .venv/bin/python tools/export_onnx.py --config-file configs/coco/eva02_L_sys.py --weights W.pth \
        --output eva02_L_det_backbone.onnx [--check-sizes 1024x1024 768x1024] [--opset 17]
    .venv/bin/python tools/export_onnx.py --config-file configs/coco/eva02_L_bsl.py --weights W.pth --whole \
        --output eva02_L_bsl_detector.onnx --check-sizes 1024x1024 768x1024
    .venv/bin/python tools/export_onnx.py --config-file configs/ade20k/upernet_eva02_L_640.py --weights W.pth \
        --output eva02_L_seg_backbone.onnx

What is exported (the config's kind decides):
  - detection (a detectron2 LazyConfig): `model.backbone`, the TrV + ViTDet's simple feature pyramid. Input
    `image`: (B, 3, H, W) float32, already normalized (pixel mean / std) and padded as the detector pads it
    (to the square `model.backbone.square_pad`, or any multiple of 32); outputs p2 ... p6 (strides 4 ... 64).
  - detection with --whole: the whole Cascade Mask R-CNN, traced by detectron2's TracingAdapter: normalization,
    square padding, backbone, RPN, the three cascade stages, plain NMS, the mask head. Input `image`: (3, H, W)
    float32 on the 0-255 scale in the config's channel order, already resized by the config's test resize (H, W
    up to the square pad). Outputs, one row per detection: boxes (K, 4) xyxy in the input's pixels, classes (K,),
    masks (K, 1, 28, 28) probabilities inside each box (paste them at the boxes, e.g. detectron2's
    paste_masks_in_image), scores (K,), and image_size. Configs with soft-NMS (the "sys" inference: its loop runs
    as long as the data says) are refused, and so is maskness rescoring: override model.roi_heads.nms_method=nms
    (and maskness_thresh=None) to export the bsl-style inference, knowing that it is not the paper's sys numbers.
  - segmentation (an mmengine config): `model.backbone`, the TrV (with the official cls token) + its 4-level
    pyramid. Input `image`: (B, 3, H, W) normalized, H and W multiples of the patch size; outputs the 4 levels.
  - not exported: the segmentation decode heads, and the detector's resize and mask pasting (outside the model's
    graph in detectron2 too).
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

from eva02.common.cli import (EXIT_OK, EXIT_PARTIAL, UsageError, add_common_args, config_kind,
                              quiet_third_party_warnings, run_tool)

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

import numpy as np
import torch


DET_LEVELS = ("p2", "p3", "p4", "p5", "p6")


class FeatureTuple(torch.nn.Module):
    """A backbone returning a dict (detectron2) or a tuple (mmseg) as a tuple of maps, in a fixed order."""

    def __init__(self, backbone: torch.nn.Module, names: tuple[str, ...] | None):
        super().__init__()
        self.backbone, self.names = backbone, names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone(image)
        return tuple(out[name] for name in self.names) if self.names else tuple(out)


def build_backbone(config_file: str, weights: str, overrides: list[str], weights_only: bool):
    """(backbone as FeatureTuple in eval mode, output names, kind) for a detection or segmentation config."""
    if config_kind(config_file) == "detection":
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


def build_detector(config_file: str, weights: str, overrides: list[str], weights_only: bool):
    """(the whole detector in eval mode, its config) for --whole; refuses the inference it cannot trace."""
    from detectron2.config import instantiate

    from eva02.det.checkpoint import EVACheckpointer
    from eva02.det.config import load_config

    cfg = load_config(config_file, overrides)
    roi = cfg.model.roi_heads
    if roi.get("nms_method", "nms") != "nms" or roi.get("maskness_thresh") is not None:
        raise UsageError(f"--whole: {config_file} uses model.roi_heads.nms_method={roi.get('nms_method')!r}, "
                         f"maskness_thresh={roi.get('maskness_thresh')!r}; soft-NMS and maskness do not trace to a "
                         "graph that holds for every image. Add model.roi_heads.nms_method=nms "
                         "model.roi_heads.maskness_thresh=None to export plain-NMS inference (not the paper's "
                         "sys numbers), or drop --whole to export the backbone")
    model = instantiate(cfg.model).eval()
    if weights:
        EVACheckpointer(model, weights_only=weights_only, require="all").load(weights, checkpointables=[])
    return model, cfg


def _detector_adapter(model, image: torch.Tensor):
    """detectron2's TracingAdapter around the detector's inference up to (not including) the resize back to the
    original image and the mask pasting; the output names follow its flattening of the Instances."""
    from detectron2.export import TracingAdapter

    def inference(model, inputs):
        return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

    adapter = TracingAdapter(model, [{"image": image}], inference)
    with torch.no_grad():
        adapter(image)  # fills in the output schema
    fields = adapter.outputs_schema.schemas[0].schemas[0].keys
    names = [{"pred_boxes": "boxes", "pred_classes": "classes", "pred_masks": "masks"}.get(k, k) for k in fields]
    return adapter.eval(), names + ["image_size"]


def export_detector(model, path: str, image: torch.Tensor, opset: int):
    """Writes the ONNX file; returns the adapter it traced (in eval mode) and the output names."""
    adapter, names = _detector_adapter(model, image)
    with torch.no_grad():
        torch.onnx.export(adapter, (image,), path, opset_version=opset, dynamo=False, input_names=["image"],
                          output_names=names, dynamic_axes={"image": {1: "height", 2: "width"},
                                                            **{n: {0: "detections"} for n in names[:-1]}})
    return adapter.eval(), names  # the export leaves the wrapped model in training mode


def compare_detector(adapter, path: str, images: list[torch.Tensor]) -> list[tuple[int, int, float]]:
    """Per image: (detections in PyTorch, in onnxruntime, largest |difference| over boxes, scores and masks
    relative to each output's largest value; inf when the counts or classes differ)."""
    results = []
    for ref, got, names in paired_outputs(adapter, path, images):
        count, count_onnx = len(ref[0]), len(got[0])
        same = count == count_onnx and np.array_equal(ref[names.index("classes")], got[names.index("classes")])
        error = max((relative_difference(r, g) for n, r, g in zip(names, ref, got)
                     if n in ("boxes", "scores", "masks") and r.size), default=0.0) if same else float("inf")
        results.append((count, count_onnx, error))
    return results


def real_photos(sizes: list[tuple[int, int]], normalize: bool = True) -> list[torch.Tensor]:
    """scikit-image's astronaut and chelsea photos (RGB), resized to each (H, W): ImageNet-normalized (1, 3, H, W)
    batches, or (3, H, W) images on the 0-255 scale (normalize=False, the whole detector's input)."""
    import skimage.data
    import torch.nn.functional as F

    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    photos = []
    for photo, size in zip((skimage.data.astronaut(), skimage.data.chelsea()) * len(sizes), sizes):
        x = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        photos.append((x - mean) / std if normalize else x[0])
    return photos


def export(model: torch.nn.Module, names: list[str], path: str, size: tuple[int, int], opset: int) -> None:
    dummy = torch.zeros(1, 3, *size)
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), path, opset_version=opset, dynamo=False, input_names=["image"],
                          output_names=names,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        **{n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names}})


def paired_outputs(forward, path: str, inputs: list[torch.Tensor]):
    """For each input: (PyTorch's outputs, onnxruntime's outputs, the output names), as numpy arrays."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for x in inputs:
        with torch.no_grad():
            ref = [t.numpy() for t in forward(x)]
        yield ref, session.run(None, {"image": x.numpy()}), names


def relative_difference(ref: np.ndarray, got: np.ndarray) -> float:
    """Largest |got - ref| relative to the largest |ref|."""
    return float(np.abs(ref - got).max()) / max(float(np.abs(ref).max()), 1e-12)


def compare(model: torch.nn.Module, path: str, photos: list[torch.Tensor]) -> list[float]:
    """Largest |onnxruntime - PyTorch| over every output, relative to the largest |PyTorch| value, per photo."""
    return [max(relative_difference(r, g) for r, g in zip(ref, got))
            for ref, got, _ in paired_outputs(model, path, photos)]


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
    parser.add_argument("--whole", action="store_true",
                        help="detection: the whole Cascade Mask R-CNN with plain NMS, not just the backbone")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    if not Path(args.config_file).is_file():
        raise UsageError(f"--config-file {args.config_file}: no such file")
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights}: no such file")
    sizes = [parse_size(s) for s in args.check_sizes]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if args.whole:
        return export_whole(args, sizes)
    model, names, kind = build_backbone(args.config_file, args.weights, args.overrides, not args.unsafe_pickle)
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


def export_whole(args, sizes: list[tuple[int, int]]) -> int:
    if config_kind(args.config_file) != "detection":
        raise UsageError(f"--whole: {args.config_file} is not a detection config (segmentation exports the backbone)")
    model, cfg = build_detector(args.config_file, args.weights, args.overrides, not args.unsafe_pickle)
    pad = int(cfg.model.backbone.square_pad)
    too_big = [f"{h}x{w}" for h, w in sizes if max(h, w) > pad]
    if too_big:
        raise UsageError(f"--check-sizes {' '.join(too_big)}: larger than the config's square pad {pad}; the whole "
                         "detector takes images resized by its test resize (longest side at most the pad)")
    images = real_photos(sizes, normalize=False)
    if cfg.model.get("input_format", "RGB") == "BGR":
        images = [x.flip(0) for x in images]
    start = time.perf_counter()
    adapter, names = export_detector(model, args.output, images[0], args.opset)
    print(f"exported the whole detector to {args.output} (opset {args.opset}, outputs {', '.join(names)}, dynamic "
          f"height / width up to {pad}, detections per image) in {time.perf_counter() - start:.0f} s")
    results = compare_detector(adapter, args.output, images)
    for size, (count, count_onnx, error) in zip(sizes, results):
        agree = "the same detections and classes" if np.isfinite(error) else "DIFFERENT detections or classes"
        print(f"  onnxruntime vs PyTorch at {size[0]}x{size[1]}: {count} / {count_onnx} detections, {agree}; "
              f"largest difference {error:.2e} of the largest value")
    if max(error for *_, error in results) > args.tolerance:
        print(f"largest difference above --tolerance {args.tolerance}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
