"""Peak GPU memory of a detection config's training step and inference, without a GPU (eva02.common.memory).

The trace runs the config's own model and the training loop's own step (`EVATrainer.run_step`: autocast,
losses, backward, the config's AdamW with its layer-decay groups, EMA when the config has it), twice, so the
second step runs with the optimizer state of a steady-state iteration. Inputs: `batch` images of
`size` x `size` (the LSJ crop every training image is cut to, the worst case of the test resize) with
`objects` ground-truth objects each.

Where the detector's data decides a size, the trace takes the largest the code allows (every anchor a
candidate, every box kept by NMS), with two bounds the code itself sets: the mask head gets the sampler's cap of
foreground RoIs per image (positive_fraction x batch_size_per_image, 128 in the paper configs), reached in a
crowded image; and inference returns `detections` per image (default: the config's test_topk_per_image;
soft-NMS configs that keep every survivor return more in crowded images).

Two host-side steps are stood in for, keeping their output shapes: polygon ground-truth masks are rasterized per
RoI on the CPU, and torchvision's per-level NMS loop is replaced by its one-call equivalent (same result).
"""
from __future__ import annotations

import contextlib
import copy
from unittest import mock

import numpy as np
import torch
import torchvision.ops.boxes as tv_boxes
from detectron2.config import instantiate
from detectron2.modeling.roi_heads import roi_heads as d2_roi_heads
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from eva02.common.memory import MemoryEstimate, estimate_memory
from eva02.common.precision import autocast_dtype
from eva02.common.sharding import shard
from eva02.common.upstream import patched

from .config import set_input_size
from .ema import ModelEMA
from .engine import EVATrainer, config_precision

__all__ = ["plan_detector", "detector_step", "training_images", "DEFAULT_OBJECTS"]

# Objects per training image: 93 is the most any COCO train2017 image has; the matcher's IoU matrices grow with it.
DEFAULT_OBJECTS = 100


def _planning_config(cfg, size: int, checkpointing: bool | None):
    cfg = copy.deepcopy(cfg)
    set_input_size(cfg.model, cfg.dataloader, size, patch_size=cfg.model.backbone.net.get("patch_size", 16))
    if checkpointing is not None:
        cfg.model.backbone.net.use_checkpoint = checkpointing
    cfg.model.backbone.net.compile_blocks = False  # traced eagerly; compiled blocks usually keep fewer intermediates
    return cfg


def training_images(batch: int, size: int, objects: int, polygons: bool, num_classes: int) -> list[dict]:
    """LSJ-sized training inputs (blank images) with `objects` boxes and masks each, spread over the image; the
    boxes and classes are real values (small tensors: the trace keeps them)."""
    rng = np.random.default_rng(0)
    data = []
    for _ in range(batch):
        xy = rng.uniform(0, size * 0.75, (objects, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, size * 0.25, (objects, 2))], axis=1).astype(np.float32)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.from_numpy(boxes))
        instances.gt_classes = torch.from_numpy(rng.integers(0, num_classes, objects))
        if polygons:
            instances.gt_masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]]] for b in boxes])
        else:
            instances.gt_masks = BitMasks(torch.zeros(objects, size, size, dtype=torch.bool))
        data.append({"image": torch.zeros(3, size, size, dtype=torch.uint8), "instances": instances,
                     "height": size, "width": size})
    return data


