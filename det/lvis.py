"""LVIS pieces: federated-loss class weights, repeat-factor sampling and a numpy-2-safe LVISEvaluator.

Federated loss (detectron2 / official EVA-02): sigmoid CE over the classes present in the batch plus classes
sampled with weight image_count ** 0.5, using the LVIS v1 per-class image counts that ship with detectron2
(`lvis_v1_category_image_count`), so no annotation file is needed to build the model.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import torch
from detectron2.config import LazyCall as L
from detectron2.data.datasets.lvis_v1_category_image_count import LVIS_CATEGORY_IMAGE_COUNT
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import LVISEvaluator as D2LVISEvaluator

from .unreadable import LeavesOutUnreadable

__all__ = ["FedLossClassWeights", "LVISEvaluator", "repeat_factor_sampler", "numpy_float_alias", "NUM_LVIS_CLASSES"]

NUM_LVIS_CLASSES = len(LVIS_CATEGORY_IMAGE_COUNT)  # 1203


class FedLossClassWeights:
    """Callable for FastRCNNOutputLayers(get_fed_loss_cls_weights=...): LVIS v1 image count ** power, (1203,)."""

    def __init__(self, power: float = 0.5):
        self.power = power

    def __call__(self) -> torch.Tensor:
        counts = [c["image_count"] for c in sorted(LVIS_CATEGORY_IMAGE_COUNT, key=lambda c: c["id"])]
        return torch.tensor(counts, dtype=torch.float32) ** self.power


def repeat_factor_sampler(repeat_thresh: float = 0.001, dataset: str = "${dataloader.train.dataset}"):
    """LazyCall of detectron2's RepeatFactorTrainingSampler with category-frequency repeat factors (LVIS)."""
    return L(RepeatFactorTrainingSampler)(
        repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
            dataset_dicts=dataset, repeat_thresh=repeat_thresh))


@contextmanager
def numpy_float_alias():
    """`np.float` as the builtin float while the block runs, removed again after: lvis 0.5.3's LVISEval still
    calls np.float (lvis/eval.py line 361), which numpy 2 removed. Nothing outside the block sees it."""
    added = not hasattr(np, "float")
    if added:
        np.float = float
    try:
        yield
    finally:
        if added:
            del np.float


class LVISEvaluator(LeavesOutUnreadable, D2LVISEvaluator):
    """detectron2's LVISEvaluator, evaluating under numpy_float_alias so lvis's LVISEval runs on numpy 2, and
    leaving unreadable images out of the metric (eva02.det.unreadable.LeavesOutUnreadable)."""

    def _dataset_image_ids(self) -> list:
        return self._lvis_api.get_img_ids()

    def _evaluate_images(self, img_ids):
        api = self._lvis_api
        if img_ids is not None:  # LVISEval evaluates the images its ground truth lists: a copy listing these
            self._lvis_api = copy.copy(api)
            ids = sorted(img_ids)
            self._lvis_api.get_img_ids = lambda: ids
        try:
            with numpy_float_alias():
                return D2LVISEvaluator.evaluate(self)
        finally:
            self._lvis_api = api
