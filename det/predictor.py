"""Predictor: a detector config + weights as a callable on images, as tools/infer_det.py runs it.

    cfg = LazyConfig.load("configs/coco/eva02_L_sys.py")
    predictor = Predictor(cfg, "eva02_L_coco_sys.pth", device="cuda", score_thresh=0.5)
    instances = predictor(read_image("photo.jpg", format=predictor.input_format))
"""
from __future__ import annotations

import logging

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from .checkpoint import load_detector_weights

__all__ = ["Predictor", "test_dataset_metadata"]

logger = logging.getLogger("eva02.det")


class Predictor:
    """The config's model in eval mode with its weights and its test-time resize; call with an image.

    Every model weight must be in `weights` (IncompleteCheckpointError otherwise) unless allow_partial."""

    def __init__(self, cfg, weights: str, device: str = "cpu", score_thresh: float | None = None,
                 use_ema: bool = False, weights_only: bool = True, allow_partial: bool = False):
        self.model = instantiate(cfg.model).to(device).eval()
        incompatible = load_detector_weights(self.model, weights, use_ema=use_ema, weights_only=weights_only,
                                             require="any" if allow_partial else "all")
        if incompatible.missing_keys:
            logger.warning(f"{weights}: {len(incompatible.missing_keys)} model weights not in the file "
                           f"(e.g. {incompatible.missing_keys[:3]}): predictions use their initial values")
        if score_thresh is not None:
            for module in self.model.modules():
                if isinstance(module, FastRCNNOutputLayers):
                    module.test_score_thresh = score_thresh
        self.augmentations = T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))
        self.input_format = self.model.input_format
        self.device = device

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        """image (H, W, 3) uint8 in the model's input_format -> detectron2 Instances at image size, on the CPU."""
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1)).to(self.device)
        return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")


def test_dataset_metadata(cfg):
    """Metadata of the config's (first) test dataset: class names and dataset category ids."""
    names = cfg.dataloader.test.dataset.names
    return MetadataCatalog.get(names if isinstance(names, str) else names[0])
