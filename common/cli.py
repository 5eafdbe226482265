"""The command-line convention every tool in tools/ follows, and the helpers that implement it (stdlib + torch).

    --config-file PATH     the config: a detectron2 LazyConfig (detection) or an mmengine config (segmentation)
    --weights PATH         the checkpoint to evaluate or run: ours or an official release
    --input PATH           an image or a folder of images;  --output DIR: where results go
    --device DEVICE        default: cuda when a GPU exists, else cpu
    --precision fp32|fp16|bf16   numeric precision of a training run (eva02.common.precision); default: the config's
    --resume               continue a training run from the last checkpoint in --output
    --unsafe-pickle        read checkpoints with weights_only=False (runs pickled code: trusted files only)
    --wandb PROJECT        training tools: mirror the run's TensorBoard events to Weights & Biases (eva02.common.runlog)
    --debug                a full traceback instead of the one-line error
    KEY=VALUE ...          config overrides, last on the line
Multi-process training: `torchrun --nproc_per_node N tools/TOOL.py ...` (gloo on the CPU, nccl on GPUs).
Exit status: 0 done; 1 done, but something failed (an image skipped, a check not met); 2 bad input or usage,
said in one line on stderr.

The inference tools (tools/infer_det.py, tools/infer_seg.py) also share
    --batch-size N         images per forward pass (default 1);  --tta: the config's test-time augmentation
    --allow-partial        run even if the checkpoint leaves model weights at their initial values
and one output layout (`InferenceResults`): OUTPUT/NAME.png, the drawn prediction of each image NAME.ext, and
OUTPUT/results.json: {"config", "weights", "images": [{"file_name", "drawn", ...}], "unreadable_images",
"unreadable_files": [{"file_name", "error"}]}. An image that is missing or does not decode to its last byte is
listed there, skipped, and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch

from .files import atomic_write
from .precision import PRECISIONS

__all__ = ["IMAGE_EXTENSIONS", "EXIT_OK", "EXIT_PARTIAL", "EXIT_BAD_INPUT", "UsageError", "default_device",
           "InferenceResults", "add_common_args", "add_inference_args", "check_override_keys", "config_kind",
           "list_images", "quiet_third_party_warnings", "run_tool", "takes_argument", "world_size"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EXIT_OK, EXIT_PARTIAL, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad input the user can fix; its message is the one line the tool prints."""


# Third-party warnings every run would print, none of them about the user's input: deprecations inside the
# frameworks, torch's meshgrid notice (called inside torchvision / detectron2), mmseg's notices (loss builder,
# reduce_zero_label's future, a visualization hook with drawing off), and two log records: torch.fx's tracing
# notice and lvis's "Assuming user provided the results in correct format" on every evaluation.
_THIRD_PARTY = r"(torch|torchvision|detectron2|fvcore|iopath|mmengine|mmcv|mmseg|mmdet|timm|pycocotools|lvis)(\.|$)"
_KNOWN_USER_WARNINGS = (r"torch\.meshgrid: in an upcoming release", r"``build_loss`` would be deprecated",
                        r"Default ``avg_non_ignore`` is False", r"`reduce_zero_label` will be deprecated",
                        r"The draw is False, it means that the hook for visualization will not take effect")


