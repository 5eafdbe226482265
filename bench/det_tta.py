"""Detection test-time augmentation: AP and time per image without and with TTA, side by side, in one run.

Both evaluations go through the normal evaluation (tools/train_det.py --eval-only): the config's test set, its
evaluator, the same weights; the only difference is `dataloader.tta.enabled` (eva02.det.tta: the config's
sizes, each also flipped, merged by the sys soft-NMS). Default: the detection demo's trained model
(`make demo` writes it) on the demo's 60 validation images.

Usage: python bench/det_tta.py [--config-file configs/demo/eva02_Ti_det.py]
       [--weights output/demo_det/model_final.pth] [--output output/bench_tta] [--device cpu] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tools/train_det.py: idle OpenMP threads sleep

from detectron2.utils.logger import setup_logger  # noqa: E402

from eva02.common.cli import UsageError, default_device, run_tool  # noqa: E402
from eva02.det.checkpoint import EVACheckpointer  # noqa: E402
from eva02.det.config import load_config  # noqa: E402
from eva02.det.engine import build_model, do_test, setup_datasets  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="configs/demo/eva02_Ti_det.py")
    parser.add_argument("--weights", default="output/demo_det/model_final.pth")
    parser.add_argument("--output", default="output/bench_tta")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights}: no such file (`make demo` trains the demo detector)")
    setup_logger(name="eva02")
    setup_logger(name="detectron2", abbrev_name="d2").setLevel(logging.WARNING)
    cfg = load_config(args.config_file, args.overrides + [f"train.device={args.device}", "train.save_predictions=0"])
    setup_datasets(cfg)
    model = build_model(cfg, args.device)
    EVACheckpointer(model, require="all").load(args.weights, checkpointables=[])
    rows = {}
    for name, enabled in (("plain", False), ("TTA", True)):
        cfg.dataloader.tta.enabled = enabled
        cfg.train.output_dir = str(Path(args.output) / name)
        rows[name] = do_test(cfg, model)
    tta = cfg.dataloader.tta
    print(f"\n{args.config_file}, {args.weights}, device {args.device}; TTA: sizes {list(tta.sizes)}"
          f"{' x flip' if tta.flip else ''}, {tta.nms_method} merge at IoU {tta.nms_thresh}")
    print(f"{'':8}{'box AP':>9}{'mask AP':>9}{'s / image':>11}")
    for name, results in rows.items():
        print(f"{name:8}{results['bbox']['AP']:9.2f}{results.get('segm', {}).get('AP', float('nan')):9.2f}"
              f"{results['seconds_per_image']:11.3f}")
    plain, aug = rows["plain"], rows["TTA"]
    print(f"{'TTA gain':8}{aug['bbox']['AP'] - plain['bbox']['AP']:+9.2f}"
          f"{aug.get('segm', {}).get('AP', 0) - plain.get('segm', {}).get('AP', 0):+9.2f}"
          f"{aug['seconds_per_image'] / plain['seconds_per_image']:10.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