def _rasterized_polygons(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
    """PolygonMasks.crop_and_resize's output (rasterized on the host, then moved to the boxes' device)."""
    return torch.zeros(len(boxes), mask_size, mask_size, dtype=torch.bool, device=boxes.device)


def _indexed_polygons(index):
    """PolygonMasks[...] that does not read a tensor index's values (the trace may not have them): as many
    masks as the index selects at most, all the first one."""
    def getitem(self, item):
        if isinstance(item, torch.Tensor):
            return PolygonMasks([self.polygons[0]] * (item.numel() if item.dim() else 1))
        return index(self, item)
    return getitem


@contextlib.contextmanager
def _stand_ins(model, polygons: bool, detections: int | None):
    roi = model.roi_heads
    cap = int(roi.batch_size_per_image * roi.positive_fraction)
    select = d2_roi_heads.select_foreground_proposals
    detections = roi.box_predictor[-1].test_topk_per_image if detections is None else detections
    forward_box = roi._forward_box

    def capped_foreground(proposals, bg_label):
        foreground, masks = select(proposals, bg_label)
        return [p[:cap] for p in foreground], masks

    def capped_detections(*args, **kwargs):
        result = forward_box(*args, **kwargs)
        return result if roi.training else [r[:detections] for r in result]

    with contextlib.ExitStack() as stack:
        stack.enter_context(patched("batched_nms", tv_boxes._batched_nms_coordinate_trick))
        stack.enter_context(patched("foreground_proposals", capped_foreground))
        stack.enter_context(mock.patch.object(roi, "_forward_box", capped_detections))
        if polygons:
            stack.enter_context(patched("polygon_crop_and_resize", _rasterized_polygons))
            stack.enter_context(patched("polygon_getitem", _indexed_polygons(PolygonMasks.__getitem__)))
        yield


def plan_detector(cfg, batch: int, size: int, train: bool = True, precision: str | None = None,
                  checkpointing: bool | None = None, objects: int = DEFAULT_OBJECTS, target: str = "cuda",
                  attention: str = "auto", gpus: int = 1, detections: int | None = None,
                  sharded: bool = False) -> MemoryEstimate:
    """Peak memory of one GPU's training step (train=True) or inference (train=False: fp32 and no grad, as
    evaluation runs) for `batch` images of size x size. precision ("fp32" | "fp16" | "bf16") / checkpointing:
    None keeps the config's setting (train.amp, the backbone's use_checkpoint). gpus > 1: training under DDP, or
    sharded by FSDP2 over the gpus (sharded; rank 0's step, as train.parallel="fsdp" runs it).
    detections: per image at inference (default: the last box predictor's test_topk_per_image). target "cpu"
    counts as the CPU allocator does."""
    sharded = sharded and train and gpus > 1
    build, run = detector_step(cfg, batch, size, train, precision, checkpointing, objects, detections,
                               sharded=sharded)
    # inference on a fake GPU: detectron2 pastes masks in GPU-sized chunks there (one by one on a CPU)
    return estimate_memory(build, run, target=target, attention=attention, ddp=train and gpus > 1 and not sharded,
                           device="cuda" if target == "cuda" and not train else "cpu", world=gpus if sharded else 1)


def detector_step(cfg, batch: int, size: int, train: bool = True, precision: str | None = None,
                  checkpointing: bool | None = None, objects: int = DEFAULT_OBJECTS, detections: int | None = None,
                  steps: int = 2, sharded: bool = False):
    """(build, run) of plan_detector's step, for estimate_memory or, on real tensors,
    measure_peak. sharded: the training step shards the detector first (FSDP2 over the process group)."""
    cfg = _planning_config(cfg, size, checkpointing)
    polygons = cfg.dataloader.train.mapper.get("instance_mask_format", "polygon") == "polygon"
    dtype = autocast_dtype(precision or config_precision(cfg)) if train else None

    def build():
        model = instantiate(cfg.model)
        return model.train(train)

    def run(model, phase):
        with _stand_ins(model, polygons, detections):
            if train:
                _train_steps(model, cfg, phase, batch, size, objects, polygons, dtype, steps, sharded)
            else:
                with phase("inference"), torch.no_grad():
                    model([{"image": torch.zeros(3, size, size, dtype=torch.uint8), "height": size, "width": size}
                           for _ in range(batch)])

    return build, run


def _train_steps(model, cfg, phase, batch, size, objects, polygons, dtype, steps, sharded):
    """`steps` training steps as EVATrainer runs them, autocast included, on the model's device: the CPU in the
    trace (no grad scaler there; it scales one scalar and unscales in place), the GPU in measure_peak. Phases:
    "forward" (the model's call), "first step" (the optimizer state is created in it) and "training step" (the
    last, steady-state step). sharded: as do_train shards, before the optimizer is made."""
    device = next(model.parameters()).device
    if sharded:
        shard(model, model.backbone.net.blocks, device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    data = training_images(batch, size, objects, polygons, model.roi_heads.num_classes)
    trainer = EVATrainer(model, iter(lambda: data, None), optimizer, precision=dtype, device=device.type,
                         sharded=sharded)
    if sharded:  # logging pickles the losses (host-side scalars) to rank 0, which a fake process group cannot
        trainer._write_metrics = lambda *args, **kwargs: None
    ema = ModelEMA(cfg.train.model_ema.decay) if cfg.train.model_ema.enabled else None
    forward = contextlib.ExitStack()
    hooks = [model.register_forward_pre_hook(lambda *_: forward.enter_context(phase("forward"))),
             model.register_forward_hook(lambda *_: forward.close())]
    with EventStorage(0) as storage:
        for i in range(steps):
            trainer.iter = storage.iter = i
            with phase("first step" if i == 0 else "training step"):
                trainer.run_step()
                if ema is not None:
                    ema.update(model)
    for hook in hooks:
        hook.remove()
