"""Loading every EVA-02 checkpoint layout into a TrV, and writing the official ones.

Layouts read (docs/reference.md §5):
  - MIM pre-training (`eva02_*_pt_*_p14.pt`): DeepSpeed dict, weights under `module`.
  - `*_p14to16.pt`: the same keys with the 16x16 kernel, at the top level or under `model`.
  - released detectors (`eva02_*_{coco,lvis}_*.pth`): detectron2 state dict under `model`, backbone under
    `backbone.net.`; O365-initialized ones add `ema_state`.
  - timm's EVA-02 naming (fc1_g / fc1_x / fc2 / mlp.norm, q_proj.bias / v_proj.bias; or fused qkv and the
    packed mlp.fc1 of its Ti/S models).
  - this project's own layout (`TrV.state_dict()`, fused qkv), optionally under `model`, also mmseg's
    `backbone.` prefix.
RoPE buffers are derived from the grid and always ignored. Patch kernels and position embeddings are resized
to the model; any other shape difference is an error naming the key.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .trv import TrV, TrVConfig
from .tuning import is_adapter_key

__all__ = [
    "HARMLESS_GLOBALS", "IncompleteCheckpointError", "LoadReport", "check_complete", "infer_trv_config",
    "load_checkpoint", "read_weights", "read_state_dict", "to_official", "official_p14_to_p16",
    "to_trv_names", "existing_file", "unreadable_checkpoint", "unwrap_model", "unwrap_state_dict",
    "resize_patch_kernel", "resize_pos_embed",
]

logger = logging.getLogger(__name__)

# Prefixes under which a backbone sits inside a larger model, longest first.
# Wrappers a TrV sits in: detector, segmentor, MIM student, EVA-CLIP image tower (`visual.`).
BACKBONE_PREFIXES = ("backbone.net.", "backbone.", "encoder.", "student.", "visual.")
# The keys a TrV owns once converted (anything else in a backbone checkpoint is not ours).
_OWN = re.compile(r"^(patch_embed\.proj\.(weight|bias)|pos_embed|cls_token|mask_token|blocks\.\d+\..+)$")
_DERIVED = re.compile(r"(^|\.)rope(_win|_glb)?\.|(^|\.)rope_(win|glb)$|freqs_(cos|sin)$")
# timm EVA-02 name -> official name
_TIMM = [
    (".mlp.fc1_g.", ".mlp.w1."),
    (".mlp.fc1_x.", ".mlp.w2."),
    (".mlp.fc2.", ".mlp.w3."),
    (".mlp.norm.", ".mlp.ffn_ln."),
    (".attn.q_proj.bias", ".attn.q_bias"),
    (".attn.v_proj.bias", ".attn.v_bias"),
]


def _harmless_globals() -> list:
    """What official releases pickle beside their tensors and weights_only may rebuild: the training arguments
    DeepSpeed saves (`argparse.Namespace`) and numpy scalars / arrays (detectron2's trainer state), under numpy 2's
    module names and under the numpy 1 names (`numpy.core.*`) the released files were written with. None of them
    runs code when rebuilt; anything else in a file is still refused."""
    import numpy as np

    multiarray = importlib.import_module("numpy._core.multiarray")
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    legacy = [(getattr(multiarray, name), f"numpy.core.multiarray.{name}") for name in ("scalar", "_reconstruct")]
    return [argparse.Namespace, np.ndarray, np.dtype, multiarray.scalar, multiarray._reconstruct, *dtypes, *legacy]


HARMLESS_GLOBALS = _harmless_globals()


@dataclass
class LoadReport:
    """What load_checkpoint did: keys loaded (after conversion), missing model keys, unexpected keys
    (backbone-looking keys the model does not have), skipped keys (outside the backbone: detector or segmentor
    heads, pre-training heads, and the cls / mask tokens of a model without them), derived keys (RoPE buffers,
    recomputed for the actual grid), and the conversions applied."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}, unexpected "
                 f"{len(self.unexpected)}, skipped {len(self.skipped)}, derived (RoPE) {len(self.derived)}"]
        lines += [f"  converted: {c}" for c in self.converted]
        if self.missing:
            lines.append(f"  missing: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {', '.join(self.unexpected)}")
        return "\n".join(lines)




class IncompleteCheckpointError(ValueError):
    """Loading would leave model weights at their initial values, or checkpoint weights unused."""


