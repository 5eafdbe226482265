"""Evaluation that survives bad images: an image that cannot be read is skipped, named, counted, and left out of
the metric (not scored as an image without detections).

The three pieces, which `eva02.det.engine.do_test` puts together:
  - `SkipUnreadable(mapper)`: the dataset mapper, but a missing, truncated or undecodable image gives
    {"file_name", "image_id", "unreadable": reason} (and a warning) instead of raising in a loader worker
    (training uses it too, with drop=True);
  - `ReadableOnly(model)`: runs the model on the readable inputs of a batch and answers {"unreadable": reason}
    for the others, so inputs and outputs stay aligned for the evaluators;
  - `LeavesOutUnreadable`: a mixin for COCO / LVIS evaluators that evaluates on the images that were read, adds
    their count to the results ("unreadable_images") and lists them (`unreadable`: file, error) on the main
    process.
"""
from __future__ import annotations

import itertools
import logging

from detectron2.data.detection_utils import SizeMismatchError
from detectron2.utils import comm
from torch import nn

__all__ = ["READ_ERRORS", "SkipUnreadable", "ReadableOnly", "LeavesOutUnreadable"]

logger = logging.getLogger(__name__)
# What reading a bad image raises: missing file / truncated data / not an image (PIL's OSError subclasses),
# PIL's SyntaxError for broken chunks, and detectron2's check of the size against the annotation's.
READ_ERRORS = (OSError, SyntaxError, SizeMismatchError)


class SkipUnreadable:
    """A dataset mapper whose unreadable images become {"file_name", "image_id", "unreadable": reason}, or with
    drop=True (training) None, which detectron2's training loader skips (the next sample takes its place)."""

    def __init__(self, mapper, drop: bool = False):
        self.mapper = mapper
        self.drop = drop

    def __call__(self, dataset_dict: dict) -> dict | None:
        try:
            return self.mapper(dataset_dict)
        except READ_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"
            logger.warning(f"skipping unreadable image {dataset_dict['file_name']} ({reason})")
            if self.drop:
                return None
            return {"file_name": dataset_dict["file_name"], "image_id": dataset_dict.get("image_id"),
                    "unreadable": reason}


class ReadableOnly(nn.Module):
    """The model on the readable inputs of a batch; {"unreadable": reason} in the place of the others."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict]) -> list[dict]:
        readable = [x for x in inputs if "unreadable" not in x]
        outputs = iter(self.model(readable) if readable else ())
        return [{"unreadable": x["unreadable"]} if "unreadable" in x else next(outputs) for x in inputs]


class LeavesOutUnreadable:
    """Mixin for a COCO / LVIS evaluator, listed before it; the class defines `_evaluate_images(img_ids)` (its
    evaluation restricted to img_ids, None: every image). Outputs {"unreadable": reason} are recorded instead of
    evaluated; evaluate() scores the other images only and adds "unreadable_images" (their count) to the
    results; `unreadable` lists them (file_name, image_id, error), on the main process for all processes."""

    def reset(self):
        super().reset()
        self.unreadable: list[dict] = []

    def process(self, inputs, outputs):
        read = [(x, y) for x, y in zip(inputs, outputs) if "unreadable" not in y]
        self.unreadable += [{"file_name": x["file_name"], "image_id": x["image_id"], "error": y["unreadable"]}
                            for x, y in zip(inputs, outputs) if "unreadable" in y]
        super().process([x for x, _ in read], [y for _, y in read])

    def evaluate(self):
        if self._distributed:
            self.unreadable = list(itertools.chain(*comm.gather(self.unreadable, dst=0)))
        skipped = {entry["image_id"] for entry in self.unreadable}
        img_ids = [i for i in self._dataset_image_ids() if i not in skipped] if skipped else None
        results = self._evaluate_images(img_ids)
        if not self._distributed or comm.is_main_process():
            results = {**(results or {}), "unreadable_images": len(self.unreadable)}
        return results

    def _dataset_image_ids(self) -> list:
        raise NotImplementedError

    def _evaluate_images(self, img_ids: list | None) -> dict | None:
        raise NotImplementedError
