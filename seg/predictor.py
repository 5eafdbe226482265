"""SegPredictor: a segmentor config + weights as a callable on images (what tools/infer_seg.py runs), and
`overlay`, the drawing it saves.

    predictor = SegPredictor("configs/ade20k/upernet_eva02_L_640.py", "official_L_640.pth", device="cuda")
    labels = predictor(cv2.imread("photo.jpg"))      # (H, W) int64 class indexes
    cv2.imwrite("overlay.png", overlay(image, labels, predictor.palette, predictor.classes, 0.5))
"""
from __future__ import annotations

import cv2
import numpy as np
from mmseg.apis import inference_model, init_model
from mmseg.registry import DATASETS

from .checkpoint import load_segmentor_checkpoint

__all__ = ["SegPredictor", "overlay"]


class SegPredictor:
    """The config's segmentor in eval mode with its weights (ours or an official release, read by
    load_segmentor_checkpoint: strict unless `strict=False`) and its test pipeline; call with a BGR image."""

    def __init__(self, config: str, weights: str, device: str = "cpu", weights_only: bool = True,
                 strict: bool = True):
        self.model = init_model(config, None, device=device)
        dataset = DATASETS.get(self.model.cfg.test_dataloader.dataset.type)  # classes and palette come from it
        self.model.dataset_meta = dict(classes=dataset.METAINFO["classes"], palette=dataset.METAINFO["palette"])
        self.load_summary = load_segmentor_checkpoint(self.model, weights, weights_only=weights_only, strict=strict)
        self.classes = list(self.model.dataset_meta["classes"])
        self.palette = np.asarray(self.model.dataset_meta["palette"], np.uint8)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """BGR image (H, W, 3) uint8 -> (H, W) int64 label map at image size."""
        return inference_model(self.model, image).pred_sem_seg.data[0].cpu().numpy().astype(np.int64)


def overlay(img: np.ndarray, labels: np.ndarray, palette: np.ndarray, classes: list[str], opacity: float) -> np.ndarray:
    """BGR image (H, W, 3) + label map (H, W) -> BGR overlay with a legend panel on the right (H', W + L, 3)."""
    color = palette[labels][..., ::-1]  # palette is RGB
    blend = (img * (1 - opacity) + color * opacity).astype(np.uint8)
    present = [int(c) for c in np.unique(labels)]
    row, pad = 22, 8
    width = 24 + max(cv2.getTextSize(classes[c], cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] for c in present) + 2 * pad
    height = max(blend.shape[0], pad * 2 + row * len(present))
    canvas = np.full((height, blend.shape[1] + width, 3), 255, np.uint8)
    canvas[: blend.shape[0], : blend.shape[1]] = blend
    x0 = blend.shape[1] + pad
    for i, c in enumerate(present):
        y = pad + i * row
        cv2.rectangle(canvas, (x0, y), (x0 + 16, y + 16), tuple(int(v) for v in palette[c][::-1]), -1)
        cv2.putText(canvas, classes[c], (x0 + 22, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