def check_complete(source: str, missing: list[str], unused: list[str], opt_out: str, hint: str = "") -> None:
    """IncompleteCheckpointError naming the model weights a load left unloaded and the checkpoint tensors that fit
    nowhere (the first 8 of each), with `hint` (e.g. a class-count mismatch) and how to allow it (`opt_out`)."""
    missing = [k for k in missing if not is_adapter_key(k)]  # LoRA adapters start fresh by design
    adapters = [k for k in unused if is_adapter_key(k)]
    if adapters:  # a LoRA run's checkpoint, for a model built without the adapters: they would be ignored
        raise IncompleteCheckpointError(
            f"{source} holds {len(adapters)} LoRA adapter tensors ({adapters[0]}, ...) this model has no place for: "
            "merge them into plain weights first (tools/convert_checkpoint.py --to merged), or build the model "
            "with the same lora= setting")
    if not missing and not unused:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} model weights would stay at their initial values ({', '.join(missing[:8])}"
                     f"{', ...' if len(missing) > 8 else ''})")
    if unused:
        parts.append(f"{len(unused)} checkpoint tensors fit nowhere ({', '.join(unused[:8])}"
                     f"{', ...' if len(unused) > 8 else ''})")
    raise IncompleteCheckpointError(f"{source}: {'; '.join(parts)}. {hint or 'Is it the checkpoint for this config?'} "
                                    f"If the partial load is intended, {opt_out}.")


def _torch_reason(error: Exception) -> str:
    """The gist of a torch.load error: the weights_only unpickler's own detail ("Unsupported global: ...", or
    "Unsupported operand ..." in a damaged pickle), else the first sentence (torch's text runs to a paragraph)."""
    text = str(error).strip()
    _, found, detail = text.partition("WeightsUnpickler error:")
    return ((detail.strip() if found else text).split("\n")[0].split(". ")[0] or type(error).__name__).rstrip(".")


def existing_file(path: str | os.PathLike) -> str:
    """path as a str; FileNotFoundError naming it when no such file exists."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return path


def unreadable_checkpoint(path: str | os.PathLike, error: Exception) -> ValueError:
    """The error for a checkpoint file torch failed to read: the file, the gist of torch's reason, what to do."""
    return ValueError(f"{os.fspath(path)} is not a readable checkpoint ({_torch_reason(error)}): truncated or "
                      "damaged? Copy or download it again")


def read_state_dict(path: str | os.PathLike, weights_only: bool = True) -> dict:
    """The raw object saved in a checkpoint file (.pt / .pth / .safetensors).

    weights_only=True rebuilds tensors, plain containers and HARMLESS_GLOBALS (the non-tensor objects of official
    releases) and refuses anything else; pass False only for files you trust (unpickling runs code).
    """
    path = existing_file(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch.save writes a zip archive; legacy files a pickle
        raise ValueError(f"{path} is not a checkpoint (neither a torch.save archive nor a pickle, nor .safetensors)")
    try:
        with torch.serialization.safe_globals(HARMLESS_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        reason = _torch_reason(e)
        if reason.startswith("Unsupported global"):  # an object weights_only refuses, not a damaged file
            raise ValueError(f"{path} holds pickled objects that weights_only loading refuses ({reason}); if you "
                             "trust the file, the tools read it with --unsafe-pickle (Python: weights_only=False)") from e
        raise unreadable_checkpoint(path, e) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def unwrap_state_dict(obj: dict, use_ema: bool, source: str, report: LoadReport) -> dict:
    """The flat {name: tensor} dict inside a checkpoint object."""
    if use_ema:
        if "ema_state" not in obj:
            raise KeyError(f"{source}: use_ema=True but the checkpoint has no 'ema_state' (keys: {sorted(obj)[:8]})")
        report.converted.append("took the EMA weights from 'ema_state'")
        obj = obj["ema_state"]
    for key in ("module", "model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            report.converted.append(f"took the weights under '{key}'")
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    return tensors


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers (whose state-dict keys carry `module.`)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def read_weights(checkpoint: str | os.PathLike | dict, weights_only: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The flat {name: tensor} weights of a checkpoint file or loaded dict (unwrapped from `module` / `model` /
    `state_dict`), and the name errors should give it (the file, or "<state dict>")."""
    source = os.fspath(checkpoint) if not isinstance(checkpoint, dict) else "<state dict>"
    obj = checkpoint if isinstance(checkpoint, dict) else read_state_dict(checkpoint, weights_only)
    return unwrap_state_dict(obj, False, source, LoadReport()), source


def _is_packed_fc1(sd: dict[str, torch.Tensor], key: str) -> bool:
    """timm's packed SwiGLU fc1 is twice as wide as fc2's input (fc2 already renamed w3); a GELU MLP's fc1
    (EVA-CLIP) is not."""
    fc2 = sd.get(key.replace(".fc1.", ".w3.").replace(".bias", ".weight"))
    return fc2 is not None and sd[key].shape[0] == 2 * fc2.shape[-1]


def to_trv_names(sd: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, rename timm keys, drop derived RoPE buffers, fuse q/k/v."""
    prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p + "blocks.") for k in sd)), "")
    if prefix:
        report.converted.append(f"stripped prefix '{prefix}'")
    out = {}
    for k, v in sd.items():
        if prefix and not k.startswith(prefix):
            report.skipped.append(k)
            continue
        k = k[len(prefix):]
        if _DERIVED.search(k):
            report.derived.append(k)
            continue
        for old, new in _TIMM:
            if old in k:
                k = k.replace(old, new)
                if "renamed timm keys" not in report.converted:
                    report.converted.append("renamed timm keys")
        out[k] = v
    # Packed SwiGLU of Ti/S: [w1; w2] in one Linear, the first half through SiLU (the official xformers `w12`,
    # timm's `fc1`).
    for packed in [k for k in out if ".mlp.w12." in k or (".mlp.fc1." in k and _is_packed_fc1(out, k))]:
        name = ".w12." if ".mlp.w12." in packed else ".fc1."
        w1, w2 = out.pop(packed).chunk(2, dim=0)
        out[packed.replace(name, ".w1.")], out[packed.replace(name, ".w2.")] = w1, w2
        note = f"split the packed mlp{name[:-1]} into w1 / w2"
        if note not in report.converted:
            report.converted.append(note)
    fused = 0
    for q_key in [k for k in out if k.endswith(".attn.q_proj.weight")]:
        base = q_key[: -len("q_proj.weight")]
        out[base + "qkv.weight"] = torch.cat([out.pop(base + f"{n}_proj.weight") for n in "qkv"], dim=0)
        fused += 1
    if fused:
        report.converted.append(f"fused q/k/v projections in {fused} blocks")
    return out


