"""Fixtures for the MIM tests: procedural images and a small random frozen teacher, made here (nothing downloaded)."""
import pytest

from eva02.backbone.mim.demo import write_demo_images, write_random_teacher


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mim_images")
    write_demo_images(folder, 96)
    return folder


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory):
    return write_random_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")
