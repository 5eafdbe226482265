#!/usr/bin/env python
"""Write the generated shapes (eva02.common.shapes) as a dataset of your own: data to try the own-data path on.

    .venv/bin/python tools/make_shapes.py --output data/my_shapes --layout coco --classes disk,square,triangle

--layout coco: DIR/train.json + DIR/train/*.png, DIR/val.json + DIR/val/*.png (COCO instances, polygon
masks), as `tools/train_det.py --train-data DIR/train.json DIR/train --val-data DIR/val.json DIR/val` reads them.
--layout mmseg: mmseg's custom layout, DIR/img_dir/{train,val}/*.jpg, DIR/ann_dir/{train,val}/*.png (class index
per pixel: 0 = background, then the classes; 255 = ignore) and DIR/classes.txt, as
`tools/train_seg.py --data DIR` reads it.
--classes: which shapes (some of disk, square, triangle, cross; in the order given, which is the class order).
"""
from __future__ import annotations

import argparse
import sys

from eva02.common.cli import UsageError, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

from eva02.common.shapes import SHAPE_CLASSES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--layout", choices=("coco", "mmseg"), default="coco")
    parser.add_argument("--classes", default=",".join(SHAPE_CLASSES), help="comma-separated shape names")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=40)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown or not classes:
        raise UsageError(f"--classes {args.classes}: use some of {', '.join(SHAPE_CLASSES)}")
    if args.layout == "coco":
        from eva02.det.demo import make_shapes_dataset

        paths = make_shapes_dataset(args.output, args.num_train, args.num_val, args.size, args.seed, classes=classes)
        print(f"COCO-format shapes ({', '.join(classes)}): --train-data {paths['train_json']} "
              f"{paths['train_images']} --val-data {paths['val_json']} {paths['val_images']}")
    else:
        from eva02.seg.demo import make_shapes_own_data

        make_shapes_own_data(args.output, ("background", *classes), args.num_train, args.num_val, args.size, args.seed)
        print(f"mmseg custom-layout shapes (background, {', '.join(classes)}): --data {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
