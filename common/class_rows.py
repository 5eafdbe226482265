"""Class-specific head weights across class lists: what fine-tuning on your own data does to a checkpoint whose
heads were trained for other classes (detection's cls_score / mask predictor, segmentation's conv_seg).

One rule, used by eva02.det and eva02.seg: a row block belongs to a class; a class of the new list that the
checkpoint also has (same name) keeps its trained rows, every other class starts from the model's
initialization, and an extra "background" / "no object" row, when the layer has one, is kept as trained. Without
class names on both sides nothing but that extra row can be matched (row i of one list means nothing in the
other), so the class rows all start fresh.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["ClassRows", "adapt_class_rows", "relay_class_layers"]


@dataclass(frozen=True)
class ClassRows:
    """How a tensor's first dimension is laid out: `per_class` rows for each class (4 for class-specific box
    regression, else 1), then `extra` rows that are not a class (1 for a background / no-object score)."""

    per_class: int = 1
    extra: int = 0

    def num_classes(self, rows: int) -> int | None:
        """The class count a tensor of `rows` rows holds in this layout, None if it fits no count."""
        classes, remainder = divmod(rows - self.extra, self.per_class)
        return classes if remainder == 0 and classes >= 0 else None


def adapt_class_rows(trained: torch.Tensor, initial: torch.Tensor, layout: ClassRows,
                     trained_classes: list[str] | None, classes: list[str] | None) -> tuple[torch.Tensor, list[str]]:
    """The trained tensor re-laid for the model's class list: `initial` (the model's own tensor, its shape) with
    the rows of classes found by name in `trained_classes` and the extra rows copied from `trained`.

    Returns the tensor and the names of the classes whose rows were carried over. Raises ValueError when the
    shapes beyond the first dimension differ or a row count fits no class count of the layout."""
    if trained.shape[1:] != initial.shape[1:]:
        raise ValueError(f"shapes differ beyond the class dimension: {tuple(trained.shape)} vs {tuple(initial.shape)}")
    old_count, new_count = layout.num_classes(trained.shape[0]), layout.num_classes(initial.shape[0])
    if old_count is None or new_count is None:
        raise ValueError(f"{trained.shape[0]} or {initial.shape[0]} rows is no class count in {layout}")
    for names, count in ((trained_classes, old_count), (classes, new_count)):
        if names is not None and len(names) != count:
            raise ValueError(f"{len(names)} class names for a layer of {count} classes")
    out = initial.detach().clone()
    per = layout.per_class
    if layout.extra:
        out[new_count * per:] = trained[old_count * per:].to(out.dtype)
    carried = []
    if trained_classes is not None and classes is not None:
        position = {name: i for i, name in enumerate(trained_classes)}
        for new, name in enumerate(classes):
            old = position.get(name)
            if old is not None:
                out[new * per:(new + 1) * per] = trained[old * per:(old + 1) * per].to(out.dtype)
                carried.append(name)
    return out, carried


def relay_class_layers(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                       layout_of: Callable[[str], ClassRows | None], trained_classes: list[str] | None,
                       classes: list[str] | None) -> list[str]:
    """Re-lay, in `state` (checkpoint tensors under the model's keys), every class-specific layer whose class count
    or class names differ from the model's, with adapt_class_rows; returns one report line per re-laid layer.

    own: the model's state dict (shapes and initial values). layout_of(key): the row layout of a class-specific
    tensor, None for any other key. trained_classes / classes: the checkpoint's and the model's class names, if
    known (a list whose length is not the layer's class count is treated as unknown). A layer whose rows fit no
    class count is left as it is, for the loader to report as a shape mismatch."""
    layers: dict[str, tuple[ClassRows, list[str]]] = {}
    for key in state:
        layout = layout_of(key) if key in own else None
        if layout is not None:
            layers.setdefault(key.rsplit(".", 1)[0], (layout, []))[1].append(key)
    lines = []
    for layer, (layout, keys) in sorted(layers.items()):
        old = layout.num_classes(state[keys[0]].shape[0])
        new = layout.num_classes(own[keys[0]].shape[0])
        names = trained_classes if trained_classes is not None and len(trained_classes) == old else None
        model_names = list(classes) if classes is not None and len(classes) == new else None
        same_shapes = all(state[k].shape == own[k].shape for k in keys)
        if same_shapes and (names is None or model_names is None or names == model_names):
            continue  # the same classes (or no way to tell): loaded as they are
        try:
            relaid = {k: adapt_class_rows(state[k], own[k], layout, names, model_names) for k in keys}
        except ValueError:
            continue
        for key, (tensor, carried) in relaid.items():
            state[key] = tensor
        extra = f"; its {layout.extra} background / no-object row(s) carried over" if layout.extra else ""
        if names is None or model_names is None:
            side = "checkpoint" if names is None else "model"
            given = trained_classes if names is None else classes
            why = f"the {side} names no classes" if given is None else (
                f"the {side} names {len(given)} classes for its {old if names is None else new}")
            detail = f"no class carried over ({why})"
        elif carried:
            shown = ", ".join(carried[:8]) + (", ..." if len(carried) > 8 else "")
            detail = f"{len(carried)} carried over by name ({shown})"
        else:
            detail = "no class name in common"
        lines.append(f"{layer}: checkpoint {old} classes -> model {new}; {detail}, the rest start from their "
                     f"initialization{extra}")
    return lines
