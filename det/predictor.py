"""DetPredictor: a detector config + weights as a callable on images (what tools/infer_det.py runs).

    from eva02.det import DetPredictor
    predictor = DetPredictor("configs/coco/eva02_L_sys.py", "eva02_L_coco_sys.pth")   # device: cuda if present
    found = predictor("photo.jpg")                   # or an (H, W, 3) uint8 RGB array
    found.boxes, found.scores, found.classes, found.masks, found.class_names
    many = predictor.predict(["a.jpg", "b.jpg", bgr_array], batch_size=4, format="BGR")   # cv2 arrays: BGR
    DetPredictor(cfg, weights, tta=True)                 # the config's dataloader.tta (multi-scale + flip)

The config's test transform (its test mapper's resize) is applied to each image; results are at the image's
own size, on the CPU. Class names come from the checkpoint (ours store the training set's), else from the
config's test dataset, else "0", "1", ...
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Instances

from eva02.common.cli import default_device

from .checkpoint import EVACheckpointer
from .config import load_config
from .tta import build_tta

__all__ = ["Detections", "DetPredictor", "test_dataset_metadata"]

logger = logging.getLogger("eva02.det")


@dataclass
class Detections:
    """The detections of one image, best first: boxes (N, 4) float32 x0, y0, x1, y1 in image pixels, scores (N,),
    classes (N,) int64 class indexes, masks (N, H, W) bool or None (box-only models), class_names (N,), and
    detectron2's `instances` (the same, for its Visualizer and evaluators)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None
    class_names: list[str]
    instances: Instances

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_instances(cls, instances: Instances, names: Sequence[str]) -> "Detections":
        classes = instances.pred_classes.numpy().astype(np.int64)
        masks = instances.pred_masks.numpy().astype(bool) if instances.has("pred_masks") else None
        return cls(instances.pred_boxes.tensor.numpy().astype(np.float32), instances.scores.numpy(), classes, masks,
                   [names[c] for c in classes], instances)


class DetPredictor:
    """The config's model in eval mode with its weights and its test transform; call it on images.

    Args:
        config: a LazyConfig file path (with `overrides`, KEY=VALUE) or a loaded config.
        weights: checkpoint (ours or an official release); every model weight must be in it, and its class
            count must be the config's (IncompleteCheckpointError otherwise) unless allow_partial.
        device: default cuda when a GPU exists, else cpu.
        score_thresh: drop detections below this score (every box predictor's test_score_thresh).
        use_ema: load the checkpoint's EMA weights. weights_only: False unpickles (trusted files only).
        tta: use the config's test-time augmentation (dataloader.tta); None: as the config's tta.enabled says.
    """

    def __init__(self, config, weights: str, device: str | None = None, score_thresh: float | None = None,
                 use_ema: bool = False, weights_only: bool = True, allow_partial: bool = False,
                 tta: bool | None = None, overrides: Sequence[str] = ()):
        cfg = load_config(str(config), list(overrides)) if isinstance(config, (str, os.PathLike)) else config
        self.device = device or default_device()
        self.model = instantiate(cfg.model).to(self.device).eval()
        checkpointer = EVACheckpointer(self.model, use_ema=use_ema, weights_only=weights_only,
                                       require="any" if allow_partial else "all")
        checkpointer.load(str(weights), checkpointables=[])
        if checkpointer.last_incompatible.missing_keys:
            missing = checkpointer.last_incompatible.missing_keys
            logger.warning(f"{weights}: {len(missing)} model weights not in the file (e.g. {missing[:3]}): "
                           "predictions use their initial values")
        if score_thresh is not None:
            for module in self.model.modules():
                if isinstance(module, FastRCNNOutputLayers):
                    module.test_score_thresh = score_thresh
        num_classes = cfg.model.roi_heads.num_classes
        metadata = test_dataset_metadata(cfg)
        self.class_names = list(checkpointer.loaded_classes or metadata.get("thing_classes", None)
                                or [str(i) for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(f"{weights}: {len(self.class_names)} class names for a model of {num_classes} classes "
                             "(model.roi_heads.num_classes)")
        self.augmentations = T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))
        use_tta = cfg.dataloader.get("tta", {}).get("enabled", False) if tta is None else tta
        if use_tta and "tta" not in cfg.dataloader:
            raise ValueError("tta=True but the config has no dataloader.tta settings")
        self.tta = build_tta(self.model, cfg.dataloader.tta) if use_tta else None
        self.input_format = self.model.input_format

    def _input(self, image, format: str) -> dict:
        if isinstance(image, (str, os.PathLike)):
            image = read_image(str(image), format=self.input_format)  # decodes to the last byte or raises
        else:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an (H, W, 3) uint8 image array, got {image.shape} {image.dtype}")
            if format != self.input_format:
                image = image[:, :, ::-1]
        height, width = image.shape[:2]
        if self.tta is not None:  # the augmentations resize the original image themselves
            resized = image
        else:
            aug_input = T.AugInput(image)
            self.augmentations(aug_input)
            resized = aug_input.image
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    @torch.no_grad()
    def predict(self, images: Sequence, batch_size: int = 1, format: str = "RGB") -> list[Detections]:
        """images: paths, or (H, W, 3) uint8 arrays in `format` ("RGB", or "BGR" for cv2.imread) -> one
        Detections per image. A path that does not decode raises (OSError / ValueError naming it)."""
        model = self.tta or self.model
        results = []
        for start in range(0, len(images), max(batch_size, 1)):
            inputs = [self._input(image, format) for image in images[start:start + batch_size]]
            for output in model(inputs):
                results.append(Detections.from_instances(output["instances"].to("cpu"), self.class_names))
        return results

    def __call__(self, image, format: str = "RGB") -> Detections:
        """One image (path or array in `format`) -> its Detections."""
        return self.predict([image], format=format)[0]


def test_dataset_metadata(cfg):
    """Metadata of the config's (first) test dataset: class names and dataset category ids."""
    names = cfg.dataloader.test.dataset.names
    return MetadataCatalog.get(names if isinstance(names, str) else names[0])
