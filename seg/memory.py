"""Peak GPU memory of a segmentation config's training step and inference, without a GPU (eva02.common.memory).

The trace builds the config's segmentor and optimizer wrapper (layer-decay AdamW) as training does and runs
mmengine's `train_step` (data preprocessor, losses, backward, step) twice, so the second step runs with the
optimizer state of a steady-state iteration; fp16 / bf16 AMP is the autocast AmpOptimWrapper puts around the
forward. Inputs: `batch` crops of `size` x `size` whose label maps hold `classes` classes (Mask2Former builds one
ground-truth mask per class present). SyncBN is traced as BN, with the same tensors. Inference is the config's
test mode (whole image or sliding window) on one size x size image per batch entry, in fp32 and without
gradients.

Mask2Former's Hungarian matching runs on the host (scipy) on costs the trace has no values for: it is stood in
for by matching query i to ground truth i, which keeps every shape the real match gives.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.apis import init_model
from mmseg.structures import SegDataSample

from eva02.common.memory import MemoryEstimate, estimate_memory
from eva02.common.precision import autocast, autocast_dtype
from eva02.common.sharding import shard
from eva02.common.upstream import patched

from .optim import config_precision

__all__ = ["plan_segmentor", "segmentor_step", "DEFAULT_CLASSES"]

# Classes present in one training crop: ADE20K images have about 9 on average, many more in cluttered scenes.
DEFAULT_CLASSES = 30


def _diagonal_match(cost):
    """The shapes of scipy's linear_sum_assignment, without reading the cost values: query i <-> target i."""
    n = min(cost.shape)
    return np.arange(n), np.arange(n)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """F.batch_norm that accepts one value per channel (UperNet's pooled 1x1 map of a single image, which SyncBN
    normalizes over every GPU's images) by using the running statistics there: the same tensors, less two
    per-channel vectors."""
    if training and input.numel() == input.shape[1]:
        training = False
    return _torch_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


_torch_batch_norm = torch.nn.functional.batch_norm


@contextlib.contextmanager
def _stand_ins():
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched("batch_norm", _batch_norm))
        try:
            import mmdet.models.task_modules.assigners.hungarian_assigner  # noqa: F401
        except ImportError:  # Mask2Former needs mmdet; UperNet does not
            pass
        else:
            stack.enter_context(patched("hungarian_match", _diagonal_match))
        yield


def _batch(batch: int, size: int, classes: int, num_classes: int) -> dict:
    """Images of size x size and label maps with `classes` classes in horizontal bands (real values: the classes
    present decide Mask2Former's ground-truth masks)."""
    rows = np.arange(size)[:, None] * classes // size
    labels = np.broadcast_to(rows % num_classes, (size, size)).astype(np.int64)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(labels.copy())[None])
        samples.append(sample)
    return {"inputs": [torch.zeros(3, size, size, dtype=torch.uint8) for _ in range(batch)], "data_samples": samples}


def segmentor_step(cfg: Config, batch: int, size: int, train: bool = True, precision: str | None = None,
                   checkpointing: bool | None = None, classes: int = DEFAULT_CLASSES, steps: int = 2,
                   sharded: bool = False):
    """(build, run) of plan_segmentor's step, for estimate_memory or, on real tensors,
    measure_peak. sharded: the training step shards the segmentor first (FSDP2 over the process group; a run
    shards after building its optimizer, whose state is made at the first step either way)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.data_preprocessor.size = (size, size)
    if checkpointing is not None:
        cfg.model.backbone.use_checkpoint = checkpointing
    cfg.model.backbone.compile_blocks = False  # traced eagerly; compiled blocks usually keep fewer intermediates
    dtype = autocast_dtype(precision or config_precision(cfg)) if train else None
    if train:  # mmengine's AmpOptimWrapper needs a GPU; the autocast it adds is put around the forward below
        cfg.optim_wrapper.type = "OptimWrapper"
        for key in ("dtype", "loss_scale"):
            cfg.optim_wrapper.pop(key, None)

    def build():
        # SyncBN -> BN: the same tensors; a sharded trace's fake process group would make SyncBN synchronize
        model = revert_sync_batchnorm(init_model(cfg, None, device="cpu"))
        return model.train(train)

    def run(model, phase):
        num_classes = model.decode_head.num_classes
        with _stand_ins():
            if not train:
                with phase("inference"), torch.no_grad():
                    model.test_step(_batch(batch, size, 1, num_classes))
                return
            device = next(model.parameters()).device  # the trace: the CPU; measure_peak: the GPU
            if sharded:
                shard(model, model.backbone.blocks, device)
            wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
            if dtype is not None:
                wrapper.optim_context = lambda _: autocast(device, dtype)
            data = _batch(batch, size, classes, num_classes)
            for i in range(steps):
                with phase("first step" if i == 0 else "training step"):
                    model.train_step(data, wrapper)

    return build, run


def plan_segmentor(cfg: Config, batch: int, size: int, train: bool = True, precision: str | None = None,
                   checkpointing: bool | None = None, classes: int = DEFAULT_CLASSES, target: str = "cuda",
                   attention: str = "auto", gpus: int = 1, sharded: bool = False) -> MemoryEstimate:
    """Peak memory of one GPU's training step (train=True) or inference (train=False) for `batch` images of
    size x size. precision ("fp32" | "fp16" | "bf16") / checkpointing: None keeps the config's setting
    (AmpOptimWrapper, the backbone's use_checkpoint). gpus > 1: training under DDP, or sharded by FSDP2 over the
    gpus (sharded; rank 0's step, as parallel="fsdp" runs it). target "cpu" counts as the CPU allocator does."""
    sharded = sharded and train and gpus > 1
    build, run = segmentor_step(cfg, batch, size, train, precision, checkpointing, classes, sharded=sharded)
    return estimate_memory(build, run, target=target, attention=attention, ddp=train and gpus > 1 and not sharded,
                           world=gpus if sharded else 1)
