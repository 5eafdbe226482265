"""The third-party functions the memory planner replaces while it traces a step, named in one place.

A fake tensor has no values and no device, so a few upstream functions are swapped for stand-ins during a trace
(eva02.common.memory, eva02.det.memory, eva02.seg.memory). Each stand-in was written against the upstream
function as it was in the version named here; `fingerprint` hashes that function's source (its signature and
documentation for a compiled builtin). tests/common/test_upstream.py fails when an installed function no longer
matches: read the new version, check that the stand-in still does what its docstring says, then record the new
fingerprint and version here. Every planner patch goes through `patched`, which accepts only these names.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Iterator
from unittest import mock

__all__ = ["UpstreamFunction", "UPSTREAM", "fingerprint", "resolve", "patched"]


@dataclass(frozen=True)
class UpstreamFunction:
    target: str  # "module:attribute" or "module:Class.attribute"
    version: str  # the package version the stand-in was written against
    fingerprint: str  # fingerprint() of the function in that version
    stand_in: str  # what replaces it during a trace, and why


UPSTREAM = {
    "sdpa": UpstreamFunction(
        "torch.nn.functional:scaled_dot_product_attention", "torch 2.13.0", "641a0f8f50899689",
        "the GPU's kernel (flash / memory-efficient / math) called directly: a fake tensor cannot pick one"),
    "shape_as_tensor": UpstreamFunction(
        "torch:_shape_as_tensor", "torch 2.13.0", "1d6d78697866a442",
        "a tensor built from the shape: the original writes sizes into memory a fake tensor has not got"),
    "storage_resize": UpstreamFunction(
        "torch:UntypedStorage.resize_", "torch 2.13.0", "ae6641383245f6e6",
        "the original, then the trace counts the storage's new size: FSDP2 frees and re-allocates the gathered "
        "parameters of a unit by resizing their storages, which no operator dispatch shows"),
    "batch_norm": UpstreamFunction(
        "torch.nn.functional:batch_norm", "torch 2.13.0", "93fe25afd4268873",
        "running statistics for a one-value-per-channel input (UperNet's pooled map of one image)"),
    "batched_nms": UpstreamFunction(
        "torchvision.ops.boxes:_batched_nms_vanilla", "torchvision 0.28.0", "d650d2614c438df8",
        "torchvision's own coordinate-trick path: one NMS call instead of a loop over data-dependent classes"),
    "foreground_proposals": UpstreamFunction(
        "detectron2.modeling.roi_heads.roi_heads:select_foreground_proposals", "detectron2 0.7.2",
        "f81dd88ccd7d1d80", "the original, its output capped at the sampler's positive quota"),
    "polygon_crop_and_resize": UpstreamFunction(
        "detectron2.structures.masks:PolygonMasks.crop_and_resize", "detectron2 0.7.2", "821555319bf2324a",
        "an empty mask target of the right size: the original rasterizes on the host from values"),
    "polygon_getitem": UpstreamFunction(
        "detectron2.structures.masks:PolygonMasks.__getitem__", "detectron2 0.7.2", "4f50596311f00b94",
        "as many polygons as a tensor index selects at most, without reading the index's values"),
    "hungarian_match": UpstreamFunction(
        "mmdet.models.task_modules.assigners.hungarian_assigner:linear_sum_assignment", "mmdet 3.3.0 / scipy 1.17.1",
        "bcaab5e32b6c0627", "query i <-> target i: the shapes of a matching without reading the cost values"),
}


def resolve(target: str) -> tuple[Any, str, Any]:
    """(owner, attribute name, current value) of "module:attribute" / "module:Class.attribute"."""
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *classes, attribute = path.split(".")
    for name in classes:
        owner = getattr(owner, name)
    return owner, attribute, inspect.getattr_static(owner, attribute) if classes else getattr(owner, attribute)


def fingerprint(function: Any) -> str:
    """16 hex digits of sha256 over the function's source; for a compiled builtin, over its documentation (which
    states its signature)."""
    try:
        text = inspect.getsource(function)
    except (OSError, TypeError):
        text = f"{getattr(function, '__qualname__', function)}\n{inspect.getdoc(function) or ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def patched(name: str, stand_in: Any) -> Iterator[None]:
    """UPSTREAM[name]'s function replaced by `stand_in` inside the block."""
    owner, attribute, _ = resolve(UPSTREAM[name].target)
    with mock.patch.object(owner, attribute, stand_in):
        yield
