#!/usr/bin/env python
"""Convert own data once (what --train-data / --val-data of the training tools do at every run start), for people
who want the files: COCO jsons for detection, or the custom segmentation layout.

    python tools/convert_data.py --train-data ANNOTATIONS IMAGES [--val-data ANNOTATIONS IMAGES] --output DIR
        [--data-format coco|yolo|voc|labelme|cvat] [--to coco|seg]

--to coco (default): DIR/train.json (and DIR/val.json, with the training set's class list), file names relative
to each IMAGES folder; train with `tools/train_det.py --train-data DIR/train.json IMAGES --val-data ...`.
--to seg: DIR/classes.txt, img_dir/{train,val} (links to the images), ann_dir/{train,val} label maps (needs
--val-data); train with `tools/train_seg.py --data DIR`. Formats and conversion rules: eva02.common.formats and
eva02.seg.own_formats (docs/own-data.md). Exit status 1 when files were left out (named on stderr).
"""
from __future__ import annotations

import argparse
import os
import sys

from eva02.common.cli import EXIT_OK, EXIT_PARTIAL, UsageError, add_common_args, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

from eva02.common.formats import add_data_args, convert_to_coco  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Convert own data to COCO json (detection) or the segmentation layout")
    add_data_args(p)
    add_common_args(p, "output")
    p.add_argument("--to", choices=("coco", "seg"), default="coco", help="COCO jsons (detection) or the "
                   "segmentation layout (classes.txt, img_dir, ann_dir)")
    args = p.parse_args(argv)
    if args.train_data is None:
        p.error("--train-data ANNOTATIONS IMAGES is required")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.to == "seg":
        from eva02.seg.own_formats import instances_to_layout

        if args.val_data is None:
            raise UsageError("--to seg needs --val-data ANNOTATIONS IMAGES too (the layout has train and val)")
        classes = instances_to_layout(args.train_data, args.val_data, args.output, args.data_format)
        print(f"wrote {args.output}: classes.txt ({len(classes)} classes: {', '.join(classes[:10])}"
              f"{', ...' if len(classes) > 10 else ''}), img_dir/{{train,val}}, ann_dir/{{train,val}}")
        return EXIT_OK
    classes, left_out = None, 0
    for split, pair in (("train", args.train_data), ("val", args.val_data)):
        if pair is None:
            continue
        conversion = convert_to_coco(pair[0], pair[1], os.path.join(args.output, f"{split}.json"), args.data_format,
                                     classes=classes, split=split)
        classes = conversion.classes
        print(conversion.summary())
        for path, reason in conversion.skipped.items():
            print(f"convert_data: left out {path}: {reason}", file=sys.stderr)
        left_out += len(conversion.skipped)
    print(f"classes (category ids 1..{len(classes)}): {', '.join(classes)}")
    return EXIT_PARTIAL if left_out else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
