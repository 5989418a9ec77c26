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
    (b"", "empty file"),
    (b"not an image", "not an image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "cannot decode the PNG data"),
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


# --- every format and bit depth, property-based -------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

FORMATS = [  # (extension, stored dtype, largest round-trip error on the [0, 1] scale)
    (".png", np.uint8, 0.5 / 255), (".png", np.uint16, 0.5 / 65535),
    (".tif", np.uint8, 0.5 / 255), (".tif", np.uint16, 0.5 / 65535), (".tif", np.float32, 0.0),
    (".bmp", np.uint8, 0.5 / 255), (".npy", np.float32, 0.0), (".jpg", np.uint8, None),
]


@st.composite
def images(draw):
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    channels = draw(st.sampled_from([None, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    return draw(arrays(np.float64, shape, elements=st.floats(-0.25, 1.25, allow_nan=False, width=32)))


@pytest.mark.parametrize("extension, dtype, tolerance", FORMATS, ids=[f"{e}-{np.dtype(d).name}" for e, d, _ in FORMATS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=images())
def test_every_format_round_trips(tmp_path, extension, dtype, tolerance, image):
    """Write then read: same shape, the bit depth asked for, values within half a quantisation step (float
    formats: exactly, unclipped; integer formats: of the image clipped to [0, 1]); through a file and
    through bytes (standard input/output) alike."""
    from gmdm_cli.image_io import encode_image

    if extension == ".bmp" and image.ndim == 3 and image.shape[2] == 4:
        return  # BMP has no alpha channel here
    if extension == ".jpg":
        if image.ndim == 3 and image.shape[2] == 4:
            return  # JPEG has no alpha channel
        # JPEG is lossy: a block-constant image comes back nearly exactly when its blocks are the codec's
        # (16x16: the colour channels are subsampled 2x, so 8x8 blocks of saturated colour bleed into each other)
        image = np.kron(image[:3, :3], np.ones((16, 16) + (1,) * (image.ndim - 2)))
    path = tmp_path / f"image{extension}"
    write_image(path, image, dtype=dtype)
    back, info = read_image(path)
    from_bytes, info_bytes = read_image("<stdin>", data=encode_image(image, extension, dtype))
    expected = image if np.dtype(dtype).kind == "f" else np.clip(image, 0, 1)
    for result, result_info in ((back, info), (from_bytes, info_bytes)):
        assert result.shape == image.shape and result_info.dtype == dtype
        if tolerance is None:
            assert np.abs(result - expected).mean() < 0.03
        else:
            assert np.abs(result - expected.astype(np.float32 if tolerance == 0 else np.float64)).max() <= tolerance + 1e-9


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    picture = Image.fromarray(np.tile(np.arange(0, 240, 6, dtype=np.uint8), (20, 1)))  # 20 rows, 40 columns
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    picture.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    image, _ = read_image(tmp_path / "portrait.jpg")
    assert image.shape == (40, 20)
    assert image[0].std() < 0.02 and image[:, 0].std() > 0.1  # the horizontal ramp now runs downwards


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((30, 40)))
    with pytest.raises(ImageError, match="40x30 pixels is over the limit of 1000"):
        read_image(tmp_path / "a.png", max_pixels=1000)
    assert read_image(tmp_path / "a.png", max_pixels=None)[0].shape == (30, 40)
