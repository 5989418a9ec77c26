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
import io
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


_MAGIC = ((b"\x93NUMPY", ".npy"), (b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"II*\x00", ".tif"),
          (b"MM\x00*", ".tif"), (b"BM", ".bmp"))


def sniff_format(data: bytes) -> str | None:
    """The extension of the format whose signature starts ``data`` (None if unknown)."""
    return next((extension for magic, extension in _MAGIC if data.startswith(magic)), None)


def read_image(path: str | os.PathLike, data: bytes | None = None,
               max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read ``path`` as float64 in [0, 1]: ``(H, W)`` for gray, ``(H, W, C)`` for colour.

    With ``data``, decode those bytes instead (``path`` only names them in messages; the format is
    recognised by its signature). EXIF orientation is applied. Images of more than ``max_pixels``
    pixels are refused before their pixels are decoded where the format allows (None: no limit).
    """
    path = Path(path)
    try:
        if data is not None:
            source, extension = data, sniff_format(data)
            if extension is None:
                raise ImageError(f"{path}: not a PNG, TIFF, JPEG, BMP or .npy image")
        else:
            source, extension = path, path.suffix.lower()
            if path.is_dir():
                raise IsADirectoryError
            if not path.is_file():
                raise FileNotFoundError
        if extension == ".npy":
            raw = np.load(io.BytesIO(source) if data is not None else source, allow_pickle=False)
            _check_size(path, raw.shape, max_pixels)
        elif extension == ".png" and _is_deep_colour_png(data if data is not None else _head(path)):
            raw = _read_deep_colour_png(data if data is not None else path.read_bytes(), path, max_pixels)
        else:
            import imageio.v3 as iio
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None  # the pixel limit is ours (max_pixels), not Pillow's
            hint = {"extension": extension} if data is not None else {}
            _check_size(path, iio.improps(source, **hint).shape, max_pixels)
            rotate = {} if extension in (".tif", ".tiff") else {"rotate": True}  # EXIF orientation (Pillow)
            raw = iio.imread(source, **hint, **rotate)
    except ImageError:
        raise
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
    elif raw.dtype.kind == "f":
        image = raw.astype(np.float64)
        if not np.all(np.isfinite(image)):
            raise ImageError(f"{path}: image contains NaN or infinite values")
    else:
        raise ImageError(f"{path}: unsupported sample type {raw.dtype}")
    return image, ImageInfo(dtype=raw.dtype if raw.dtype != bool else np.dtype(np.uint8))


def _head(path: Path, size: int = 26) -> bytes:
    with open(path, "rb") as file:
        return file.read(size)


def _is_deep_colour_png(data: bytes) -> bool:
    """A 16-bit PNG with colour or alpha (IHDR bit depth 16, colour type 2, 4 or 6): Pillow reads those as
    8 bits and cannot write them, so they go through pypng."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26 and data[24] == 16 and data[25] in (2, 4, 6)


def _read_deep_colour_png(data: bytes, path: Path, max_pixels: int | None) -> np.ndarray:
    import png

    reader = png.Reader(bytes=data)
    width, height, rows, info = reader.asDirect()
    _check_size(path, (height, width), max_pixels)
    planes = info["planes"]
    return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)


def _write_deep_colour_png(target, data: np.ndarray):
    """16-bit colour PNG through pypng; ``target="<bytes>"`` returns the encoded bytes."""
    import png

    height, width, planes = data.shape
    writer = png.Writer(width, height, greyscale=planes < 3, alpha=planes in (2, 4), bitdepth=16)
    buffer = io.BytesIO()
    writer.write(buffer, data.reshape(height, width * planes))
    if target == "<bytes>":
        return buffer.getvalue()
    Path(target).write_bytes(buffer.getvalue())


def _check_size(path: Path, shape: tuple, max_pixels: int | None) -> None:
    if max_pixels and len(shape) >= 2 and shape[0] * shape[1] > max_pixels:
        raise ImageError(f"{path}: {shape[1]}x{shape[0]} pixels is over the limit of {max_pixels} "
                         f"(raise it with --max-pixels)")


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


def _encode(image: np.ndarray, extension: str, dtype) -> np.ndarray:
    """The array to store for ``extension``: float32 unclipped for ``.npy`` and float TIFF, else quantised."""
    dtype = np.dtype(dtype if dtype is not None else np.uint8)
    if extension == ".npy" or (extension in FLOAT_EXTENSIONS and np.issubdtype(dtype, np.floating)):
        return np.asarray(image, dtype=np.float32)
    if extension in {".jpg", ".jpeg", ".bmp"}:
        dtype = np.dtype(np.uint8)
    elif np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.uint16)
    return quantise(image, dtype)


def _save(target, data: np.ndarray, extension: str):
    """Store ``data`` to a file name or, with ``target="<bytes>"``, return the encoded bytes."""
    if extension == ".npy":
        if target == "<bytes>":
            buffer = io.BytesIO()
            np.save(buffer, data)
            return buffer.getvalue()
        return np.save(target, data)
    if extension == ".png" and data.dtype == np.uint16 and data.ndim == 3:
        return _write_deep_colour_png(target, data)
    import imageio.v3 as iio

    options = {"quality": 95} if extension in {".jpg", ".jpeg"} else {}
    return iio.imwrite(target, data, extension=extension, **options)


def check_output_format(path: str | os.PathLike) -> str:
    """The lower-case extension of ``path`` if it is a format gmdm writes, else an :class:`ImageError`."""
    extension = Path(path).suffix.lower()
    if extension not in IMAGE_EXTENSIONS:
        raise ImageError(f"{path}: unknown output format '{extension or '(none)'}' "
                         f"(use one of {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return extension


def write_image(path: str | os.PathLike, image: np.ndarray, dtype: np.dtype | None = None) -> None:
    """Write ``image`` (float, [0, 1] scale) to ``path``, atomically.

    ``.npy`` is always float32 and unclipped. ``.tif``/``.tiff`` is float32 unclipped when
    ``dtype`` is a float type, else integer like the other formats. Integer formats clip to
    [0, 1] and quantise to ``dtype`` (uint8 or uint16; JPEG and BMP are 8-bit only; JPEG quality 95).
    """
    path = Path(path)
    extension = check_output_format(path)
    data = _encode(image, extension, dtype)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{path}: folder {folder} does not exist")
    try:
        with atomic_output(path, extension) as temporary:
            _save(temporary, data, extension)
    except Exception as error:
        raise ImageError(f"{path}: cannot write image ({_first_line(error)})") from None


def encode_image(image: np.ndarray, extension: str, dtype: np.dtype | None = None) -> bytes:
    """``image`` encoded as a file of format ``extension`` (for standard output), like :func:`write_image`."""
    extension = check_output_format(f"-{extension}")
    try:
        return _save("<bytes>", _encode(image, extension, dtype), extension)
    except Exception as error:
        raise ImageError(f"<stdout>: cannot encode image ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
