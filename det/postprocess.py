"""Detection post-processing: class-wise soft-NMS (Bodla et al. 2017) and maskness rescoring.

Both run on whatever device their inputs are on and need only torch.
"""
from __future__ import annotations

import torch

SOFT_NMS_METHODS = ("linear", "gaussian")


def _iou_with_selected(planes: torch.Tensor, areas: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """IoU of the selected box of each row with every box of that row.

    planes (4, C, M): x1, y1, x2, y2 of the grid; areas (C, M); best (C,) column of each row's selected box
    -> (C, M). Same arithmetic order as mmcv's CPU kernel (offset 0), so scores agree with it to the last bit.
    """
    sel = planes.gather(2, best[None, :, None].expand(4, -1, 1))  # (4, C, 1)
    width = (torch.minimum(sel[2], planes[2]) - torch.maximum(sel[0], planes[0])).clamp_(min=0)
    height = (torch.minimum(sel[3], planes[3]) - torch.maximum(sel[1], planes[1])).clamp_(min=0)
    inter = width.mul_(height)
    return inter / (areas.gather(1, best[:, None]) + areas - inter)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor | None = None,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    min_score: float = 1e-3,
    topk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise soft-NMS.

    Repeatedly selects the highest-scoring remaining box of each class and decays the scores of the other
    remaining boxes of that class by their IoU with it: linear ``s *= 1 - IoU`` where ``IoU >= iou_threshold``
    (mmcv's and the paper's comparison; ties have measure zero for real-valued boxes), Gaussian
    ``s *= exp(-IoU**2 / sigma)`` for every box. A box whose score falls below ``min_score`` is dropped; boxes
    that start below it are dropped up front, except the best box overall, which mmcv selects first and keeps.

    Class-wise by padding: the boxes are laid out as a (classes, max boxes per class) grid and every step
    selects one box in *every* class at once. The number of sequential steps is then the size of the largest
    class rather than the total (the coordinate-offset trick would run all N boxes through one long sequence,
    a per-class loop would run sum(n_c) Python steps); each step is a few dense tensor ops on the grid plus
    one scalar read for the early exit, so it runs unchanged on a GPU. With `topk`, the loop stops as soon as
    no remaining box can reach the top-k any more (the result is the same as running to the end).

    Args:
        boxes: (N, 4) xyxy. scores: (N,). labels: (N,) integer class per box, or None for class-agnostic.
        topk: keep at most this many boxes over all classes (the per-image detection limit).
    Returns:
        keep (K,) int64 indices into the inputs and their decayed scores (K,), sorted by descending score
        (which is also the selection order within each class).
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"soft_nms expects boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"Gaussian soft-NMS needs sigma > 0, got {sigma}")
    candidates = scores >= min_score
    if scores.numel():
        # mmcv (and so the official detector) always keeps its first selection, the best box overall, even
        # below min_score; every other box below min_score is dropped by the first decay pass.
        candidates[scores.argmax()] = True
    candidates = torch.nonzero(candidates).squeeze(1)
    if labels is None:
        labels = torch.zeros_like(scores, dtype=torch.long)
    if candidates.numel() == 0:
        return candidates, scores[candidates]

    # Grid layout: row = class (among those present), column = rank of the box within its class.
    cand_labels = labels[candidates]
    classes, row, counts = torch.unique(cand_labels, return_inverse=True, return_counts=True)
    by_row = torch.argsort(row, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.empty_like(row)
    col[by_row] = torch.arange(row.numel(), device=row.device) - starts[row[by_row]]
    num_rows, width = classes.numel(), int(counts.max())

    # Coordinates as contiguous (C, M) planes: every step is a handful of dense elementwise ops.
    planes = boxes.new_zeros(4, num_rows, width)
    planes[:, row, col] = boxes[candidates].to(planes.dtype).T
    areas = (planes[2] - planes[0]) * (planes[3] - planes[1])
    grid_scores = scores.new_zeros(num_rows, width)
    grid_scores[row, col] = scores[candidates]
    alive = torch.zeros(num_rows, width, dtype=torch.bool, device=boxes.device)  # not dropped
    alive[row, col] = True
    pending = alive.clone()  # alive and not selected yet
    rows = torch.arange(num_rows, device=boxes.device)
    limit = topk if topk is not None and topk > 0 else None
    best_selected = scores.new_full((limit or 1,), float("-inf"))  # the top-k scores selected so far

    # Each step selects one pending box per class (or none when the class is done): `width` steps at most.
    for _ in range(width):
        next_scores, best = grid_scores.masked_fill(~pending, float("-inf")).max(1)  # (C,)
        # Selected scores are final and each class selects in decreasing order: once no pending box beats
        # the k-th best selected score, nothing left can enter the top-k (an exact early exit).
        best_next = float(next_scores.max())
        if best_next == float("-inf") or best_next < float(best_selected[-1]):
            break
        if limit:
            best_selected = torch.cat([best_selected, next_scores]).topk(limit).values
        pending[rows, best] = False
        iou = _iou_with_selected(planes, areas, best)
        if method == "linear":
            weight = torch.where(iou >= iou_threshold, 1.0 - iou, torch.ones_like(iou))
        else:
            weight = torch.exp(-(iou * iou) / sigma)
        grid_scores = torch.where(pending, grid_scores * weight, grid_scores)
        dropped = pending & (grid_scores < min_score)
        pending &= ~dropped
        alive &= ~dropped

    kept = (alive & ~pending)[row, col]
    keep, new_scores = candidates[kept], grid_scores[row, col][kept]
    new_scores, order = new_scores.sort(descending=True, stable=True)
    keep = keep[order]
    if topk is not None and topk >= 0:
        keep, new_scores = keep[:topk], new_scores[:topk]
    return keep, new_scores


def maskness(mask_probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Mean mask probability over the pixels above ``threshold``, 0 where none is (Mask Scoring R-CNN / SOLO).

    mask_probs: (R, ..., H, W) sigmoid probabilities per RoI (detectron2's (R, 1, 28, 28)) -> (R,).
    """
    probs = mask_probs.flatten(1)
    foreground = probs > threshold
    total = (probs * foreground).sum(1)
    count = foreground.sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
