"""Helpers that the LazyConfig files call, so each paper-table config states only its table's values, and the
checked command-line overrides of the tools."""
from __future__ import annotations

import os

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import LinearParamScheduler, MultiStepParamScheduler

from eva02.common.cli import UsageError, check_override_keys, takes_argument

__all__ = ["apply_overrides", "load_config", "set_input_size", "set_head_width", "step_schedule",
           "constant_schedule", "lsj_augmentations", "sys_inference", "tta_sizes", "TTA_SIZE_RATIOS"]


def lsj_augmentations(size: int, min_scale: float = 0.1, max_scale: float = 2.0) -> list:
    """Large-scale jitter (docs/reference.md §2): random flip, resize to 0.1-2.0 of the crop, fixed-size crop."""
    return [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(min_scale=min_scale, max_scale=max_scale, target_height=size, target_width=size),
        L(T.FixedSizeCrop)(crop_size=(size, size), pad=False),  # the model pads to the square
    ]


# Test-time augmentation sizes relative to the test size: the official code's intended list for its 1536 models,
# (1280, 1536, 1664, 1792, 1920, 2048) / 1536 (EVA-02/det/detectron2/modeling/test_time_augmentation.py).
TTA_SIZE_RATIOS = (5 / 6, 1.0, 13 / 12, 7 / 6, 5 / 4, 4 / 3)


def tta_sizes(size: int, ratios=TTA_SIZE_RATIOS, multiple: int = 16) -> list[int]:
    """Test-time augmentation sizes: size * ratio, rounded to a multiple of the patch size, without repeats."""
    return sorted({max(multiple, round(size * r / multiple) * multiple) for r in ratios})


def set_input_size(model, dataloader, size: int, patch_size: int = 16, min_scale: float = 0.1,
                   max_scale: float = 2.0) -> None:
    """Crop size everywhere it matters: LSJ crop (scale range min_scale-max_scale), test resize (longest side),
    square padding, the global RoPE grid (size / patch, so a square input gives the official tables), and the
    test-time augmentation sizes (tta_sizes)."""
    model.backbone.square_pad = size
    model.backbone.net.rope_grid = size // patch_size
    dataloader.train.mapper.augmentations = lsj_augmentations(size, min_scale, max_scale)
    dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=size, max_size=size)]
    if "tta" in dataloader:
        dataloader.tta.sizes = tta_sizes(size, multiple=patch_size)


def step_schedule(max_iter: int, milestones, warmup_iters: int = 1000):
    """lr multiplier: linear warmup from 0.001, then x0.1 at each milestone (official bsl/sys recipe)."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[0.1**i for i in range(len(milestones) + 1)],
                                             milestones=list(milestones),
                                             num_updates=max_iter),
        warmup_length=warmup_iters / max_iter,
        warmup_factor=0.001,
    )


def constant_schedule(max_iter: int, warmup_iters: int = 1000):
    """lr multiplier: linear warmup from 0.001, then constant (O365-initialized fine-tuning)."""
    return L(WarmupParamScheduler)(
        # constant 1.0; fvcore's ConstantParamScheduler rejects where == 1.0, which detectron2's LR hook
        # reaches after the last step
        scheduler=L(LinearParamScheduler)(start_value=1.0, end_value=1.0),
        warmup_length=warmup_iters / max_iter,
        warmup_factor=0.001,
    )


def set_head_width(model, channels: int, fc_dim: int) -> None:
    """Width of the feature pyramid and of every head (RPN, box, mask): 256 / 1024 in all paper configs;
    the CPU demo uses narrower heads."""
    model.backbone.out_channels = channels
    model.proposal_generator.head.in_channels = channels
    for head in model.roi_heads.box_heads:
        head.input_shape.channels = channels
        head.conv_dims = [channels] * len(head.conv_dims)
        head.fc_dims = [fc_dim] * len(head.fc_dims)
    for predictor in model.roi_heads.box_predictors:
        predictor.input_shape.channels = fc_dim
    if "mask_head" in model.roi_heads:  # box-only models (Objects365) have none
        model.roi_heads.mask_head.input_shape.channels = channels
        model.roi_heads.mask_head.conv_dims = [channels] * len(model.roi_heads.mask_head.conv_dims)


def sys_inference(model, score_thresh: float, topk_per_image: int, maskness_thresh: float | None = 0.5) -> None:
    """The "sys" inference of Tables 30-33 as the official release evaluates it: cascade scores above
    `score_thresh`, class-wise linear soft-NMS at IoU 0.6 (min score 1e-3), every survivor passed on to the
    evaluator (no per-image cap: set model.roi_heads.soft_nms_topk=True for the standard protocol, which keeps
    `topk_per_image`), then maskness rescoring with `maskness_thresh` (None: off).

    How the official release reports the numbers: COCO (Tables 30, 32) takes two runs, box AP from one with
    model.roi_heads.maskness_thresh=None and mask AP from the config as it stands (maskness 0.5); LVIS (Tables
    31, 33) reports box and mask AP from one run with maskness 0.5."""
    for predictor in model.roi_heads.box_predictors:
        predictor.update(test_score_thresh=score_thresh, test_nms_thresh=0.6, test_topk_per_image=topk_per_image)
    model.roi_heads.update(nms_method="soft_linear", soft_nms_min_score=1e-3, soft_nms_topk=False,
                           maskness_thresh=maskness_thresh)


def _lazy_call_argument(node, name: str) -> bool:
    """A key a LazyCall node does not list yet, but its target takes (e.g. a constructor default)."""
    target = node.get("_target_")
    target = locate(target) if isinstance(target, str) else target
    return target is not None and takes_argument(target, name)


def apply_overrides(cfg, overrides: list[str]):
    """LazyConfig.apply_overrides, after checking that every KEY of KEY=VALUE names an entry of the config or an
    argument of a LazyCall's target: a mistyped key (train.max_itr) is an error naming the closest key instead of
    a new setting nothing reads. A VALUE of None means None, as Hydra's null does (Hydra alone would set the
    string "None", which no setting takes)."""
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not KEY=VALUE")
    check_override_keys(cfg, [item.split("=", 1)[0] for item in overrides], _lazy_call_argument)
    overrides = [item[: -len("None")] + "null" if item.split("=", 1)[1] == "None" else item for item in overrides]
    return LazyConfig.apply_overrides(cfg, overrides)


def load_config(config_file: str, overrides: list[str]):
    """The LazyConfig file with the checked overrides applied (apply_overrides); UsageError for a missing file."""
    if not os.path.isfile(config_file):
        raise UsageError(f"--config-file {config_file}: no such file")
    return apply_overrides(LazyConfig.load(config_file), overrides)
