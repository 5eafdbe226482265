"""Segmentation inference: mmseg's own API on our configs and checkpoints, and `SegPredictor` for what it cannot do.

mmseg's API works as is on this project's configs with the checkpoints tools/train_seg.py writes (they load with
torch's weights_only=True and record the class names and palette). For own data, use the config the training run
dumped into its work dir (WORK_DIR/CONFIG_NAME.py: own data and class count applied):

    from mmseg.apis import MMSegInferencer, inference_model, init_model
    import eva02.seg  # noqa: F401  (registers the EVA-02 modules; configs also import it)
    model = init_model("configs/demo/eva02_Ti_seg.py", "output/demo/seg/iter_200.pth", device="cuda")
    results = inference_model(model, ["a.jpg", "b.jpg"])        # SegDataSamples: .pred_sem_seg, .seg_logits
    MMSegInferencer(model="configs/demo/eva02_Ti_seg.py", weights="output/demo/seg/iter_200.pth")("a.jpg")

SegPredictor, a thin wrapper over the same init_model / inference_model, adds: official EVA-02 checkpoints
(converted by load_segmentor_checkpoint, every weight accounted for), the config's test-time augmentation
(tta=True: its tta_model and tta_pipeline, mmseg's SegTTAModel, multi-scale + flip), batches of images or paths,
and own-data classes (data=DIR: classes.txt). Slide or whole-image inference is what the config's model.test_cfg
says (cfg_options=dict(model=dict(test_cfg=...)) changes it).

    predictor = SegPredictor("configs/ade20k/upernet_eva02_L_640.py", "official_L_640.pth", device="cuda")
    labels = predictor(cv2.imread("photo.jpg"))                 # (H, W) int64 class indexes
    batch = predictor.predict(["a.jpg", "b.jpg", img], batch_size=2)
    cv2.imwrite("overlay.png", overlay(image, labels, predictor.palette, predictor.classes, 0.5))
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmseg.apis import inference_model, init_model
from mmseg.registry import DATASETS, MODELS

from eva02.backbone.checkpoint import read_state_dict
from eva02.common.cli import default_device

from .checkpoint import checkpoint_classes, load_segmentor_checkpoint
from .datasets import unreadable_image
from .own_data import OwnSegDataset, make_palette, read_classes, use_own_data

__all__ = ["SegPredictor", "inference_pipeline", "overlay"]


def inference_pipeline(steps: Sequence[dict]) -> Compose:
    """A test or TTA pipeline for images given as arrays: LoadImageFromFile -> LoadImageFromNDArray, annotation
    loading left out (inside TestTimeAug too)."""
    out = []
    for step in copy.deepcopy(list(steps)):
        kind = step.get("type")
        if kind == "LoadAnnotations":
            continue
        if kind == "LoadImageFromFile":
            step["type"] = "LoadImageFromNDArray"
        if kind == "TestTimeAug":
            groups = [[t for t in group if t.get("type") != "LoadAnnotations"] for group in step["transforms"]]
            step["transforms"] = [group for group in groups if group]
        out.append(step)
    return Compose(out)


class SegPredictor:
    """The config's segmentor in eval mode with its weights (ours or an official release, read by
    load_segmentor_checkpoint: strict unless `strict=False`) and its test pipeline; call with a BGR image.

    config: a file or an mmengine Config (copied); cfg_options: overrides merged into it (e.g.
    dict(model=dict(test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341))))).
    device: default cuda when a GPU exists, else cpu.
    data: own data (eva02.seg.own_data): the class list of DATA/classes.txt sizes the heads and names the classes.
    tta: predict with the config's tta_model over its tta_pipeline (multi-scale + flip, probabilities averaged).
    Classes and palette: own data's, else the checkpoint's (mmengine meta), else the config's dataset's."""

    def __init__(self, config: str | Config, weights: str, device: str | None = None, weights_only: bool = True,
                 strict: bool = True, tta: bool = False, data: str | None = None, cfg_options: dict | None = None):
        cfg = copy.deepcopy(config) if isinstance(config, Config) else Config.fromfile(config)
        if data is not None:
            use_own_data(cfg, data)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        if tta and ("tta_model" not in cfg or "tta_pipeline" not in cfg):
            raise ValueError(f"tta: {getattr(config, 'filename', config)} defines no tta_model / tta_pipeline")
        self.model = init_model(cfg, None, device=device or default_device())
        checkpoint = read_state_dict(weights, weights_only)
        self.load_summary = load_segmentor_checkpoint(self.model, checkpoint, strict=strict,
                                                      source=os.fspath(weights))
        classes, palette = self._classes(cfg, checkpoint)
        self.model.dataset_meta = dict(classes=tuple(classes), palette=[list(c) for c in palette])
        self.classes = list(classes)
        self.palette = np.asarray(palette, np.uint8)
        self.tta = tta
        if tta:
            self.tta_model = MODELS.build(dict(cfg.tta_model, module=self.model))
            self.tta_pipeline = inference_pipeline(cfg.tta_pipeline)

    def _classes(self, cfg: Config, checkpoint: dict):
        count = self.model.decode_head.num_classes
        dataset_cfg = cfg.test_dataloader.dataset
        dataset = DATASETS.get(dataset_cfg.type)
        if dataset is not None and issubclass(dataset, OwnSegDataset):  # own data: DATA/classes.txt
            names = read_classes(dataset_cfg.data_root)
            if len(names) == count:
                return names, make_palette(count)
        meta = (checkpoint.get("meta") or {}).get("dataset_meta") or {}
        names = checkpoint_classes(checkpoint)
        if names is not None and len(names) == count:
            palette = meta.get("palette") or (checkpoint.get("meta") or {}).get("PALETTE")
            return names, palette if palette is not None and len(palette) == count else make_palette(count)
        metainfo = getattr(dataset, "METAINFO", {}) if dataset is not None else {}
        if len(metainfo.get("classes") or ()) == count:
            return list(metainfo["classes"]), metainfo.get("palette") or make_palette(count)
        return [f"class {i}" for i in range(count)], make_palette(count)

    @staticmethod
    def _read(image) -> np.ndarray:
        if isinstance(image, np.ndarray):
            return image
        problem = unreadable_image(os.fspath(image))  # cv2 alone would return the part of a truncated file
        array = None if problem else cv2.imread(os.fspath(image), cv2.IMREAD_COLOR)
        if array is None:
            raise ValueError(f"unreadable image {problem or image}")
        return array

    @torch.no_grad()
    def _predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        if self.tta:
            data = pseudo_collate([self.tta_pipeline(dict(img=img)) for img in images])
            samples = self.tta_model.test_step(data)
        else:
            samples = inference_model(self.model, images)  # mmseg's own: the config's test_pipeline
        return [s.pred_sem_seg.data[0].cpu().numpy().astype(np.int64) for s in samples]

    def predict(self, images: Sequence[np.ndarray | str | os.PathLike], batch_size: int = 1) -> list[np.ndarray]:
        """BGR images (H, W, 3) uint8 or image files -> (H, W) int64 label maps at image size, `batch_size` per
        forward pass (images of different sizes in one batch are padded to the largest, as mmseg batches them)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out = []
        for start in range(0, len(images), batch_size):
            out += self._predict_batch([self._read(image) for image in images[start:start + batch_size]])
        return out

    def __call__(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """One BGR image (H, W, 3) uint8 or image file -> (H, W) int64 label map at image size."""
        return self.predict([image])[0]


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
