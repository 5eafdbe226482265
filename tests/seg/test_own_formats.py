"""Own segmentation data in other formats through tools/train_seg.py and tools/test_seg.py as a user runs them:
instance annotations written by hand (tests/support/hand_formats.py) rasterized into the custom layout, a Pascal
VOC segmentation folder (index and colour PNGs), and what a run shows: TensorBoard events read back with
tensorboard's own reader, curves.png."""
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from eva02.common.runlog import read_image_tags, read_scalars
from eva02.seg.demo import make_shapes_own_data
from eva02.seg.own_formats import voc_to_layout
from hand_formats import data_args

VOC_CLASSES = ["background", "disk", "square"]
VOC_COLOURS = [(0, 0, 0), (200, 40, 40), (40, 200, 40)]


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    """(folder, fmt -> --train-data / --val-data arguments of generated shapes written by hand in fmt)."""
    tmp = tmp_path_factory.mktemp("seg_formats")
    return tmp, data_args(tmp, seed=11)


def voc_folder(root: Path, colour: bool) -> Path:
    """A VOC segmentation folder of generated scenes with a labelmap.txt (CVAT's export): label PNGs as palette
    images (VOC's own) or, colour=True, as RGB colour images (CVAT's); VOC's border colour on the edges."""
    scenes = make_shapes_own_data(str(root / "scenes"), classes=tuple(VOC_CLASSES), num_train=6, num_val=3, size=64,
                                  progress=False)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(VOC_COLOURS)] = VOC_COLOURS
    palette[255] = (224, 224, 192)
    for split in ("train", "val"):
        stems = []
        for image in sorted(Path(scenes, "img_dir", split).glob("*.jpg")):
            stem = f"{split}_{image.stem}"
            shutil.copy(image, root / "JPEGImages" / f"{stem}.jpg")
            label = np.asarray(Image.open(Path(scenes, "ann_dir", split, image.stem + ".png")))
            if colour:
                Image.fromarray(palette[label]).save(root / "SegmentationClass" / f"{stem}.png")
            else:
                png = Image.fromarray(label, mode="P")
                png.putpalette(palette.flatten().tolist())
                png.save(root / "SegmentationClass" / f"{stem}.png")
            stems.append(stem)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{','.join(map(str, c))}::\n" for n, c in zip(VOC_CLASSES, VOC_COLOURS)))
    return root


def test_voc_colour_and_index_label_maps_give_the_same_layout(tmp_path):
    index_root, colour_root = voc_folder(tmp_path / "index", False), voc_folder(tmp_path / "colour", True)
    assert voc_to_layout(str(index_root), str(tmp_path / "a")) == VOC_CLASSES
    assert voc_to_layout(str(colour_root), str(tmp_path / "b")) == VOC_CLASSES
    labels = sorted((tmp_path / "a" / "ann_dir").rglob("*.png"))
    assert len(labels) == 9
    for path in labels:
        a = np.asarray(Image.open(path))  # the VOC palette image, linked: its indices
        b = np.asarray(Image.open(tmp_path / "b" / path.relative_to(tmp_path / "a")))
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(a)) <= {0, 1, 2, 255} and (a == 255).any()  # the border band: ignored


def tiny_run(run_tool, tiny_config, tmp, *args, iters=2):
    work = tmp / "work"
    proc = run_tool("train_seg.py", "--config-file", tiny_config(tmp, max_iters=iters), "--output", work, *args,
                    "train_cfg.val_interval=1")
    return work, proc.stdout + proc.stderr


def check_tensorboard(work: Path, log: str) -> None:
    scalars = read_scalars(str(work))
    for tag in ("loss", "decode.loss_ce", "aux.loss_ce", "lr", "mIoU", "images_per_second", "memory_mib"):
        assert tag in scalars, (tag, sorted(scalars))
    assert [step for step, _ in scalars["loss"]] == [1, 2] and len(scalars["mIoU"]) == 2  # each validation
    images = read_image_tags(str(work))
    assert len(images) == 3 and all(t.startswith("predictions/") and steps == [1, 2] for t, steps in images.items())
    assert (work / "curves.png").stat().st_size > 10_000 and f"training curves: {work / 'curves.png'}" in log


@pytest.mark.parametrize("fmt", ["labelme", pytest.param("yolo", marks=pytest.mark.slow),
                                 pytest.param("cvat", marks=pytest.mark.slow)])
def test_train_on_instance_annotations_and_see_it_in_tensorboard(instances, fmt, run_tool, tiny_config, tmp_path):
    tmp, written = instances
    work, log = tiny_run(run_tool, tiny_config, tmp_path, *written(fmt))
    root = work / "own_data"
    assert f"own data {root}: 5 classes (background, " in log
    assert (root / "classes.txt").read_text().split()[0] == "background"
    assert len(list((root / "ann_dir" / "train").glob("*.png"))) == 6
    check_tensorboard(work, log)
    ckpt = Path(work, "last_checkpoint").read_text().strip()
    # evaluation on the same annotations, as a user passes them to test_seg
    proc = run_tool("test_seg.py", "--config-file", tiny_config(tmp_path), "--weights", ckpt, "--output",
                    tmp_path / "eval", "--val-data", *written(fmt)[4:])
    assert re.search(r"mIoU: \d+\.\d+", proc.stdout)


def test_train_on_a_voc_segmentation_folder(run_tool, tiny_config, tmp_path):
    devkit = voc_folder(tmp_path / "VOC", colour=True)
    work, log = tiny_run(run_tool, tiny_config, tmp_path, "--data", devkit)
    assert f"own data {devkit}: Pascal VOC segmentation linked into {work / 'own_data'}" in log
    assert f"own data {work / 'own_data'}: 3 classes (background, disk, square)" in log
    assert cv2.imread(str(next((work / "own_data" / "img_dir" / "val").iterdir()))) is not None
