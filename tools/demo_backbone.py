#!/usr/bin/env python
"""Backbone demo: build EVA-02-B in its detection setting, save and reload a checkpoint, run a real photo
(scikit-image's astronaut, public domain) through it and save the first three principal components of the
feature map as an RGB image beside the photo.

  python tools/demo_backbone.py --output output/demo [--weights CKPT]

Without --weights the model keeps its (official) random initialization, so the picture shows what position
embedding and patch content alone give; with a pre-trained checkpoint it shows semantic parts.
"""
from __future__ import annotations

import argparse
import os

from eva02.common.cli import EXIT_OK, add_common_args, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

import numpy as np
import torch
import torch.nn.functional as F

from eva02.backbone import create_trv, load_checkpoint
from eva02.common.files import save_atomic

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def pca_rgb(feat: torch.Tensor) -> np.ndarray:
    """(C, H, W) features -> (H, W, 3) in [0, 1]: the top three principal components, min-max scaled."""
    C, H, W = feat.shape
    x = feat.reshape(C, -1).T.double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = x @ v[:3].T
    comps = (comps - comps.min(0).values) / (comps.max(0).values - comps.min(0).values + 1e-12)
    return comps.reshape(H, W, 3).float().numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--weights", help="a checkpoint in any layout load_checkpoint reads")
    add_common_args(parser, "unsafe_pickle")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (multiple of 16)")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import data

    def build():  # EVA-02-B as the COCO bsl detector uses it (Table 28)
        return create_trv("eva02_B", patch_size=16, window_size=16, global_blocks=(2, 5, 8, 11)).eval()

    ckpt = args.weights or os.path.join(args.output, "eva02_B_p16_init.pth")
    if not args.weights:  # round trip: save a freshly initialized model, load it into another
        save_atomic({"model": build().state_dict()}, ckpt)
    model = build()
    print(f"loading {ckpt}\n{load_checkpoint(model, ckpt, weights_only=not args.unsafe_pickle)}")

    photo = data.astronaut()
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        feat = model(x)[0]
    print(f"input {tuple(x.shape)} -> features {tuple(feat.shape)}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(photo)
    axes[0].set_title("input (skimage astronaut)")
    axes[1].imshow(pca_rgb(feat), interpolation="nearest")
    axes[1].set_title(f"EVA-02-B features, PCA to RGB ({feat.shape[1]}x{feat.shape[2]})")
    for ax in axes:
        ax.axis("off")
    out = os.path.join(args.output, "backbone_pca.png")
    fig.savefig(out, dpi=80, bbox_inches="tight")
    print(f"saved {out}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(run_tool(main))
