#!/usr/bin/env python
"""Convert EVA-02 checkpoints.

  --to p14to16  official p14 MIM checkpoint -> the official `*_p14to16.pt` layout that detection and
                segmentation initialize from (patch kernel 14 -> 16, position embedding 16x16 -> 14x14,
                RoPE buffers dropped, official key names at the top level).
  --to eva02    any layout load_checkpoint reads -> this project's layout: {"model": TrV state dict (fused
                qkv), "arch": {...}}, at the patch size you ask for.
  --to merged   a checkpoint of a LoRA run (detection, segmentation; lora= in the config) -> the same checkpoint
                with every adapter folded into its weight (eva02.backbone.merge_lora), which every tool loads into
                a model without adapters; the weights (and an EMA copy), class names and metadata are kept, the
                training state (optimizer, scheduler, iteration) is not.

Examples (flags follow eva02.common.cli's convention):
  python tools/convert_checkpoint.py --input eva02_L_pt_m38m_p14.pt --output eva02_L_pt_m38m_p14to16.pt --to p14to16
  python tools/convert_checkpoint.py --input eva02_L_pt_m38m_p14.pt --output eva02_L_p16.pth --to eva02 --patch-size 16
  python tools/convert_checkpoint.py --input output/lora/model_final.pth --output model_merged.pth --to merged
"""
from __future__ import annotations

import argparse
import sys

from eva02.common.cli import EXIT_OK, add_common_args, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

import torch

from eva02.backbone import (PRESETS, TrVConfig, create_trv, is_adapter_key, load_checkpoint, merge_lora,
                            official_p14_to_p16, read_state_dict)
from eva02.backbone.checkpoint import LoadReport, infer_trv_config, to_trv_names, unwrap_state_dict
from eva02.common.files import save_atomic


def infer_preset(state: dict, source: str) -> tuple[str, TrVConfig]:
    """(preset name, architecture) of a converted state dict read from `source`: the preset of its width."""
    cfg, _, _ = infer_trv_config(state, source=source)
    for name, preset in PRESETS.items():
        if preset.embed_dim == cfg.embed_dim:
            return name, cfg
    raise ValueError(f"{source}: embed dim {cfg.embed_dim} matches no EVA-02 preset "
                     f"({ {n: c.embed_dim for n, c in PRESETS.items()} }): --to eva02 converts these sizes only")


TRAINING_STATE = ("optimizer", "scheduler", "param_schedulers", "trainer", "iteration", "message_hub", "meta_iter",
                  "grad_scaler", "rng_state")


def merge_checkpoint(raw: dict, source: str) -> tuple[dict, int]:
    """--to merged: every weight dict of the checkpoint (top level, model / state_dict / module / ema_state)
    with its LoRA adapters folded in, the other entries but the training state kept. Returns it and how many
    weights took an adapter."""
    def merged(weights: dict) -> dict:
        return merge_lora(weights) if any(is_adapter_key(k) for k in weights) else weights

    if any(isinstance(v, torch.Tensor) for v in raw.values()):  # a bare state dict
        out = merged(raw)
    else:
        out = {k: merged(v) if isinstance(v, dict) else v for k, v in raw.items() if k not in TRAINING_STATE}
    before = sum(k.endswith(".lora_a") for v in (raw, *raw.values()) if isinstance(v, dict) for k in v)
    if not before:
        raise ValueError(f"{source}: no LoRA adapters (keys ending in .lora_a / .lora_b) to merge")
    return out, before


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, metavar="PATH", help="the checkpoint to convert")
    parser.add_argument("--output", required=True, metavar="PATH", help="where the converted checkpoint goes")
    add_common_args(parser, "unsafe_pickle")
    parser.add_argument("--to", choices=("p14to16", "eva02", "merged"), required=True)
    parser.add_argument("--patch-size", type=int, default=16, help="--to eva02: patch size of the result")
    parser.add_argument("--img-size", type=int, default=224, help="pre-training size setting the pos-embed grid")
    parser.add_argument("--patch-resize", choices=("bicubic", "pinv"), default="bicubic")
    parser.add_argument("--use-ema", action="store_true", help="take the weights from 'ema_state'")
    args = parser.parse_args(argv)

    raw = read_state_dict(args.input, weights_only=not args.unsafe_pickle)
    if args.to == "merged":
        out, merged = merge_checkpoint(raw, args.input)
        save_atomic(out, args.output)
        print(f"wrote {args.output}: LoRA adapters folded into {merged} weights; kept {', '.join(sorted(out))}")
        return EXIT_OK
    if args.to == "p14to16":
        report = LoadReport()
        state = unwrap_state_dict(raw, args.use_ema, args.input, report)
        if "patch_embed.proj.weight" not in state:
            raise KeyError(f"{args.input}: no 'patch_embed.proj.weight' at the top level, under 'module' or 'model'")
        out = official_p14_to_p16(state, args.img_size, args.patch_resize)
        save_atomic(out, args.output)
        print(f"wrote {args.output}: {len(out)} tensors, patch kernel {tuple(out['patch_embed.proj.weight'].shape)}, "
              f"pos_embed {tuple(out['pos_embed'].shape)}")
        return EXIT_OK

    state = to_trv_names(unwrap_state_dict(raw, args.use_ema, args.input, LoadReport()), LoadReport())
    name, cfg = infer_preset(state, args.input)
    depth, sub_ln = cfg.depth, cfg.sub_ln
    model = create_trv(name, depth=depth, patch_size=args.patch_size, img_size=args.img_size, sub_ln=sub_ln,
                       with_cls_token=True, with_mask_token=True)
    report = load_checkpoint(model, state, patch_resize=args.patch_resize, source=args.input)
    print(report)
    if report.missing:
        # tokens the source never had are not worth keeping as random values
        state = {k: v for k, v in model.state_dict().items() if k not in report.missing}
    else:
        state = model.state_dict()
    arch = {"preset": name, "depth": depth, "sub_ln": sub_ln, "patch_size": args.patch_size, "img_size": args.img_size}
    save_atomic({"model": state, "arch": arch}, args.output)
    print(f"wrote {args.output}: {name} ({arch})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
