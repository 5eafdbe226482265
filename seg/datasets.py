"""mmseg datasets in their standard layouts, with an error naming the expected layout when a folder is missing.

mmseg alone fails deep in a directory scan (or finds zero images) when `data_root` is wrong; these subclasses
check the folders when the dataset is built.
"""
from __future__ import annotations

import logging
import os

from mmengine.logging import print_log
from mmseg.datasets import ADE20KDataset, COCOStuffDataset
from mmseg.registry import DATASETS
from PIL import Image
from tqdm import tqdm

__all__ = ["LayoutCheck", "CheckedADE20KDataset", "CheckedCOCOStuffDataset", "unreadable_image"]


class LayoutCheck:
    """Mixin: before scanning, make sure the image and label folders exist and hold images.

    check_images=True (meant for evaluation sets) also decodes every image and label map once when the
    dataset is built; unreadable pairs are reported, left out and listed in `unreadable` ('PATH (reason)'), so
    one corrupt file does not stop a long evaluation."""

    LAYOUT = ""  # the standard folder layout, shown in the error
    IMAGES = ""  # the image files looked for, shown in the error (default: '*' + img_suffix)

    def __init__(self, *args, check_images: bool = False, **kwargs):
        self.check_images = check_images
        self.unreadable: list[str] = []
        super().__init__(*args, **kwargs)

    def filter_data(self) -> list[dict]:
        data_list = super().filter_data()
        if not self.check_images:
            return data_list
        readable, bad = [], []
        for info in tqdm(data_list, desc=f"checking {type(self).__name__} images", mininterval=5):
            problem = unreadable_image(info["img_path"]) or unreadable_image(info.get("seg_map_path"))
            (bad if problem else readable).append(problem or info)
        self.unreadable = bad
        for problem in bad:
            print_log(f"skipping unreadable {problem}", logger="current", level=logging.ERROR)
        if bad:
            print_log(f"{type(self).__name__}: {len(bad)} of {len(data_list)} samples skipped (unreadable files)",
                      logger="current", level=logging.ERROR)
        return readable

    def load_data_list(self) -> list[dict]:
        for key in ("img_path", "seg_map_path"):
            folder = self.data_prefix.get(key)
            if folder and not os.path.isdir(folder):
                raise FileNotFoundError(
                    f"{type(self).__name__}: {key} folder '{folder}' does not exist (data_root "
                    f"'{self.data_root}'). Expected layout under data_root:\n{self.LAYOUT}\n"
                    "Set the data root with the environment variable named in the config, KEY=VALUE overrides "
                    "(train/val/test_dataloader.dataset.data_root), or for your own data --data DIR.")
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(
                f"{type(self).__name__}: no '{self.IMAGES or '*' + self.img_suffix}' images in "
                f"'{self.data_prefix.get('img_path')}'. "
                f"Expected layout under data_root '{self.data_root}':\n{self.LAYOUT}")
        return data_list


def unreadable_image(path: str | None) -> str | None:
    """None if the image file decodes completely, else 'PATH (reason)'. PIL decodes to the last byte and raises
    on a truncated file, where cv2.imread returns the part it got (a truncated JPEG comes back grey below the
    cut) and mmcv / cv2.imdecode depend on where the file was cut."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        return f"{path} (no such file)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{path} ({error})"
    return None


@DATASETS.register_module()
class CheckedADE20KDataset(LayoutCheck, ADE20KDataset):
    """ADE20K (ADEChallengeData2016), 150 classes, label 0 = other (reduce_zero_label)."""

    LAYOUT = ("  images/training/*.jpg          annotations/training/*.png\n"
              "  images/validation/*.jpg        annotations/validation/*.png")


@DATASETS.register_module()
class CheckedCOCOStuffDataset(LayoutCheck, COCOStuffDataset):
    """COCO-Stuff-164K, 171 classes, labels converted with mmseg's tools/dataset_converters/coco_stuff164k.py."""

    LAYOUT = ("  images/train2017/*.jpg         annotations/train2017/*_labelTrainIds.png\n"
              "  images/val2017/*.jpg           annotations/val2017/*_labelTrainIds.png\n"
              "  (labels from mmseg's tools/dataset_converters/coco_stuff164k.py)")
