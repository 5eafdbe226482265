"""The generated shapes behind every demo: masks against matplotlib's point-in-polygon test, areas against the
closed forms, and what a scene promises (whole masks without overlap, visible parts with it)."""
import numpy as np
import pytest
from matplotlib.path import Path

from eva02.common.shapes import SHAPE_CLASSES, draw_scene, polygon_mask, shape_polygon

# Area of each shape with circumradius 1: 32-gon, square, equilateral triangle, cross of arms 2/3 wide.
UNIT_AREA = {"disk": 16 * np.sin(2 * np.pi / 32), "square": 2.0, "triangle": 3 * np.sqrt(3) / 4,
             "cross": 2 * (2 * 2 / 3) - (2 / 3) ** 2}


@pytest.mark.parametrize("kind", SHAPE_CLASSES)
def test_mask_matches_matplotlib_and_the_closed_form_area(kind):
    polygon = shape_polygon(kind, 61.3, 57.8, 40.0, 0.7)
    mask = polygon_mask(polygon, 128, 128)
    ys, xs = np.mgrid[0:128, 0:128] + 0.5
    reference = Path(polygon).contains_points(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(128, 128)
    assert (mask != reference).sum() == 0
    assert mask.sum() == pytest.approx(UNIT_AREA[kind] * 40.0**2, rel=0.02)


def test_scenes_without_overlap_keep_whole_separate_masks():
    rng = np.random.default_rng(5)
    for _ in range(20):
        image, shapes = draw_scene(rng, 96, max_shapes=4, overlap=False)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and shapes
        total = sum(s.mask.astype(int) for s in shapes)
        assert total.max() == 1  # no pixel in two shapes
        for s in shapes:
            assert (s.mask == polygon_mask(s.polygon, 96, 96)).all()  # nothing covered


def test_overlapping_scenes_give_each_pixel_to_the_last_shape_drawn():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(30):
        _, shapes = draw_scene(rng, 96, max_shapes=4, overlap=True)
        owner = np.full((96, 96), -1)
        for index, s in enumerate(shapes):
            owner[polygon_mask(s.polygon, 96, 96)] = index
        for index, s in enumerate(shapes):
            assert (s.mask == (owner == index)).all()
        covered += sum(int(polygon_mask(s.polygon, 96, 96).sum() - s.mask.sum()) for s in shapes)
    assert covered > 0  # some shapes were partly covered


def test_same_seed_same_pixels():
    a, b = (draw_scene(np.random.default_rng(3), 64)[0] for _ in range(2))
    assert (a == b).all()