def infer_trv_config(sd: dict[str, torch.Tensor], num_heads: int | None = None,
                     source: str = "<state dict>") -> tuple[TrVConfig, int, int]:
    """(architecture, patch size, pre-training image size) of a state dict already in TrV names (see to_trv_names):
    width, depth, patch size, SwiGLU width, sub-LN and the position grid come from the tensors. The head count is
    not stored in a checkpoint: num_heads=None takes head_dim 64, as every EVA-02 / EVA-CLIP tower."""
    need = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.w1.weight")
    if any(k not in sd for k in need):
        raise KeyError(f"{source}: not a TrV / EVA-style vision tower (needs {need}; has {sorted(sd)[:8]} ...)")
    embed_dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    n = sd["pos_embed"].shape[1]
    grid = math.isqrt(n - 1) if math.isqrt(n - 1) ** 2 == n - 1 else math.isqrt(n)
    cfg = TrVConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads or max(1, embed_dim // 64),
                    mlp_hidden=sd["blocks.0.mlp.w1.weight"].shape[0], sub_ln="blocks.0.mlp.ffn_ln.weight" in sd)
    return cfg, patch, grid * patch


def resize_patch_kernel(w: torch.Tensor, size: int, method: str = "bicubic") -> torch.Tensor:
    """Resize a (C, 3, p, p) patch-embedding kernel to (C, 3, size, size).

    "bicubic": F.interpolate as the official p14to16 script does.
    "pinv": the pseudo-inverse resize of FlexiViT, which keeps <kernel, patch> equal for patches resized
    bilinearly, so token embeddings change least.
    """
    if w.shape[-1] == size:
        return w
    if method == "bicubic":
        return F.interpolate(w.float(), size=(size, size), mode="bicubic", align_corners=False).to(w.dtype)
    if method != "pinv":
        raise ValueError(f"patch kernel resize method must be 'bicubic' or 'pinv', got {method!r}")
    old = w.shape[-1]
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resize = F.interpolate(basis, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    resize = resize.reshape(old * old, size * size).T  # (new^2, old^2): maps an old patch to a new one
    pinv = torch.linalg.pinv(resize.T)  # (old^2 -> new^2) for kernels
    flat = w.double().reshape(-1, old * old) @ pinv.T
    return flat.reshape(*w.shape[:2], size, size).to(w.dtype)


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, [1 +] g*g, C) -> (1, 1 + grid*grid, C), bicubic as official; a missing cls slot becomes zeros."""
    n = pos.shape[1]
    if math.isqrt(n) ** 2 == n:
        cls = pos.new_zeros(1, 1, pos.shape[-1])
    elif math.isqrt(n - 1) ** 2 == n - 1:
        cls, pos = pos[:, :1], pos[:, 1:]
    else:
        raise ValueError(f"pos_embed with {n} positions is not a square grid (with or without a cls slot)")
    g = math.isqrt(pos.shape[1])
    if g != grid:
        grid_pos = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        grid_pos = F.interpolate(grid_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        pos = grid_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat((cls, pos), dim=1)


def load_checkpoint(
    model: TrV,
    checkpoint: str | os.PathLike | dict,
    use_ema: bool = False,
    patch_resize: str = "bicubic",
    weights_only: bool = True,
    source: str | None = None,
) -> LoadReport:
    """Load any EVA-02 checkpoint layout into `model`; returns a LoadReport.

    Args:
        checkpoint: a file path (.pt, .pth, .safetensors) or an already loaded dict.
        source: the name errors give a dict `checkpoint` (e.g. the file it was read from).
        use_ema: take the weights from the checkpoint's `ema_state` (O365-initialized detectors).
        patch_resize: "bicubic" (official) or "pinv" when the patch size differs (14 -> 16).
        weights_only: refuse pickled objects (see read_state_dict).
    """
    source = source or (os.fspath(checkpoint) if not isinstance(checkpoint, dict) else "<state dict>")
    obj = read_state_dict(checkpoint, weights_only) if not isinstance(checkpoint, dict) else checkpoint
    report = LoadReport()
    sd = to_trv_names(unwrap_state_dict(obj, use_ema, source, report), report)
    own = model.state_dict()
    to_load = {}
    for k, v in sd.items():
        if k not in own:
            # cls / mask tokens belong to pre-training; a model built without them has no use for them
            own_kind = _OWN.match(k) and k not in ("cls_token", "mask_token")
            (report.unexpected if own_kind else report.skipped).append(k)
            continue
        target = own[k].shape
        if k == "patch_embed.proj.weight" and v.shape != target and v.shape[:2] == target[:2]:
            report.converted.append(f"patch kernel {v.shape[-1]}->{target[-1]} ({patch_resize})")
            v = resize_patch_kernel(v, target[-1], patch_resize)
        elif k == "pos_embed" and v.shape != target:
            report.converted.append(f"pos_embed {tuple(v.shape)}->{tuple(target)} (bicubic)")
            v = resize_pos_embed(v, model.pos_grid)
        if v.shape != target:
            raise ValueError(f"{source}: shape mismatch for '{k}': checkpoint {tuple(v.shape)}, model {tuple(target)}")
        to_load[k] = v
    result = model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(result.missing_keys)
    return report


def to_official(model: TrV, packed: bool | None = None) -> dict[str, torch.Tensor]:
    """The model's weights in the official EVA-02 layout of its size: Ti/S (`cfg.packed`) with one `attn.qkv` and
    the xformers-packed `mlp.w12` ([w1; w2]), B/L with separate q/k/v projections and w1 / w2. `packed` overrides
    the size's layout."""
    packed = model.cfg.packed if packed is None else packed
    state = model.state_dict()
    out = {}
    for k, v in state.items():
        if k.endswith(".attn.qkv.weight") and not packed:
            base = k[: -len("qkv.weight")]
            for name, w in zip("qkv", v.chunk(3, dim=0)):
                out[base + f"{name}_proj.weight"] = w.clone()
        elif ".mlp.w1." in k and packed:
            out[k.replace(".w1.", ".w12.")] = torch.cat((v, state[k.replace(".w1.", ".w2.")]))
        elif ".mlp.w2." in k and packed:
            continue
        else:
            out[k] = v.clone()
    return out


def official_p14_to_p16(state: dict[str, torch.Tensor], img_size: int = 224, method: str = "bicubic") -> dict[str, torch.Tensor]:
    """The official `*_p14to16.pt` conversion of an official-named state dict: patch kernel 14 -> 16 and
    position embedding (with its cls slot) from the 16x16 grid to img_size / 16 (14x14 for 224)."""
    out = dict(state)
    out["patch_embed.proj.weight"] = resize_patch_kernel(state["patch_embed.proj.weight"], 16, method)
    out["pos_embed"] = resize_pos_embed(state["pos_embed"], img_size // 16)
    return {k: v for k, v in out.items() if not _DERIVED.search(k)}
