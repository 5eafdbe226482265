"""Detector checkpoints: official EVA-02 layouts in, atomic writes out.

`EVACheckpointer` is a detectron2 `DetectionCheckpointer` subclass (use it wherever detectron2 takes one) that
  - reads files with `weights_only=True` unless told the file is trusted (unpickling runs code);
  - converts backbone keys of released detectors (`backbone.net.*`: separate q/k/v fused, RoPE buffers dropped)
    with `eva02.backbone.checkpoint.to_trv_names`; heads load as detectron2 loads them;
  - takes the weights from `ema_state` when `use_ema=True`;
  - loads a backbone-only checkpoint (MIM `module`, p14to16, timm, our TrV) into `model.backbone.net` through
    `eva02.backbone.load_checkpoint` (patch kernel and pos-embed resized);
  - writes checkpoints and the `last_checkpoint` tag atomically (temporary file + rename); with several processes
    each calls `save` (what it gathers: a model sharded by FSDP2 is written whole, so every tool reads it) and rank
    0 writes;
  - refuses a load that leaves weights it needs at their initial values (IncompleteCheckpointError naming them),
    per `require`: "all" (evaluation and inference: every weight, no tensor of another shape), "backbone"
    (initial weights of a training run: the whole TrV; heads may start fresh, as from a MIM checkpoint or a
    detector of another class count) or "any" (the user's opt-out, --allow-partial). A file from which no weight
    at all loads is refused in every mode;
  - when a training run starts from a detector trained for other classes (require "backbone" or "any": another
    class count, or other class names), re-lays its class-specific layers (cls_score, class-specific bbox_pred,
    the mask predictor) for the model's classes with `eva02.common.class_rows.relay_class_layers`, the rule
    segmentation uses too: classes shared by name keep their rows (names
    come from the `classes` our checkpoints store), the background row is kept, the rest start from their
    initialization; one log line per layer says so;
  - stores the model's class names (`classes=`) in every checkpoint it writes.
`load_detector_weights(model, path, use_ema=False)` is the one-call form; it returns the missing/unexpected keys.
"""
from __future__ import annotations

import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from fvcore.common.checkpoint import _IncompatibleKeys

from eva02.backbone import is_adapter_key, load_checkpoint, read_state_dict
from eva02.backbone.checkpoint import (IncompleteCheckpointError, LoadReport, check_complete, existing_file,
                                       to_trv_names, unreadable_checkpoint, unwrap_model)
from eva02.common.class_rows import ClassRows, relay_class_layers
from eva02.common.files import atomic_write, save_atomic
from eva02.common.sharding import full_model_state, is_sharded


__all__ = ["EVACheckpointer", "REQUIRE", "convert_detector_state", "load_detector_weights", "stored_classes"]

logger = logging.getLogger(__name__)
_NET = "backbone.net."
REQUIRE = ("all", "backbone", "any")
_OPT_OUT = "pass --allow-partial (Python: require='any')"
# class-specific detector layers: name suffix -> row layout (background last in cls_score)
CLASS_LAYERS = {"cls_score": ClassRows(1, 1), "bbox_pred": ClassRows(4, 0), "mask_head.predictor": ClassRows(1, 0)}


def _class_layout(key: str) -> ClassRows | None:
    return next((v for k, v in CLASS_LAYERS.items() if key.rsplit(".", 1)[0].endswith(k)), None)


class EVACheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer for EVA-02 detectors (see the module docstring).

    Args:
        use_ema: load the weights stored under `ema_state` instead of `model`.
        weights_only: refuse pickled objects when reading (set False only for trusted files).
        require: which model weights a load must set, "all", "backbone" or "any" (see the module docstring).
        classes: the model's class names: written into checkpoints, and matched by name against a checkpoint's
            when its class-specific layers are re-laid.
        Others as `DetectionCheckpointer` (model, save_dir, save_to_disk, **checkpointables).
    """

    def __init__(self, model, save_dir: str = "", *, use_ema: bool = False, weights_only: bool = True,
                 require: str = "backbone", classes: list[str] | None = None, save_to_disk: bool | None = None,
                 **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        if require not in REQUIRE:
            raise ValueError(f"require must be one of {REQUIRE}, got {require!r}")
        self.use_ema = use_ema
        self.weights_only = weights_only
        self.require = require
        self.classes = list(classes) if classes is not None else None
        self.last_incompatible: _IncompatibleKeys | None = None
        self.loaded_classes: list[str] | None = None  # the class names the last loaded checkpoint stores

    # ------------------------------------------------------------------ reading
    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path:  # a local file; fvcore would only assert "Checkpoint ... not found!"
            existing_file(path)
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):  # Detectron / Caffe2 pickles: detectron2's own path
            try:
                return super()._load_file(filename)
            except Exception as e:  # noqa: BLE001  (a damaged pickle raises anything)
                raise unreadable_checkpoint(filename, e) from e
        obj = read_state_dict(filename, self.weights_only)
        if "model" not in obj:
            inner = obj.get("module") or obj.get("state_dict")
            obj = {"model": inner if isinstance(inner, dict) else obj}
        obj["_source"] = filename
        return obj

    def _load_model(self, checkpoint: dict):
        source = checkpoint.pop("_source", "<checkpoint>")
        if self.use_ema:
            if "ema_state" not in checkpoint:
                raise KeyError(f"{source}: EMA weights requested but the file has no 'ema_state' "
                               f"(keys: {sorted(checkpoint)}); load it with use_ema=False "
                               "(train.init_use_ema=False / train.model_ema.use_for_eval=False)")
            logger.info(f"{source}: loading the EMA weights ('ema_state')")
            checkpoint["model"] = checkpoint.pop("ema_state")
        state = checkpoint["model"]
        self.loaded_classes = checkpoint.get("classes")
        if not any(k.startswith("backbone.") or k.startswith("roi_heads.") for k in state):
            incompatible = self._load_backbone_only(state, source)
        else:
            checkpoint["model"], dropped = convert_detector_state(state, unwrap_model(self.model), source)
            logger.info(f"{source}: {len(dropped)} derived tensors not loaded (RoPE tables, constant buffers)")
            if self.require != "all":
                self._relay_class_layers(checkpoint["model"], checkpoint.get("classes"), source)
            incompatible = super()._load_model(checkpoint)
        self._check_loaded(incompatible, source)
        self.last_incompatible = incompatible
        return incompatible

    def _relay_class_layers(self, state: dict, trained_classes: list[str] | None, source: str) -> None:
        """Re-lay (in `state`) the class-specific tensors whose class count or class names differ from the model's."""
        own = unwrap_model(self.model).state_dict()
        for line in relay_class_layers(state, own, _class_layout, trained_classes, self.classes):
            logger.warning(f"{source}: {line}")

    def _load_backbone_only(self, state: dict, source: str) -> _IncompatibleKeys:
        net = unwrap_model(self.model).backbone.net
        report = load_checkpoint(net, state, source=source)
        logger.info(f"{source}: backbone-only checkpoint loaded into backbone.net: {report}")
        heads = [k for k in unwrap_model(self.model).state_dict() if not k.startswith(_NET)]
        return _IncompatibleKeys(missing_keys=[_NET + k for k in report.missing] + heads,
                                 unexpected_keys=report.unexpected, incorrect_shapes=[])

    def _check_loaded(self, incompatible: _IncompatibleKeys, source: str) -> None:
        """IncompleteCheckpointError when the load leaves weights that `require` asks for unloaded."""
        model_keys = list(unwrap_model(self.model).state_dict())
        unloaded = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        if len(unloaded) >= len(model_keys):
            raise IncompleteCheckpointError(
                f"{source}: none of the model's {len(model_keys)} weights is in this file (its keys: "
                f"{', '.join(sorted(incompatible.unexpected_keys)[:4])}, ...): is it a detector or backbone "
                "checkpoint of this architecture?")
        # an unmerged LoRA checkpoint for a model without adapters: refused, whatever `require` says
        check_complete(source, [], [k for k in incompatible.unexpected_keys if is_adapter_key(k)], _OPT_OUT)
        if self.require == "any":
            return
        required = [k for k in model_keys if k in unloaded and (self.require == "all" or k.startswith(_NET))]
        shapes = [(k, ckpt, own) for k, ckpt, own in incompatible.incorrect_shapes
                  if self.require == "all" or k.startswith(_NET)]
        hint = ""
        for key, ckpt, own in shapes:
            if key.endswith("cls_score.weight"):  # rows: classes + background
                hint = (f"The checkpoint was trained for {ckpt[0] - 1} classes, the config builds {own[0] - 1} "
                        "(model.roi_heads.num_classes).")
                break
        else:
            if shapes:
                hint = "Shapes differ: " + "; ".join(f"{k}: checkpoint {c}, model {m}" for k, c, m in shapes[:3]) + "."
        check_complete(source, required, [], _OPT_OUT, hint)

    # ------------------------------------------------------------------ writing
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not (self.save_to_disk or comm.get_world_size() > 1):
            return
        # every process of a run calls save and takes part in gathering (the generators of each, and of a sharded
        # model its whole weights, optimizer state and EMA); rank 0 writes
        data = {"model": full_model_state(self.model) if is_sharded(self.model) else self.model.state_dict()}
        if self.classes is not None:
            data["classes"] = self.classes
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if not self.save_to_disk:
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        save_atomic(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda tmp: open(tmp, "w").write(last_filename_basename))


def convert_detector_state(state: dict, model, source: str = "<checkpoint>") -> tuple[dict, list[str]]:
    """A released detector's state dict (its `model` or its `ema_state`) in this project's names: backbone keys
    through `to_trv_names` (q/k/v fused); dropped, and returned as the second value, the tensors that are derived
    rather than learned: RoPE tables (the official files save them per block too, for one input size) and the
    model's non-persistent buffers (pixel mean / std, anchors), which an official `ema_state` also holds."""
    report = LoadReport()
    backbone = to_trv_names({k: v for k, v in state.items() if k.startswith(_NET)}, report)
    for line in report.converted:
        logger.info(f"{source}: backbone {line}")
    constant = {f"{prefix}{'.' if prefix else ''}{name}" for prefix, module in model.named_modules()
                for name in module._non_persistent_buffers_set}
    rest = {k: v for k, v in state.items() if not k.startswith(_NET) and k not in constant}
    dropped = [_NET + k for k in report.derived] + [k for k in state if k in constant]
    return {**rest, **{_NET + k: v for k, v in backbone.items()}}, dropped


def stored_classes(path: str, weights_only: bool = True) -> list[str] | None:
    """The class names a checkpoint of ours stores ("classes"), None for others (official releases)."""
    classes = read_state_dict(path, weights_only).get("classes")
    return list(classes) if classes else None


def load_detector_weights(model, path: str, use_ema: bool = False, weights_only: bool = True,
                          require: str = "all") -> _IncompatibleKeys:
    """Load a detector checkpoint (official released `.pth`, one of ours, or a backbone-only file) into model;
    by default every model weight must load (require, see EVACheckpointer).

    Returns detectron2's incompatible keys (missing_keys, unexpected_keys, incorrect_shapes); they are also
    logged. RoPE buffers of official files are dropped, never reported.
    """
    checkpointer = EVACheckpointer(model, use_ema=use_ema, weights_only=weights_only, require=require)
    checkpointer.load(path, checkpointables=[])
    return checkpointer.last_incompatible
