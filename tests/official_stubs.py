"""Shared by the tests/*/fixtures/make_*.py scripts, which run the official EVA-02 code (github.com/baaivision/EVA at
COMMIT) from a checkout given on the command line, unmodified: stand-ins for its imports that have no CPU build here
(xformers, apex, wandb), numerically what those do on CPU, and the inputs and random weights the fixtures use."""
import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import skimage.data
import skimage.transform
import torch
import torch.nn.functional as F
from torch import nn

COMMIT = "5623d08bb08a8268c7bc18e1d9b8b4bd651fe4d9"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def parse_args(script: str, sub: str) -> tuple[Path, Path]:
    """--official: the EVA checkout at COMMIT; --out: where the fixtures go (default: beside the script).
    Returns (checkout / sub, out)."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument("--official", type=Path, required=True,
                        help=f"checkout of github.com/baaivision/EVA at {COMMIT}")
    parser.add_argument("--out", type=Path, default=Path(script).resolve().parent)
    args = parser.parse_args()
    root = args.official / sub
    if not root.is_dir():
        parser.error(f"{root} is missing: --official must be the root of an EVA checkout")
    args.out.mkdir(parents=True, exist_ok=True)
    return root, args.out


def write_json(path: Path, data):
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def memory_efficient_attention(q, k, v):
    """xformers.ops.memory_efficient_attention without bias or dropout: softmax(q k^T / sqrt(d)) v, (B, N, heads, d)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return (attn.softmax(dim=-1) @ v).transpose(1, 2)


class SwiGLU(nn.Module):
    """xformers.ops.SwiGLU with its default packed weights w12 = [w1; w2], computed as its eager CPU path."""

    def __init__(self, in_features, hidden_features, out_features=None, bias=True):
        super().__init__()
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x):
        (w1, w2), (b1, b2) = self.w12.weight.chunk(2), self.w12.bias.chunk(2)
        return self.w3(F.silu(F.linear(x, w1, b1)) * F.linear(x, w2, b2))


def install_stubs():
    """xformers.ops, apex.normalization (FusedLayerNorm on CPU is F.layer_norm, i.e. nn.LayerNorm) and wandb
    (imported, never called here)."""
    modules = {"xformers": {}, "xformers.ops": {"memory_efficient_attention": memory_efficient_attention,
                                                 "SwiGLU": SwiGLU},
               "apex": {}, "apex.normalization": {"FusedLayerNorm": nn.LayerNorm}, "wandb": {}}
    for name, attrs in modules.items():
        module = sys.modules.setdefault(name, types.ModuleType(name))
        module.__dict__.update(attrs)
    sys.modules["xformers"].ops = sys.modules["xformers.ops"]
    sys.modules["apex"].normalization = sys.modules["apex.normalization"]


def photo(name: str, size, order: int = 3, square_crop: bool = True) -> torch.Tensor:
    """skimage photo, centre square crop unless told otherwise, anti-aliased resize to size (int: square; or
    (height, width)) with spline `order` (3 bicubic, 1 bilinear): (3, height, width) float64 in [0, 1]."""
    image = getattr(skimage.data, name)()
    if square_crop:
        h, w = image.shape[:2]
        s = min(h, w)
        image = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    size = (size, size) if isinstance(size, int) else size
    resized = skimage.transform.resize(image, size, order=order, anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)


def random_fp16_exact(state: dict, seed: int, skip=lambda key: False) -> dict:
    """Random values for the floating-point entries of a state dict, in its order, exact in float16 so that storing
    them as float16 loses nothing: matrices and kernels N(0, 1 / n), n the size of a row (the fan-in of linear and
    conv weights); cls / mask tokens N(0, 1); pos_embed N(0, 0.5^2); vectors the constructor sets to one (norm
    scales, BN running variances) 1 + N(0, 0.2^2); other vectors N(0, 0.1^2)."""
    torch.manual_seed(seed)
    out = {}
    for key, value in state.items():
        if skip(key) or not value.is_floating_point():
            continue
        noise = torch.randn(value.shape)
        if value.dim() >= 2 and key.endswith("pos_embed"):
            value = 0.5 * noise
        elif value.dim() >= 2 and key.endswith("_token"):
            value = noise
        elif value.dim() >= 2:
            value = noise / value[0].numel() ** 0.5
        elif bool((value == 1).all()):
            value = 1 + 0.2 * noise
        else:
            value = 0.1 * noise
        out[key] = value.half()
    return out


def import_file(path: Path, name: str):
    """An official source file as a module of the given name, without its package's __init__."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
