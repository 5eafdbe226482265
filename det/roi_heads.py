"""Cascade ROI heads with the EVA-02 "sys" inference: class-wise soft-NMS, per-image top-k, maskness rescoring."""
from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.structures import Boxes, Instances

from .postprocess import maskness, soft_nms

NMS_METHODS = {"nms": None, "soft_linear": "linear", "soft_gaussian": "gaussian"}


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, image_size, method: str,
                      iou_threshold: float, sigma: float = 0.5, min_score: float = 1e-3,
                      topk: int | None = None) -> Instances:
    """Class-wise NMS of candidate detections -> Instances, best first. method "nms": hard NMS at iou_threshold
    (detectron2's), keeping the top `topk`; "soft_linear" / "soft_gaussian": soft-NMS (eva02.det.postprocess),
    every survivor unless `topk`. boxes (N, 4), scores (N,), labels (N,)."""
    if method not in NMS_METHODS:
        raise ValueError(f"nms_method must be one of {sorted(NMS_METHODS)}, got {method!r}")
    if method == "nms":
        keep = batched_nms(boxes, scores, labels, iou_threshold)
        keep = keep[:topk] if topk is not None and topk >= 0 else keep
        kept_scores = scores[keep]
    else:
        keep, kept_scores = soft_nms(boxes, scores, labels, method=NMS_METHODS[method], iou_threshold=iou_threshold,
                                     sigma=sigma, min_score=min_score, topk=topk)
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = kept_scores
    result.pred_classes = labels[keep]
    return result


class EVACascadeROIHeads(CascadeROIHeads):
    """detectron2's `CascadeROIHeads` (built with the same arguments) plus a choice of NMS and maskness.

    Training is the parent's. At inference the cascade scores are averaged over the stages and the boxes
    come from the last stage (as in the parent); candidates above the predictor's `test_score_thresh` then go
    through class-wise soft-NMS with IoU threshold `test_nms_thresh` (``nms_method="nms"`` keeps the parent's
    hard NMS), masks are predicted, and with `maskness_thresh` set every score is multiplied by the maskness of
    its mask.

    After soft-NMS every survivor is returned, as the official "sys" evaluation does (hundreds per image): the
    evaluator's own limits then apply (COCOeval keeps 100 per image *and category*, LVISEval the top
    `max_dets_per_image` per image by final score), which is how the published numbers were made.
    ``soft_nms_topk=True`` keeps only the predictor's `test_topk_per_image` best per image instead, the
    standard protocol of plain NMS (which always caps, as in detectron2).
    """

    @configurable
    def __init__(
        self,
        *,
        nms_method: str = "nms",
        soft_nms_sigma: float = 0.5,
        soft_nms_min_score: float = 1e-3,
        soft_nms_topk: bool = False,
        maskness_thresh: float | None = None,
        **kwargs,
    ):
        """nms_method: "nms" | "soft_linear" | "soft_gaussian"; soft_nms_sigma: the Gaussian's sigma;
        soft_nms_min_score: boxes decayed below it are dropped; soft_nms_topk: cap the soft-NMS output at
        `test_topk_per_image` per image (False: every survivor, official); maskness_thresh: mask probability
        above which a pixel counts as foreground for maskness (None: no rescoring). Other arguments:
        `CascadeROIHeads`."""
        if nms_method not in NMS_METHODS:
            raise ValueError(f"nms_method must be one of {sorted(NMS_METHODS)}, got {nms_method!r}")
        super().__init__(**kwargs)
        self.nms_method = nms_method
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_min_score = soft_nms_min_score
        self.soft_nms_topk = soft_nms_topk
        self.maskness_thresh = maskness_thresh

    def _forward_box(self, features, proposals, targets=None):
        if self.training or self.nms_method == "nms":
            return super()._forward_box(features, proposals, targets)
        boxes, scores = self.cascade_predictions(features, proposals)
        return [
            self._soft_nms_single_image(b, s, p.image_size) for b, s, p in zip(boxes, scores, proposals)
        ]

    def cascade_predictions(self, features, proposals):
        """The parent's inference up to (but not including) NMS.

        Returns per image: boxes (R, 4) of the last stage and class scores (R, K+1) averaged over the stages.
        """
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stage_scores = []
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(features, proposals, stage)
            boxes = self.box_predictor[stage].predict_boxes(predictions, proposals)
            stage_scores.append(self.box_predictor[stage].predict_probs(predictions, proposals))
        # Same arithmetic as the parent (sum, then times 1/n) so both paths see identical scores.
        scores = [sum(per_image) * (1.0 / self.num_cascade_stages) for per_image in zip(*stage_scores)]
        return boxes, scores

    def _soft_nms_single_image(self, boxes: torch.Tensor, scores: torch.Tensor, image_size) -> Instances:
        """boxes (R, 4) class-agnostic or (R, K*4), scores (R, K+1) with background last -> Instances, best first."""
        predictor = self.box_predictor[-1]
        return select_detections(*self.candidates(boxes, scores, image_size), image_size, self.nms_method,
                                 predictor.test_nms_thresh, self.soft_nms_sigma, self.soft_nms_min_score,
                                 predictor.test_topk_per_image if self.soft_nms_topk else None)

    def candidates(self, boxes: torch.Tensor, scores: torch.Tensor, image_size):
        """Every (box, class) above the last predictor's test_score_thresh, before any NMS: boxes (N, 4) clipped
        to image_size, scores (N,), labels (N,). boxes (R, 4) or (R, K*4), scores (R, K+1), background last."""
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[valid], scores[valid, :-1]
        num_reg_classes = boxes.shape[1] // 4
        clipped = Boxes(boxes.reshape(-1, 4))
        clipped.clip(image_size)
        boxes = clipped.tensor.view(-1, num_reg_classes, 4)
        candidate, label = torch.nonzero(scores > self.box_predictor[-1].test_score_thresh, as_tuple=True)
        return boxes[candidate, label if num_reg_classes > 1 else 0], scores[candidate, label], label

    def forward_with_given_boxes(self, features, instances):
        instances = super().forward_with_given_boxes(features, instances)
        if self.maskness_thresh is None:
            return instances
        rescored = []
        for inst in instances:
            if not inst.has("pred_masks"):
                raise ValueError("maskness_thresh is set but the ROI heads predict no masks (mask_on is False)")
            inst.scores = inst.scores * maskness(inst.pred_masks, self.maskness_thresh)
            rescored.append(inst[inst.scores.argsort(descending=True, stable=True)])
        return rescored
