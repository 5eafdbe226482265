"""MIM pre-training of TrV: the slim module that produces EVA-02 weights (paper §2.2, Table 22).

    student: TrV (patch 14, cls + mask tokens) -> final LayerNorm `norm` -> Linear `lm_head` to the teacher width
    teacher: any frozen encoder giving patch features on the same crop (a TrV / EVA-CLIP-style tower from a
             checkpoint, or a timm model with a local weights file); run without gradients under autocast
    loss:    negative cosine similarity between student predictions and teacher features, masked patches only

`pretrain(PretrainConfig)` is the whole loop (AdamW, cosine with warmup, grad clip, fp16/bf16 autocast, gradient
accumulation, DDP under torchrun, atomic resumable checkpoints); `export_official` writes the official p14 and
p14to16 files that the detection and segmentation configs load. tools/pretrain_mim.py is its command line.
Needs only torch; PIL / torchvision (image folder) and timm (timm teachers) are imported where used.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import (LoadReport, load_checkpoint, official_p14_to_p16, read_state_dict, resize_pos_embed,
                         save_atomic, to_official, to_trv_names, unwrap_state_dict)
from .layer_decay import MIM_NO_DECAY, param_groups
from .masking import DEFAULT_MASK_RATIO, BlockMaskGenerator
from .rope import rope_table
from .trv import TrV, TrVConfig, create_trv

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "RECIPES", "Recipe", "MIMStudent", "create_mim_student", "mim_loss",
    "FrozenTeacher", "TrVTeacher", "TimmTeacher", "build_teacher", "MIMImageFolder", "PretrainConfig",
    "pretrain", "cosine_lr", "export_official", "write_demo_images", "write_random_teacher",
]

log = logging.getLogger("eva02.mim")

# Pre-training inputs use the CLIP mean / std (reference §4), for the student and the CLIP teacher alike.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


# ---------------------------------------------------------------- recipe (paper Table 22)
@dataclass(frozen=True)
class Recipe:
    """Pre-training hyper-parameters of one variant; lr is for the total batch `batch_size`."""

    lr: float
    batch_size: int
    drop_path: float
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 3.0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    # Not in Table 22: the floor of the cosine, as in the BEiT-family pre-training scripts EVA-02 builds on.
    min_lr: float = 1e-5


RECIPES = {  # Table 22: lr / total batch / drop path for Ti, S, B, L; the rest is shared
    "eva02_Ti": Recipe(lr=3e-3, batch_size=4096, drop_path=0.0),
    "eva02_S": Recipe(lr=3e-3, batch_size=4096, drop_path=0.0),
    "eva02_B": Recipe(lr=1.5e-3, batch_size=2048, drop_path=0.0),
    "eva02_L": Recipe(lr=1.5e-3, batch_size=2048, drop_path=0.1),
}


def cosine_lr(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine from `base` down to `floor` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- student and loss
class MIMStudent(nn.Module):
    """TrV encoder + final LayerNorm + linear head to the teacher width.

    Attribute names give the official layout on export: `encoder.*` becomes the top-level backbone keys,
    `norm.*` and `lm_head.*` stay (see official_state_dict). The `encoder.` prefix is one that
    load_checkpoint strips, so a training checkpoint's student also loads straight into a TrV.
    """

    def __init__(self, encoder: TrV, target_dim: int, patch_grad_scale: float = 0.1):
        """patch_grad_scale: the gradient reaching the patch embedding is multiplied by it (the official
        `--stop_grad_conv1` of every released run: x.detach() * 0.9 + x * 0.1); 1.0 leaves it alone."""
        super().__init__()
        if encoder.cls_token is None or encoder.mask_token is None:
            raise ValueError("the MIM student needs a TrV built with with_cls_token=True and with_mask_token=True")
        self.encoder = encoder
        self.norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
        self.lm_head = nn.Linear(encoder.embed_dim, target_dim)
        # Official init: the xavier-normal pass covers lm_head too (it overrides the earlier trunc-normal).
        nn.init.xavier_normal_(self.lm_head.weight)
        nn.init.zeros_(self.lm_head.bias)
        if patch_grad_scale != 1.0:
            for p in encoder.patch_embed.parameters():
                p.register_hook(lambda grad: grad * patch_grad_scale)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), mask (B, N) bool -> predictions (M, D) for the M masked patches, batch-major."""
        tokens = self.encoder.forward_tokens(images, mask)[:, 1:]  # drop the cls token
        return self.lm_head(self.norm(tokens[mask]))

    def load_official(self, checkpoint: str | os.PathLike | dict, weights_only: bool = True) -> LoadReport:
        """Load an official MIM checkpoint (any size's layout, `module`-wrapped or not; or our own export) into the
        encoder, `norm` and `lm_head`; a weight left unloaded or a backbone key that fits nowhere is an error."""
        source = os.fspath(checkpoint) if not isinstance(checkpoint, dict) else "<state dict>"
        obj = checkpoint if isinstance(checkpoint, dict) else read_state_dict(checkpoint, weights_only)
        flat = unwrap_state_dict(obj, False, source, LoadReport())
        report = load_checkpoint(self.encoder, flat, source=source)
        missing = list(report.missing)
        for name in ("norm", "lm_head"):
            module = getattr(self, name)
            part = {k: flat[f"{name}.{k}"] for k in module.state_dict() if f"{name}.{k}" in flat}
            missing += [f"{name}.{k}" for k in module.state_dict() if k not in part]
            if len(part) == len(module.state_dict()):
                module.load_state_dict(part)
        if missing or report.unexpected:
            raise ValueError(f"{source}: not this student's checkpoint: missing {missing[:6]}, unexpected "
                             f"{report.unexpected[:6]}")
        return report

    def official_state_dict(self, rope_grid: int | None = None) -> dict[str, torch.Tensor]:
        """Weights under the official MIM names and layout of the student's size (Ti/S: fused qkv and packed
        w12; B/L: separate q/k/v and w1 / w2), with `norm`, `lm_head` and the RoPE buffers the official model
        registers (`rope.freqs_cos/sin` and again under every block's `attn.rope.`) for a rope_grid x rope_grid
        input (default: the student's own grid), without the `module` wrapper."""
        out = to_official(self.encoder)
        for name in ("norm", "lm_head"):
            out.update({f"{name}.{k}": v.clone() for k, v in getattr(self, name).state_dict().items()})
        grid = rope_grid or self.encoder.pos_grid
        # Official pre-training RoPE: positions 0 .. grid-1 (pt_seq_len = ft_seq_len = the input grid).
        table = rope_table(self.encoder.embed_dim // self.encoder.cfg.num_heads, (grid, grid), 1.0)
        for prefix in ["rope."] + [f"blocks.{i}.attn.rope." for i in range(self.encoder.cfg.depth)]:
            out[prefix + "freqs_cos"], out[prefix + "freqs_sin"] = table.cos.clone(), table.sin.clone()
        return out


def create_mim_student(name: str, target_dim: int, patch_grad_scale: float = 0.1, **overrides) -> MIMStudent:
    """A preset TrV at patch 14 with cls and mask tokens, wrapped as a MIM student; overrides go to create_trv.
    RoPE positions are those of the input grid (official pre-training: 0 .. grid - 1 at any input size)."""
    kwargs = {"patch_size": 14, "img_size": 224, **overrides}
    kwargs.setdefault("rope_pt_grid", kwargs["img_size"] // kwargs["patch_size"])
    encoder = create_trv(name, **kwargs, with_cls_token=True, with_mask_token=True)
    return MIMStudent(encoder, target_dim, patch_grad_scale)


def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity on masked positions only.

    pred (M, D): the student's predictions at the masked positions; target (B, N, D) teacher features;
    mask (B, N) bool with M True entries. Unmasked targets never enter the loss.
    """
    return -F.cosine_similarity(pred.float(), target[mask].float(), dim=-1).mean()


# ---------------------------------------------------------------- teachers
def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class FrozenTeacher(nn.Module):
    """A frozen encoder giving the MIM targets, its patch features; subclasses implement patch_features.

    Targets are what the teacher outputs, not re-normalized, as the official code uses them (the cosine loss is
    blind to their length). What each teacher computes:
      - TrVTeacher (an EVA-02 / EVA02-CLIP-style tower from a checkpoint file): head(norm(tokens))[:, 1:], with
        `norm` and `head` (the CLIP projection) when the file holds them.
      - TimmTeacher (a timm model and a local weights file): a CLIP tower (name with "clip", e.g.
        eva_giant_patch14_clip_224 with the official EVA-CLIP-g file, the paper's teacher) gives
        head(norm(tokens))[:, 1:], the official EVA-CLIP target (`visual(x)` with its projection); any other model
        its `forward_features` without prefix tokens (a CNN: its last map).

    Inputs arrive normalized with the CLIP mean / std (the student's); a teacher trained with other statistics
    re-normalizes them to its own. When the teacher's patch grid differs from the student's, its feature map is
    resized bilinearly to the student's grid.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        shift = torch.tensor(CLIP_MEAN) - torch.tensor(mean)
        scale = torch.tensor(CLIP_STD) / torch.tensor(std)
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", (shift / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> "FrozenTeacher":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # always in eval mode (no drop path, frozen norms)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in the teacher's own normalization -> (B, h * w, D) patch features, square grid."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid: tuple[int, int],
                amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """images (B, 3, H, W), CLIP-normalized -> targets (B, grid_h * grid_w, D), float32."""
        x = images * self.in_scale + self.in_shift
        with _autocast(images.device, amp_dtype):
            feats = self.patch_features(x)
        feats = feats.float()
        B, N, D = feats.shape
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"teacher gave {N} patch tokens, not a square grid")
        if (side, side) != tuple(grid):
            fmap = feats.transpose(1, 2).reshape(B, D, side, side)
            fmap = F.interpolate(fmap, size=tuple(grid), mode="bilinear", align_corners=False)
            feats = fmap.flatten(2).transpose(1, 2)
        return feats


def trv_from_state_dict(sd: dict[str, torch.Tensor], num_heads: int | None = None, source: str = "<state dict>") -> TrV:
    """A TrV shaped like a checkpoint already in TrV names (see to_trv_names).

    Width, depth, patch size, SwiGLU width, sub-LN and the position grid are read from the tensors; the head
    count is not stored in a checkpoint: num_heads=None takes head_dim 64, as every EVA-02 / EVA-CLIP tower.
    """
    need = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.w1.weight")
    if "blocks.0.mlp.fc1.weight" in sd:
        raise KeyError(f"{source}: an EVA-CLIP tower with a GELU MLP (fc1 / fc2), e.g. EVA-CLIP-g, is not a TrV: use "
                       "it through timm, --teacher timm:eva_giant_patch14_clip_224 --teacher-weights FILE")
    if any(k not in sd for k in need):
        raise KeyError(f"{source}: not a TrV / EVA-style vision tower (needs {need}; has {sorted(sd)[:8]} ...)")
    embed_dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    n = sd["pos_embed"].shape[1]
    grid = math.isqrt(n - 1) if math.isqrt(n - 1) ** 2 == n - 1 else math.isqrt(n)
    cfg = TrVConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads or max(1, embed_dim // 64),
                    mlp_hidden=sd["blocks.0.mlp.w1.weight"].shape[0], sub_ln="blocks.0.mlp.ffn_ln.weight" in sd)
    return TrV(cfg, patch_size=patch, img_size=grid * patch, with_cls_token="cls_token" in sd)


class TrVTeacher(FrozenTeacher):
    """A TrV / EVA-CLIP-style vision tower: blocks -> final `norm` -> `head` projection (when the checkpoint has
    them, as the EVA-CLIP visual tower the paper uses), cls token dropped."""

    def __init__(self, encoder: TrV, norm: nn.Module, head: nn.Module, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__(mean, std)
        self.encoder, self.norm, self.head = encoder, norm, head
        self.freeze()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, num_heads: int | None = None,
                        weights_only: bool = True) -> "TrVTeacher":
        """Loads any layout load_checkpoint reads, and EVA-CLIP files (tower under `visual.`)."""
        source = os.fspath(path)
        flat = unwrap_state_dict(read_state_dict(path, weights_only), False, source, LoadReport())
        if any(k.startswith("visual.blocks.") for k in flat):
            flat = {k[len("visual."):]: v for k, v in flat.items() if k.startswith("visual.")}
        sd = to_trv_names(flat, LoadReport())
        encoder = trv_from_state_dict(sd, num_heads, source)
        report = load_checkpoint(encoder, sd)
        if report.missing or report.unexpected:
            raise ValueError(f"teacher checkpoint {source} does not fit a TrV: missing {report.missing[:6]}, "
                             f"unexpected {report.unexpected[:6]}")
        norm, head = nn.Identity(), nn.Identity()
        if "norm.weight" in sd:
            norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
            norm.load_state_dict({k: sd[f"norm.{k}"] for k in ("weight", "bias")})
        if "head.weight" in sd:  # the CLIP projection of an EVA-CLIP visual tower
            out_dim, in_dim = sd["head.weight"].shape
            head = nn.Linear(in_dim, out_dim, bias="head.bias" in sd)
            head.load_state_dict({k: sd[f"head.{k}"] for k in head.state_dict()})
        log.info("teacher %s: TrV width %d depth %d patch %d, norm=%s head=%s", source, encoder.embed_dim,
                 encoder.cfg.depth, encoder.patch_size, "norm.weight" in sd, "head.weight" in sd)
        return cls(encoder, norm, head)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_tokens(x)
        prefix = 1 if self.encoder.cls_token is not None else 0
        return self.head(self.norm(tokens[:, prefix:]))


class TimmTeacher(FrozenTeacher):
    """A timm model built with pretrained=False (no hub download) and loaded from a local weights file.

    The file goes through the model family's own timm converter when it has one (`checkpoint_filter_fn`; e.g.
    an official EVA-CLIP file with its `visual.` tower loads into `eva_giant_patch14_clip_224`, the paper's
    teacher). A CLIP tower (`project=None` and "clip" in the name, or `project=True`) keeps its head, the CLIP
    projection, which must then be in the file: targets are head(norm(tokens))[:, 1:] as the official EVA-02
    pre-training uses them. Any other model's classifier is never used and need not be in the file; its targets are
    `forward_features` without the prefix (cls / register) tokens, or a CNN's last map.
    """

    def __init__(self, name: str, weights: str | os.PathLike, weights_only: bool = True,
                 project: bool | None = None, **create_kwargs):
        import timm

        source = os.fspath(weights)
        model = timm.create_model(name, pretrained=False, **create_kwargs)
        sd = unwrap_state_dict(read_state_dict(weights, weights_only), False, source, LoadReport())
        family_converter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if family_converter is not None:
            sd = family_converter(sd, model)
        use_head = "clip" in name if project is None else project
        classifier = model.pretrained_cfg.get("classifier") or "head"
        heads = () if use_head else tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
        try:
            result = model.load_state_dict({k: v for k, v in sd.items() if not k.startswith(heads)}, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{source} does not fit timm model {name!r}: {e}") from e
        missing = [k for k in result.missing_keys if not heads or not k.startswith(heads)]
        if missing or result.unexpected_keys:
            raise ValueError(f"{source} does not fit timm model {name!r}: missing {missing[:6]}, "
                             f"unexpected {result.unexpected_keys[:6]}")
        cfg = model.pretrained_cfg
        super().__init__(cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD))
        self.model = model
        self.project = model.get_classifier() if use_head else nn.Identity()
        self.freeze()

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.ndim == 4:  # CNN: (B, C, h, w)
            return feats.flatten(2).transpose(1, 2)
        return self.project(feats[:, getattr(self.model, "num_prefix_tokens", 0):])


def build_teacher(spec: str, weights: str | None = None, num_heads: int | None = None,
                  weights_only: bool = True) -> FrozenTeacher:
    """A checkpoint path -> TrVTeacher; otherwise a timm model name (optionally `timm:NAME`) whose weights come
    from the local file `weights` (never downloaded)."""
    if os.path.isfile(spec):
        return TrVTeacher.from_checkpoint(spec, num_heads, weights_only)
    name = spec[len("timm:"):] if spec.startswith("timm:") else spec
    if weights is None:
        raise FileNotFoundError(f"teacher {spec!r} is not a checkpoint file; as a timm model name it needs a local "
                                "weights file (--teacher-weights), nothing is downloaded")
    return TimmTeacher(name, weights, weights_only)


# ---------------------------------------------------------------- data
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], rng: random.Random,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering `scale` of the area with aspect w/h in `ratio`; whole image if
    ten draws do not fit."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return 0, 0, height, width


class MIMImageFolder(torch.utils.data.Dataset):
    """Every image under `root` (recursively): random resized crop + horizontal flip, CLIP-normalized, with a
    block mask. Items are addressed by (epoch, index) keys; crop, flip and mask are drawn from a generator
    seeded by (seed, epoch, index), so any worker count and a resumed run see the same samples.

    A corrupt / unreadable image is reported (logged once) and replaced by the next readable one.
    Returns image (3, S, S) float and mask (N,) bool.
    """

    def __init__(self, root: str | os.PathLike, input_size: int, patch_size: int = 14,
                 crop_scale: tuple[float, float] = (0.2, 1.0), mask_ratio: float = DEFAULT_MASK_RATIO,
                 min_mask_block: int = 16, seed: int = 0):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.root = root
        self.paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not a multiple of the patch size {patch_size}")
        self.input_size, self.crop_scale, self.seed = input_size, crop_scale, seed
        self.masks = BlockMaskGenerator(input_size // patch_size, mask_ratio, min_mask_block)
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: str):
        from PIL import Image

        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode, so truncated files fail here

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision.transforms.functional as TF

        epoch, index = key if isinstance(key, tuple) else (0, key)
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                img = self._load(path)
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for broken files
                if path not in self.bad:
                    self.bad.add(path)
                    log.warning("skipping unreadable image %s: %s: %s", path, type(e).__name__, e)
                continue
            rng = random.Random(f"{self.seed}/{epoch}/{index}")
            top, left, h, w = random_resized_crop_box(img.width, img.height, self.crop_scale, rng)
            img = TF.resized_crop(img, top, left, h, w, [self.input_size] * 2,
                                  interpolation=TF.InterpolationMode.BICUBIC)
            if rng.random() < 0.5:
                img = TF.hflip(img)
            x = TF.normalize(TF.to_tensor(img), CLIP_MEAN, CLIP_STD)
            return x, self.masks(rng).flatten()
        raise RuntimeError(f"no readable image under {self.root} (all {len(self.paths)} failed)")


def epoch_keys(num_items: int, epoch: int, seed: int, rank: int, world: int) -> list[tuple[int, int]]:
    """This rank's (epoch, index) keys for one epoch: a seeded shuffle, equal shares for every rank."""
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    share = num_items // world
    return [(epoch, i) for i in perm[rank::world][:share]]


def write_demo_images(folder: str | os.PathLike, count: int, size: int = 64, seed: int = 0) -> list[str]:
    """Writes `count` procedural PNGs (smooth colour waves with random rectangles and discs): the embedded
    default data of the demo and the tests, structured enough for a teacher's features to vary with it."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) / size, torch.arange(size) / size, indexing="ij")
    paths = []
    for i in range(count):
        freq, phase = torch.rand(3, 2, generator=g) * 6 - 3, torch.rand(3, generator=g) * 6
        img = torch.stack([0.5 + 0.5 * torch.sin(f[0] * xx + f[1] * yy + p) for f, p in zip(freq, phase)], -1)
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            colour = torch.rand(3, generator=g)
            x0, y0 = (torch.rand(2, generator=g) * 0.8).tolist()
            r = float(torch.rand(1, generator=g)) * 0.22 + 0.08
            if torch.rand(1, generator=g) < 0.5:
                shape = (xx >= x0) & (xx < x0 + r) & (yy >= y0) & (yy < y0 + r)
            else:
                shape = (xx - x0) ** 2 + (yy - y0) ** 2 < r * r
            img[shape] = colour
        path = os.path.join(folder, f"img_{i:04d}.png")
        Image.fromarray((img * 255).to(torch.uint8).numpy()).save(path)
        paths.append(path)
    return paths


def write_random_teacher(path: str | os.PathLike, width: int = 64, depth: int = 2, seed: int = 1) -> str:
    """Saves a randomly initialized small TrV tower (patch 14, head_dim 64, final norm) in the official MIM
    layout: a stand-in teacher for demos and tests where no CLIP weights can be downloaded."""
    torch.manual_seed(seed)
    trv = create_trv("eva02_Ti", depth=depth, embed_dim=width, num_heads=max(1, width // 64),
                     mlp_hidden=int(width * 4 * 2 / 3), with_cls_token=True)
    norm = nn.LayerNorm(width, eps=1e-6)
    save_atomic({"module": {**to_official(trv), **{f"norm.{k}": v for k, v in norm.state_dict().items()}}}, path)
    return os.fspath(path)


# ---------------------------------------------------------------- checkpoints and export
def _student_from_training_checkpoint(path: str) -> MIMStudent:
    ckpt = read_state_dict(path)
    for key in ("student", "config"):
        if key not in ckpt:
            raise KeyError(f"{path}: not a pretrain_mim checkpoint (no '{key}'; keys {sorted(ckpt)[:8]})")
    cfg = ckpt["config"]
    student = create_mim_student(cfg["model"], ckpt["student"]["lm_head.weight"].shape[0],
                                 img_size=cfg["input_size"], **cfg.get("arch", {}))
    student.load_state_dict(ckpt["student"])
    return student


def export_official(student: MIMStudent | str | os.PathLike, output_dir: str | os.PathLike,
                    stem: str) -> tuple[str, str]:
    """Writes `{stem}_p14.pt` ({"module": official weights} as the released MIM files, position embedding on the
    16x16 grid) and `{stem}_p14to16.pt` (patch kernel 16x16, position embedding 14x14 + cls, top-level keys)
    for detection / segmentation.

    student: a MIMStudent or a pretrain_mim training checkpoint path. Returns the two paths.
    """
    if not isinstance(student, MIMStudent):
        student = _student_from_training_checkpoint(os.fspath(student))
    # The released files hold the 16x16 (224 / 14) grid whatever size a run trained at.
    official = student.official_state_dict(rope_grid=224 // 14)
    official["pos_embed"] = resize_pos_embed(official["pos_embed"], 224 // 14)
    p14 = os.path.join(output_dir, f"{stem}_p14.pt")
    p16 = os.path.join(output_dir, f"{stem}_p14to16.pt")
    save_atomic({"module": official}, p14)
    save_atomic(official_p14_to_p16(official, img_size=224), p16)
    return p14, p16


# ---------------------------------------------------------------- the training loop
@dataclass
class PretrainConfig:
    """One pre-training run. None means "from the Table 22 recipe of `model`" (see RECIPES).

    batch_size is per process and micro-step; the effective batch is batch_size * accum_steps * world size,
    and lr=None scales the recipe lr linearly from the recipe's total batch to it.
    """

    model: str
    teacher: str
    data: str
    output: str
    teacher_weights: str | None = None
    teacher_heads: int | None = None
    epochs: int = 1
    max_steps: int | None = None  # stop (and end the cosine) here instead of after `epochs`
    batch_size: int = 32
    accum_steps: int = 1
    lr: float | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    drop_path: float | None = None
    grad_clip: float | None = None
    input_size: int = 224
    mask_ratio: float = DEFAULT_MASK_RATIO
    amp: str = "auto"  # "auto" (bf16 on a GPU that has it, else fp32), "fp16", "bf16", "none"
    num_workers: int = 4
    seed: int = 0
    save_every: int = 500  # optimizer steps between checkpoints (one is always written at the end)
    resume: bool = True  # continue from output/checkpoint.pt when it exists
    attn_impl: str = "sdpa"
    use_checkpoint: bool = False
    arch: dict = field(default_factory=dict)  # TrV architecture overrides (tests: a shrunk student)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    choices = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if amp not in choices:
        raise ValueError(f"amp must be one of auto, {', '.join(choices)}; got {amp!r}")
    return choices[amp]


def pretrain(cfg: PretrainConfig, on_step: Callable[[dict], None] | None = None,
             device: torch.device | str | None = None, teacher: FrozenTeacher | None = None,
             on_start: Callable[[dict], None] | None = None) -> dict:
    """Runs (or resumes) MIM pre-training; returns {"step", "history", "checkpoint", "skipped_images"}
    (unreadable images seen by this process; data-loader workers log theirs).

    Every optimizer step appends {"step", "epoch", "loss", "lr", "grad_norm"} to the history (and to
    output/log.jsonl on rank 0) and calls on_step with it; on_start gets {"step", "total_steps",
    "steps_per_epoch", "images", "effective_batch", "lr"} once set up. `teacher` replaces the one cfg.teacher
    names (any FrozenTeacher, e.g. a wrapper around another CLIP implementation). Under torchrun, call
    torch.distributed init_process_group first: the student is wrapped in DDP, each rank reads its own share.
    """
    if cfg.model not in RECIPES:
        raise KeyError(f"unknown model {cfg.model!r}; choose from {sorted(RECIPES)}")
    rank, world = _dist_info()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = RECIPES[cfg.model]
    amp_dtype = _amp_dtype(cfg.amp, device)
    grad_clip = recipe.grad_clip if cfg.grad_clip is None else cfg.grad_clip

    dataset = MIMImageFolder(cfg.data, cfg.input_size, 14, recipe.crop_scale, cfg.mask_ratio, seed=cfg.seed)
    micro_per_step = cfg.batch_size * cfg.accum_steps
    steps_per_epoch = (len(dataset) // world) // micro_per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images in {cfg.data} are fewer than one optimizer step needs "
                         f"(batch {cfg.batch_size} x accum {cfg.accum_steps} x {world} processes)")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup_steps = round((recipe.warmup_epochs if cfg.warmup_epochs is None else cfg.warmup_epochs) * steps_per_epoch)
    effective_batch = micro_per_step * world
    base_lr = cfg.lr if cfg.lr is not None else recipe.lr * effective_batch / recipe.batch_size
    min_lr = recipe.min_lr if cfg.min_lr is None else cfg.min_lr
    min_lr = min(min_lr, base_lr)

    if teacher is None:
        teacher = build_teacher(cfg.teacher, cfg.teacher_weights, cfg.teacher_heads)
    teacher = teacher.to(device)
    grid = (cfg.input_size // 14,) * 2
    probe = teacher(torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=device), grid, amp_dtype)
    torch.manual_seed(cfg.seed)  # same initial student on every rank
    student = create_mim_student(
        cfg.model, probe.shape[-1], img_size=cfg.input_size, attn_impl=cfg.attn_impl,
        use_checkpoint=cfg.use_checkpoint,
        drop_path_rate=recipe.drop_path if cfg.drop_path is None else cfg.drop_path, **cfg.arch,
    ).to(device)
    groups = param_groups(student.named_parameters(), base_lr,
                          recipe.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
                          student.encoder.cfg.depth, 1.0, no_decay=MIM_NO_DECAY)
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=recipe.betas, eps=recipe.eps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    ckpt_path = os.path.join(cfg.output, CHECKPOINT_NAME)
    log_path = os.path.join(cfg.output, LOG_NAME)
    step, history = 0, []
    if cfg.resume and os.path.isfile(ckpt_path):
        ckpt = read_state_dict(ckpt_path)
        if ckpt["config"]["model"] != cfg.model:
            raise ValueError(f"{ckpt_path} is a {ckpt['config']['model']} run, not {cfg.model}; use another --output")
        student.load_state_dict(ckpt["student"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, history = ckpt["step"], list(ckpt["history"])
        log.info("resumed %s at step %d", ckpt_path, step)
    if rank == 0:  # the log is rewritten from the checkpoint's history: steps after the last save are redone
        os.makedirs(cfg.output, exist_ok=True)
        with open(log_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
    log.info("MIM %s: %d images, %d steps/epoch, %d steps, effective batch %d, lr %.3g, amp %s, teacher %s",
             cfg.model, len(dataset), steps_per_epoch, total_steps, effective_batch, base_lr, amp_dtype, cfg.teacher)

    if on_start is not None:
        on_start({"step": step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                  "images": len(dataset), "effective_batch": effective_batch, "lr": base_lr})
    model = student
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=device_ids)

    def save():
        if rank == 0:
            save_atomic({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "step": step, "history": history, "config": asdict(cfg)},
                        ckpt_path)

    model.train()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        keys = epoch_keys(len(dataset), epoch, cfg.seed, rank, world)
        keys = keys[start * micro_per_step: steps_per_epoch * micro_per_step]  # resume mid-epoch
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=keys, drop_last=True,
                                             num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        batches = iter(loader)
        for _ in range(start, steps_per_epoch):
            if step >= total_steps:
                break
            lr = cosine_lr(step, total_steps, warmup_steps, base_lr, min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.accum_steps):
                images, mask = next(batches)
                images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
                targets = teacher(images, grid, amp_dtype)
                last = micro == cfg.accum_steps - 1
                sync = model.no_sync() if world > 1 and not last else contextlib.nullcontext()
                with sync:
                    with _autocast(device, amp_dtype):
                        loss = mim_loss(model(images, mask), targets, mask)
                    scaler.scale(loss / cfg.accum_steps).backward()
                loss_sum += loss.detach()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if world > 1:
                dist.all_reduce(loss_sum)
            loss_value = loss_sum.item() / (cfg.accum_steps * world)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"MIM loss is {loss_value} at step {step}; the last good state is {ckpt_path}")
            step += 1
            record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)}
            history.append(record)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if on_step is not None:
                on_step(record)
            if step % cfg.save_every == 0 or step == total_steps:
                save()
    return {"step": step, "history": history, "checkpoint": ckpt_path, "skipped_images": sorted(dataset.bad)}
