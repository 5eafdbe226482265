"""Detection test-time augmentation: multi-scale + horizontal flip, merged as the official EVA-02 code intended.

The official release's `GeneralizedRCNNWithTTA` (EVA-02/det/detectron2/modeling/test_time_augmentation.py) is
dead code there (never wired to a config); what it was written to do, and what `DetectorTTA` does:
  1. run the detector on every augmented image (longest side resized to each of `sizes`, each also flipped),
     keeping every (box, class) candidate above the score threshold *before* any NMS (its keep_all_before_merge);
  2. map the boxes back to the image and merge the union with one class-wise soft-NMS, by default the paper's
     "sys" setting (linear, IoU 0.6, min score 1e-3; its use_soft_nms / class_wise branch);
  3. predict masks for the merged boxes on every augmented image and average the probabilities (flipped back),
     as detectron2's TTA does (the official one, unfinished, took one scale); then, when the model rescores by
     maskness, rescore with the averaged masks.
With one size equal to the test size and no flip, it returns what the model returns alone (tested).
The paper reports no detection TTA; `dataloader.tta` in the configs holds the settings (off by default).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from detectron2.data.transforms import (HFlipTransform, NoOpTransform, ResizeShortestEdge, ResizeTransform,
                                        TransformList)
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from .postprocess import maskness
from .roi_heads import select_detections

__all__ = ["DetectorTTA", "build_tta"]


class DetectorTTA(nn.Module):
    """An EVA-02 Cascade (Mask) R-CNN (`EVACascadeROIHeads`) with test-time augmentation; called like the model
    in eval mode: list of {"image": (3, H, W) tensor in the model's input_format, "height", "width"} -> list of
    {"instances": Instances at (height, width)}. The image may be the original or a resized one.

    Args:
        model: the detector (a detectron2 GeneralizedRCNN with EVACascadeROIHeads).
        sizes: longest-side sizes of the augmented images (each resized as the test transform does).
        flip: also run every size horizontally flipped.
        nms_method, nms_thresh, soft_nms_sigma, soft_nms_min_score: the merge (eva02.det.roi_heads
            select_detections); topk_per_image: keep at most this many per image (None or -1: every survivor).
    """

    def __init__(self, model: nn.Module, sizes: Sequence[int], flip: bool = True, nms_method: str = "soft_linear",
                 nms_thresh: float = 0.6, soft_nms_sigma: float = 0.5, soft_nms_min_score: float = 1e-3,
                 topk_per_image: int | None = None):
        super().__init__()
        if not sizes:
            raise ValueError("DetectorTTA needs at least one size (the config's dataloader.tta.sizes is empty)")
        self.model = model
        self.sizes = [int(s) for s in sizes]
        self.flip = flip
        self.merge = dict(method=nms_method, iou_threshold=nms_thresh, sigma=soft_nms_sigma,
                          min_score=soft_nms_min_score,
                          topk=topk_per_image if topk_per_image is not None and topk_per_image >= 0 else None)

    @property
    def input_format(self) -> str:
        return self.model.input_format

    @torch.no_grad()
    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        return [{"instances": self._one_image(x)} for x in batched_inputs]

    def _augmented(self, inputs: dict) -> list[tuple[list[dict], list[TransformList], list[bool]]]:
        """Groups of augmented inputs, one group per size (the image and its flip, batched together), with the
        transforms from the original image to each."""
        image = inputs["image"]
        array = image.permute(1, 2, 0).cpu().numpy()
        orig_h, orig_w = inputs["height"], inputs["width"]
        pre = ResizeTransform(orig_h, orig_w, *array.shape[:2]) if array.shape[:2] != (orig_h, orig_w) \
            else NoOpTransform()
        groups = []
        for size in self.sizes:
            resize = ResizeShortestEdge(size, size).get_transform(array)
            resized = resize.apply_image(array)
            variants = [(resized, TransformList([pre, resize]), False)]
            if self.flip:
                flip = HFlipTransform(resized.shape[1])
                variants.append((flip.apply_image(resized), TransformList([pre, resize, flip]), True))
            batch = [{"image": torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(image.dtype),
                      "height": orig_h, "width": orig_w} for a, _, _ in variants]
            groups.append((batch, [t for _, t, _ in variants], [f for _, _, f in variants]))
        return groups

    @contextlib.contextmanager
    def _padded_for(self, batch: list[dict]):
        """Square padding at least as large as the augmented images (the config's pads to the test size)."""
        backbone = self.model.backbone
        old = getattr(backbone, "_square_pad", 0)
        if old:
            step = max(backbone.size_divisibility, 1)
            longest = max(max(x["image"].shape[-2:]) for x in batch)
            backbone._square_pad = max(old, -(-longest // step) * step)
        try:
            yield
        finally:
            if old:
                backbone._square_pad = old

    def _features(self, batch: list[dict]):
        images = self.model.preprocess_image(batch)
        return images, self.model.backbone(images.tensor)

    def _one_image(self, inputs: dict) -> Instances:
        model, heads = self.model, self.model.roi_heads
        orig_hw = (inputs["height"], inputs["width"])
        groups = self._augmented(inputs)
        boxes, scores, labels = [], [], []
        for batch, transforms, _ in groups:
            with self._padded_for(batch):
                images, features = self._features(batch)
                proposals, _ = model.proposal_generator(images, features, None)
                stage_boxes, stage_scores = heads.cascade_predictions(features, proposals)
            for b, s, proposal, tfm in zip(stage_boxes, stage_scores, proposals, transforms):
                cand_boxes, cand_scores, cand_labels = heads.candidates(b, s, proposal.image_size)
                back = tfm.inverse().apply_box(cand_boxes.cpu().numpy())
                boxes.append(torch.as_tensor(back, dtype=cand_boxes.dtype, device=cand_boxes.device))
                scores.append(cand_scores)
                labels.append(cand_labels)
        merged_boxes = Boxes(torch.cat(boxes))
        merged_boxes.clip(orig_hw)
        merged = select_detections(merged_boxes.tensor, torch.cat(scores), torch.cat(labels), orig_hw, **self.merge)
        if heads.mask_on and len(merged):
            merged.pred_masks = self._average_masks(groups, merged)
            if heads.maskness_thresh is not None:
                merged.scores = merged.scores * maskness(merged.pred_masks, heads.maskness_thresh)
                merged = merged[merged.scores.argsort(descending=True, stable=True)]
        return detector_postprocess(merged, *orig_hw)

    def _average_masks(self, groups, merged: Instances) -> torch.Tensor:
        """Mask probabilities of the merged detections, (R, 1, M, M), averaged over every augmented image."""
        total, count = None, 0
        for batch, transforms, flipped in groups:
            with self._padded_for(batch):
                _, features = self._features(batch)
                per_image = []
                for x, tfm in zip(batch, transforms):
                    boxes = tfm.apply_box(merged.pred_boxes.tensor.cpu().numpy())
                    inst = Instances(tuple(x["image"].shape[-2:]), pred_classes=merged.pred_classes,
                                     pred_boxes=Boxes(torch.as_tensor(boxes, device=merged.scores.device,
                                                                      dtype=merged.pred_boxes.tensor.dtype)))
                    per_image.append(inst)
                outputs = self.model.roi_heads._forward_mask(features, per_image)
            for out, was_flipped in zip(outputs, flipped):
                masks = out.pred_masks.flip(dims=[3]) if was_flipped else out.pred_masks
                total = masks if total is None else total + masks
                count += 1
        return total / count


def build_tta(model: nn.Module, tta_cfg) -> DetectorTTA:
    """DetectorTTA from a config's `dataloader.tta` node (its `enabled` aside)."""
    return DetectorTTA(model, **{k: v for k, v in dict(tta_cfg).items() if k != "enabled"})
