"""Checkpoints that load with torch's weights_only=True (the default since torch 2.6), written atomically.

Atomic writes: the file backend "atomic_local" (AtomicLocalBackend, registered under that name alongside
mmengine's own backends, replacing none) writes through a temporary file renamed into place. A config turns it
on where checkpoints are saved: `default_hooks.checkpoint.backend_args = dict(backend="atomic_local")`.
Reading: `name_files_in_load_errors()` (called by tools/train_seg.py, not at import) has the local checkpoints
mmengine loads (load_from, --resume) read by mmengine's own loader with errors that name the file.

mmengine stores its MessageHub in every checkpoint: smoothed-log HistoryBuffers (pickled with bound methods
through `getattr`) and numpy scalars. torch refuses to unpickle those by default, so `--resume`, `load_from`
and mmseg's init_model fail on the runner's own checkpoints. This hook writes the message hub as plain data:
numpy values become Python numbers / lists and the log-smoothing buffers are left out (resuming restarts the
running averages of the logged losses, nothing else). Model, optimizer, scheduler and iteration are untouched.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.runner.checkpoint import load_from_local as mmengine_load_from_local
from mmseg.registry import HOOKS

from eva02.backbone.checkpoint import unreadable_checkpoint
from eva02.common.files import atomic_write, remove_stale_temporaries
from eva02.common.memory import peak_memory_mib
from eva02.common.rng import capture_rng, restore_rng
from eva02.common.runlog import draw_curves, tensorboard_command

from .checkpoint import load_segmentor_checkpoint
from .predictor import overlay

__all__ = ["AtomicLocalBackend", "ExactResumeHook", "RunLogHook", "SegmentorWeightsHook", "WeightsOnlyCheckpointHook",
           "plain"]


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, but every write goes to a temporary file renamed into place: a crash
    while the runner saves `iter_N.pth` (or `last_checkpoint`) never leaves a torn file behind."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(filepath, lambda tmp: Path(tmp).write_bytes(obj))

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        atomic_write(filepath, lambda tmp: Path(tmp).write_text(obj, encoding=encoding))


register_backend("atomic_local", AtomicLocalBackend)


def load_from_local(filename, map_location):
    """mmengine's loader of local checkpoints (load_from, --resume), whose torch errors do not name the file."""
    try:
        return mmengine_load_from_local(filename, map_location)
    except FileNotFoundError:  # mmengine's own names it
        raise
    except Exception as e:  # noqa: BLE001  (torch raises anything on a damaged file)
        raise unreadable_checkpoint(filename, e) from e


def name_files_in_load_errors() -> None:
    """Route mmengine's local checkpoint loading through load_from_local, for this process (a tool's choice: the
    library changes no other library's behaviour at import)."""
    CheckpointLoader.register_scheme(prefixes="", force=True)(load_from_local)


_DROP = object()


