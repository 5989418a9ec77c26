"""Reading and writing images as float arrays on the [0, 1] scale.

Integer images are scaled by their bit depth (8 or 16 bit); ``.npy`` files and float TIFFs are
taken as they are (float values on the [0, 1] scale, never clipped). Writing picks the format
from the extension: ``.npy`` and float TIFF keep float32 values unclipped, integer formats
are clipped, rounded and written in the bit depth asked for (by default the input's).
Files are written to a temporary name in the target folder and renamed, so a failed write
never leaves a partial output behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".npy"}
FLOAT_EXTENSIONS = {".npy", ".tif", ".tiff"}


class ImageError(ValueError):
    """An image that cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class ImageInfo:
    """What is needed to write a result like its input: the input's sample type."""

    dtype: np.dtype


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageInfo]:
    """Read ``path`` as float64 in [0, 1]: ``(H, W)`` for gray, ``(H, W, C)`` for colour."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            import imageio.v3 as iio

            raw = iio.imread(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except Exception as error:  # every decoder raises its own types
        raise ImageError(f"{path}: cannot read image ({_first_line(error)})") from None
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] not in (3, 4)):
        raise ImageError(f"{path}: expected a gray or RGB(A) image, got an array of shape {raw.shape}")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise ImageError(f"{path}: image is empty ({raw.shape[0]}x{raw.shape[1]})")
    if raw.dtype == np.uint8 or raw.dtype == np.uint16:
        image = raw.astype(np.float64) / np.iinfo(raw.dtype).max
    elif raw.dtype == bool:
        image = raw.astype(np.float64)
    elif np.issubdtype(raw.dtype, np.floating):
        image = raw.astype(np.float64)
        if not np.all(np.isfinite(image)):
            raise ImageError(f"{path}: image contains NaN or infinite values")
    else:
        raise ImageError(f"{path}: unsupported sample type {raw.dtype}")
    return image, ImageInfo(dtype=raw.dtype if raw.dtype != bool else np.dtype(np.uint8))


@contextlib.contextmanager
def atomic_output(path: Path, suffix: str = ""):
    """Yield a temporary file name beside ``path``; on success it becomes ``path`` (with the usual
    permissions, ``0o666`` less the umask), on failure it is removed. Readers never see a partial file."""
    folder = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of an RGB(A) image; gray images pass through."""
    if image.ndim == 2:
        return image
    return image[..., :3] @ np.array([0.299, 0.587, 0.114])


def quantise(image: np.ndarray, dtype, rows: int = 512) -> np.ndarray:
    """``round(clip(image, 0, 1) * max)`` as the integer ``dtype``, a block of ``rows`` rows at a time so
    that a large image needs no full-size float temporaries."""
    scale = np.iinfo(dtype).max
    image = np.asarray(image)
    data = np.empty(image.shape, dtype=dtype)
    for top in range(0, max(image.shape[0], 1), rows):
        data[top:top + rows] = np.round(np.clip(image[top:top + rows], 0, 1) * scale)
    return data


def write_image(path: str | os.PathLike, image: np.ndarray, dtype: np.dtype | None = None) -> None:
    """Write ``image`` (float, [0, 1] scale) to ``path``, atomically.

    ``.npy`` is always float32 and unclipped. ``.tif``/``.tiff`` is float32 unclipped when
    ``dtype`` is a float type, else integer like the other formats. Integer formats clip to
    [0, 1] and quantise to ``dtype`` (uint8 or uint16; JPEG and BMP are 8-bit only).
    """
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in IMAGE_EXTENSIONS:
        raise ImageError(f"{path}: unknown output format '{extension or '(none)'}' "
                         f"(use one of {', '.join(sorted(IMAGE_EXTENSIONS))})")
    dtype = np.dtype(dtype if dtype is not None else np.uint8)
    if extension == ".npy" or (extension in FLOAT_EXTENSIONS and np.issubdtype(dtype, np.floating)):
        data = np.asarray(image, dtype=np.float32)
    else:
        if extension in {".jpg", ".jpeg", ".bmp"}:
            dtype = np.dtype(np.uint8)
        elif np.issubdtype(dtype, np.floating):
            dtype = np.dtype(np.uint16)
        data = quantise(image, dtype)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{path}: folder {folder} does not exist")
    try:
        with atomic_output(path, extension) as temporary:
            if extension == ".npy":
                np.save(temporary, data)
            else:
                import imageio.v3 as iio

                iio.imwrite(temporary, data, extension=extension)
    except Exception as error:
        raise ImageError(f"{path}: cannot write image ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