def quiet_third_party_warnings(argv: Sequence[str] | None = None) -> None:
    """Hides the known third-party warnings (above) for this process, unless --debug is on the command line.
    Each tool calls it first thing, before the frameworks' imports; importing the library changes no filter."""
    argv = sys.argv[1:] if argv is None else argv
    if "--debug" in argv:
        return
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY)
    for message in _KNOWN_USER_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    for logger in ("torch.fx._symbolic_trace", "lvis.results"):
        logging.getLogger(logger).setLevel(logging.ERROR)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def world_size() -> int:
    """Processes in this run: torchrun's WORLD_SIZE, 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def add_common_args(parser: argparse.ArgumentParser, *flags: str) -> None:
    """Adds the named flags of the convention (module docstring) with their shared help and defaults:
    "config", "weights", "input", "output", "device", "precision", "resume", "unsafe_pickle", "overrides", "fsdp",
    "frozen_stages", "lora_rank", "wandb".
    --debug is always added."""
    specs = {
        "config": (("--config-file",), dict(required=True, metavar="PATH", help="the config file")),
        "weights": (("--weights",), dict(required=True, metavar="PATH",
                                         help="checkpoint: ours or an official release")),
        "input": (("--input",), dict(required=True, help="an image, or a folder of images (not recursive)")),
        "output": (("--output",), dict(required=True, metavar="DIR", help="folder for the results")),
        "device": (("--device",), dict(default=default_device(), help="default: cuda when a GPU exists, else cpu")),
        "precision": (("--precision",), dict(choices=list(PRECISIONS),
                                             help="fp32, or fp16 / bf16 autocast (default: what the config says)")),
        "resume": (("--resume",), dict(action="store_true",
                                       help="continue from the last checkpoint in the output folder")),
        "unsafe_pickle": (("--unsafe-pickle",), dict(
            action="store_true", help="read checkpoints with weights_only=False (runs pickled code: trusted files only)")),
        "overrides": (("overrides",), dict(nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")),
        "fsdp": (("--fsdp",), dict(action="store_true", help="with several processes: shard the model's weights, "
                                   "gradients and optimizer state over them (PyTorch FSDP2, one unit per TrV block) "
                                   "instead of DDP")),
        "frozen_stages": (("--frozen-stages",), dict(
            type=_frozen_stages, metavar="N|all", help="do not train the encoder's patch embedding and first N blocks "
            "(0: the embeddings only; all: the whole encoder, the heads train; eva02.backbone.tuning)")),
        "lora_rank": (("--lora-rank",), dict(type=_positive_int, metavar="R", help="train LoRA adapters of rank R "
                                             "(alpha 16) on the encoder's projections instead of its weights")),
        "wandb": (("--wandb",), dict(metavar="PROJECT", help="also send the run's TensorBoard events to this Weights "
                                     "& Biases project (pip install wandb; WANDB_MODE=offline works without network)")),
    }
    unknown = set(flags) - set(specs)
    if unknown:
        raise ValueError(f"add_common_args: unknown flags {sorted(unknown)}; known: {sorted(specs)}")
    for flag in flags:
        names, kwargs = specs[flag]
        parser.add_argument(*names, **kwargs)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _frozen_stages(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of blocks (-1, 0, 1, ...) or all") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"{value}: -1 (nothing frozen), 0 (the embeddings), N blocks, or all")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """The inference tools' flags (module docstring): the common ones, --batch-size, --tta, --allow-partial."""
    add_common_args(parser, "config", "weights", "input", "output", "device", "unsafe_pickle")
    parser.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="images per forward pass")
    parser.add_argument("--tta", action="store_true", help="the config's test-time augmentation (multi-scale + flip)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="run even if the checkpoint leaves model weights at their initial values")


class InferenceResults:
    """The inference tools' output folder (module docstring): unique drawing names, results.json, the summary."""

    def __init__(self, output: str | os.PathLike, config: str, weights: str):
        self.folder = Path(output)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.header = {"config": str(config), "weights": str(weights)}
        self.images: list[dict] = []
        self.unreadable: list[dict] = []
        self._names: set[str] = set()

    def name_for(self, path: str | os.PathLike) -> str:
        """NAME for an input file: its stem, made unique in the folder (photo, photo_2, ...)."""
        stem, name, k = Path(path).stem, Path(path).stem, 1
        while name in self._names:
            k += 1
            name = f"{stem}_{k}"
        self._names.add(name)
        return name

    def add(self, path: str | os.PathLike, drawn: str, **fields) -> None:
        self.images.append({"file_name": str(path), "drawn": drawn, **fields})

    def skip(self, path: str | os.PathLike, error: str) -> None:
        print(f"skipped unreadable {path}: {error}", file=sys.stderr)
        self.unreadable.append({"file_name": str(path), "error": error})

    def finish(self, summary: str = "") -> int:
        """Writes results.json (atomically), prints the summary line; returns the exit status."""
        path = self.folder / "results.json"
        payload = {**self.header, "images": self.images, "unreadable_images": len(self.unreadable),
                   "unreadable_files": self.unreadable}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))
        total = len(self.images) + len(self.unreadable)
        print(f"{len(self.images)} of {total} images done{summary}, {len(self.unreadable)} unreadable; "
              f"drawings and results.json in {self.folder}")
        for entry in self.unreadable:
            print(f"  unreadable: {entry['file_name']} ({entry['error']})")
        return EXIT_PARTIAL if self.unreadable else EXIT_OK


