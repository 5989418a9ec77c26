"""Image files: bit depths, float formats, atomic writes."""

import numpy as np
import pytest

from gmdm_cli.image_io import ImageError, read_image, to_gray, write_image


@pytest.mark.parametrize("name, dtype, tolerance", [
    ("a.png", np.uint8, 0.5 / 255),
    ("a.png", np.uint16, 0.5 / 65535),
    ("a.tif", np.uint8, 0.5 / 255),
    ("a.tif", np.uint16, 0.5 / 65535),
    ("a.tif", np.float32, 1e-7),
    ("a.npy", np.float32, 1e-7),
])
def test_round_trip_keeps_values_and_bit_depth(tmp_path, name, dtype, tolerance):
    image = np.random.default_rng(0).uniform(size=(9, 7))
    write_image(tmp_path / name, image, dtype=dtype)
    back, info = read_image(tmp_path / name)
    assert info.dtype == dtype
    assert np.abs(back - image).max() <= tolerance + 1e-12


def test_float_outputs_are_not_clipped(tmp_path):
    image = np.array([[-0.2, 0.5], [1.3, 0.0]])
    write_image(tmp_path / "a.npy", image, dtype=np.uint8)
    write_image(tmp_path / "a.tif", image, dtype=np.float32)
    assert np.allclose(read_image(tmp_path / "a.npy")[0], image)
    assert np.allclose(read_image(tmp_path / "a.tif")[0], image)
    write_image(tmp_path / "a.png", image, dtype=np.uint8)
    assert read_image(tmp_path / "a.png")[0].min() == 0 and read_image(tmp_path / "a.png")[0].max() == 1


def test_jpeg_and_colour(tmp_path):
    rgb = np.random.default_rng(1).uniform(size=(16, 16, 3))
    write_image(tmp_path / "c.png", rgb)
    back, info = read_image(tmp_path / "c.png")
    assert back.shape == (16, 16, 3) and info.dtype == np.uint8
    assert np.allclose(to_gray(back), back @ [0.299, 0.587, 0.114])
    write_image(tmp_path / "g.jpg", rgb[..., 0], dtype=np.uint16)  # JPEG is 8-bit whatever is asked
    assert read_image(tmp_path / "g.jpg")[1].dtype == np.uint8


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "cannot read image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "cannot read image"),
])
def test_unreadable_files_raise_image_error(tmp_path, content, message):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_image(path)


def test_nan_in_float_input_is_refused(tmp_path):
    np.save(tmp_path / "n.npy", np.array([[0.1, np.nan], [0.2, 0.3]]))
    with pytest.raises(ImageError, match="NaN"):
        read_image(tmp_path / "n.npy")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ImageError):
        write_image(tmp_path / "missing" / "a.png", np.zeros((4, 4)))
    with pytest.raises(ImageError, match="unknown output format"):
        write_image(tmp_path / "a.gif2", np.zeros((4, 4)))
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        write_image(tmp_path / "a.png", np.zeros((4, 4)))
        assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