def plain(value):
    """value with numpy turned into Python types; _DROP for anything torch's weights_only loader refuses."""
    if isinstance(value, (np.generic, np.ndarray)):  # before the Python types: np.float64 is a float
        return value.tolist()
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return value
    if isinstance(value, (list, tuple)):
        items = [plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else type(value)(items)
    if isinstance(value, dict):
        return {k: v for k, v in ((k, plain(v)) for k, v in value.items()) if v is not _DROP}
    return _DROP


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Makes every checkpoint the runner saves loadable with torch.load(weights_only=True)."""

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if hub is None:
            return
        runtime = plain(hub.get("runtime_info", {}))
        dropped = sorted(set(hub.get("runtime_info", {})) - set(runtime))
        if dropped:
            print_log(f"checkpoint: runtime info {dropped} is not plain data, not saved", logger="current", level=30)
        checkpoint["message_hub"] = dict(log_scalars={}, runtime_info=runtime,
                                         resumed_keys={k: v for k, v in hub.get("resumed_keys", {}).items()
                                                       if k in runtime})


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """A resumed run computes what the uninterrupted one would have, and a killed write leaves nothing behind.

    - At the start of a run, the temporary files of killed checkpoint writes in the work dir are removed.
    - Checkpoints carry the generator states, and a resumed run takes torch's back (dropout, drop path). mmengine
      already reseeds and replays the data stream up to the saved iteration, which brings the data order and
      numpy's generator (the augmentations) to where they were.
    - Validation in the middle of training leaves the generators as it found them.
    With num_workers=0 a resumed single-process run equals the uninterrupted one to the last bit.
    """

    priority = "VERY_LOW"

    def before_run(self, runner) -> None:
        if is_main_process():
            remove_stale_temporaries(runner.work_dir)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["rng_state"] = capture_rng()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if runner._resume and "rng_state" in checkpoint:  # not for load_from (initial weights of another run)
            torch.set_rng_state(checkpoint["rng_state"]["torch"])
            if checkpoint["rng_state"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng_state"]["cuda"])

    def before_val(self, runner) -> None:
        self._before_val = capture_rng()

    def after_val(self, runner) -> None:
        restore_rng(self._before_val)


@HOOKS.register_module()
class SegmentorWeightsHook(Hook):
    """Starts training from a whole segmentor checkpoint (ours or official; tools/train_seg.py --weights).

    mmengine's Runner.train() builds the model, runs init_weights(), then loads `load_from`; this hook loads in
    before_train, after both, through eva02.seg.load_segmentor_checkpoint (official layouts converted, every
    weight accounted for unless strict=False). Class-specific head layers trained for other classes are re-laid
    by class name (eva02.common.class_rows), the classes being the training set's; one log line per such layer.
    A resumed run (iteration > 0) already holds its weights: nothing is loaded then."""

    priority = "VERY_HIGH"  # before any other hook looks at the weights

    def __init__(self, checkpoint: str, weights_only: bool = True, strict: bool = True):
        self.checkpoint = checkpoint
        self.weights_only = weights_only
        self.strict = strict

    def before_train(self, runner) -> None:
        if runner.iter > 0:
            print_log(f"resumed at iteration {runner.iter}: the initial weights {self.checkpoint} are not loaded",
                      logger="current")
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        classes = getattr(runner.train_dataloader.dataset, "metainfo", {}).get("classes")
        summary = load_segmentor_checkpoint(model, self.checkpoint, weights_only=self.weights_only,
                                            strict=self.strict, classes=classes, adapt_classes=True)
        for line in summary.splitlines():
            print_log(line, logger="current")


@HOOKS.register_module()
class RunLogHook(Hook):
    """What a run shows beyond mmengine's log, through the runner's visualizer backends (TensorBoard in our
    configs' runtime): throughput (images per second, all processes) and peak memory (peak_memory_mib) with every
    logged iteration; at each validation the first `log_images` validation images with their predictions drawn as
    tools/infer_seg.py draws them (eva02.seg.predictor.overlay); at the end of training `curves.png` in the work
    dir (eva02.common.runlog)."""

    def __init__(self, log_images: int = 4, opacity: float = 0.5):
        self.log_images = log_images
        self.opacity = opacity
        self._drawn = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        hub = runner.message_hub
        if "train/time" in hub.log_scalars:
            images = runner.train_dataloader.batch_size * get_world_size()
            hub.update_scalar("train/images_per_second", images / max(hub.get_scalar("train/time").current(), 1e-9))
        hub.update_scalar("train/memory_mib", peak_memory_mib("cuda" if torch.cuda.is_available() else "cpu"))

    def before_val_epoch(self, runner) -> None:
        self._drawn = 0

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not is_main_process() or self._drawn >= self.log_images:
            return
        meta = runner.val_dataloader.dataset.metainfo
        palette, classes = np.asarray(meta["palette"], np.uint8), list(meta["classes"])
        for sample in outputs[: self.log_images - self._drawn]:
            image = cv2.imread(sample.img_path)
            labels = sample.pred_sem_seg.data[0].cpu().numpy()
            if image is None or image.shape[:2] != labels.shape:
                continue
            drawn = overlay(image, labels, palette, classes, self.opacity)
            name = Path(sample.img_path).stem
            runner.visualizer.add_image(f"predictions/{name}", drawn[:, :, ::-1], step=runner.iter)
            self._drawn += 1

    def after_train(self, runner) -> None:
        if is_main_process():
            curves = draw_curves(runner.work_dir)
            if curves:
                print_log(f"training curves: {curves} (TensorBoard: {tensorboard_command(runner.work_dir)})",
                          logger="current")