def _children(node) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        yield from ((str(key), value) for key, value in node.items())
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        yield from ((str(index), value) for index, value in enumerate(node))


def _dotted_keys(node, prefix: str = "") -> Iterator[str]:
    for key, value in _children(node):
        yield prefix + key
        yield from _dotted_keys(value, f"{prefix}{key}.")


def takes_argument(target, name: str) -> bool:
    """Whether callable `target` has a parameter called `name`. A class whose __init__ passes **kwargs on is
    followed up its bases (the usual forwarding); a name only an unresolved **kwargs would take counts as a typo."""
    inits = [vars(c)["__init__"] for c in inspect.getmro(target) if "__init__" in vars(c)] \
        if inspect.isclass(target) else [target]
    for init in inits:
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):  # builtins without a signature
            return False
        kinds = {p.kind for p in parameters.values()}
        if name in parameters and parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                inspect.Parameter.VAR_KEYWORD):
            return True
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            return False
    return False


def check_override_keys(config, keys, new_key_ok: Callable[[Any, str], bool] | None = None) -> None:
    """Each dotted override key must name an entry of `config` (nested mappings and sequences, list items by
    index), or a new entry that new_key_ok(parent node, name) allows (e.g. an argument the node's callable
    takes). Otherwise UsageError naming the key and the closest existing one: a typo never becomes a silently
    unused new setting."""
    for key in keys:
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            children = dict(_children(node))
            if part in children:
                node = children[part]
                continue
            if isinstance(node, Mapping) and new_key_ok is not None and new_key_ok(node, part):
                break  # a new argument; what lies below it is its value
            missing = ".".join(parts[: depth + 1])
            same_depth = [k for k in _dotted_keys(config) if k.count(".") == key.count(".")]
            close = difflib.get_close_matches(key, same_depth, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"override {key}: the config has no key {missing}{hint}")


def config_kind(path: str | os.PathLike) -> str:
    """"detection" for a detectron2 LazyConfig (its `model` is a LazyCall), else "segmentation" (an mmengine
    config: `_base_` inheritance, plain dicts with a `type`). The one test of a config's framework every tool
    uses; detectron2 is imported only when the text leaves the question open."""
    if "_base_" in Path(path).read_text():  # mmengine inheritance, which LazyConfig cannot load
        return "segmentation"
    from detectron2.config import LazyConfig

    try:
        cfg = LazyConfig.load(str(path))
    except Exception:  # noqa: BLE001  (not a LazyConfig: mmengine reports what is wrong with it)
        return "segmentation"
    return "detection" if "_target_" in (cfg.get("model") or {}) else "segmentation"


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image itself, or a folder's image files (by extension, sorted; broken links included, so that they
    are reported as missing). UsageError for a path that does not exist or a folder without images."""
    path = Path(path)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise UsageError(f"--input {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return images
    if not path.exists():
        raise UsageError(f"--input {path}: no such image or folder")
    return [path]


def run_tool(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Runs a tool's main(argv) under the convention: its return value is the exit status; an error becomes one
    line on stderr ("TOOL: message") and exit status 2, unless --debug asks for the traceback."""
    argv = sys.argv[1:] if argv is None else argv
    tool = Path(sys.argv[0]).stem
    try:
        return main(argv)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001  (the one-line answer; --debug shows the rest)
        if "--debug" in argv:
            raise
        text = error.args[0] if isinstance(error, KeyError) and error.args else error  # str(KeyError) quotes it
        message = str(text).strip() or type(error).__name__
        if not isinstance(error, (UsageError, FileNotFoundError)):  # ours say all; others say their first line
            message = f"{type(error).__name__}: {message.splitlines()[0]}"
        print(f"{tool}: {message}\n(--debug shows the traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT
