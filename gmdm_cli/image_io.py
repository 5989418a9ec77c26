"""Reading and writing images as float arrays on the [0, 1] scale.

Integer images are scaled by their bit depth (8 or 16 bit); ``.npy`` files and float TIFFs are
taken as they are (float values on the [0, 1] scale, never clipped). Gray, gray + alpha, RGB and RGBA
images are read (CMYK and palette images as RGB(A); planar TIFFs as interleaved). The pixel limit
(``max_pixels``) is checked on the size a file declares, before its pixels are decoded. Writing picks
the format from the extension: ``.npy`` and float TIFF keep float32 values unclipped, integer formats
are clipped, rounded and written in the bit depth asked for (by default the input's). A file is encoded
in memory, written to a temporary name in the target folder and then published under its name, so a
failed write never leaves a partial output behind, and without ``overwrite`` a file that appeared
meanwhile is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GmdmError

IMAGE_EXTENSIONS = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".npy"}
FLOAT_EXTENSIONS = {".npy", ".tif", ".tiff"}
ALPHA_EXTENSIONS = {".png", ".tif", ".tiff", ".npy"}
MAX_MAGNITUDE = 1e6
"""Float images with a value of larger magnitude are refused: they are not on the [0, 1] scale, and their
squared filter responses would overflow float32."""


class ImageError(GmdmError):
    """An image that cannot be read or written; the message names the file."""


def shown(path) -> str:
    """A file name as messages show it: as it is when printable, else quoted with escapes (so that a newline in
    a name never splits an error line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _error(path, why: str) -> ImageError:
    return ImageError(f"{shown(path)}: {why}")


@dataclass(frozen=True)
class ImageInfo:
    """What is needed to write a result like its input: the input's sample type."""

    dtype: np.dtype


_MAGIC = ((b"\x93NUMPY", ".npy"), (b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"II*\x00", ".tif"),
          (b"MM\x00*", ".tif"), (b"BM", ".bmp"))
_NAMES = {".npy": ".npy", ".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF", ".bmp": "BMP"}


def sniff_format(data: bytes) -> str | None:
    """The extension of the format whose signature starts ``data`` (None if unknown)."""
    return next((extension for magic, extension in _MAGIC if data.startswith(magic)), None)


def read_image(path: str | os.PathLike, data: bytes | None = None,
               max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read ``path`` as float64 in [0, 1]: ``(H, W)`` for gray, ``(H, W, C)`` for gray + alpha (C = 2) and
    colour (3, 4).

    The format is recognised by the file's signature, not its name. With ``data``, decode those bytes instead
    (``path`` only names them in messages). EXIF orientation is applied (not to TIFFs). Images of more than
    ``max_pixels`` pixels are refused before their pixels are decoded (None: no limit); so are files that hold
    several images (TIFF pages, animation frames), and float values beyond :data:`MAX_MAGNITUDE`.
    """
    path = Path(path) if data is None else path
    head = _head(path) if data is None else data[:32]
    if not head:
        raise _error(path, "empty file")
    kind = sniff_format(head)
    if kind is None:
        raise _error(path, "not an image (the data do not start like a PNG, TIFF, JPEG, BMP or .npy file)")
    try:
        raw = _decode(kind, io.BytesIO(data) if data is not None else path, path, head, max_pixels)
    except ImageError:
        raise
    except MemoryError:
        raise _error(path, "not enough memory to decode it") from None
    except Exception as error:  # every decoder raises its own types
        why = "its compression needs the imagecodecs package" if "imagecodecs" in str(error) else \
            "it is corrupt or truncated"
        raise _error(path, f"cannot decode the {_NAMES[kind]} data ({why})") from None
    return _as_float(np.asarray(raw), path)


def _head(path: Path) -> bytes:
    """The first bytes of the file at ``path``: where a format's signature is."""
    if path.is_dir():
        raise _error(path, "is a directory")
    if not path.is_file():
        raise _error(path, "not a regular file" if path.exists() else "no such file")
    try:
        with open(path, "rb") as file:
            return file.read(32)
    except OSError as error:
        raise _error(path, f"cannot open ({error.strerror})") from None


def _decode(kind: str, source, path, head: bytes, max_pixels: int | None) -> np.ndarray:
    """The pixels of an image of format ``kind`` (from :func:`sniff_format`) at ``source`` (a path or bytes)."""
    if kind == ".npy":
        return _read_npy(source, path, max_pixels)
    if kind == ".tif":
        return _read_tiff(source, path, max_pixels)
    if kind == ".png" and _is_deep_colour_png(head):
        data = source.getvalue() if isinstance(source, io.BytesIO) else source.read_bytes()
        return _read_deep_colour_png(data, path, max_pixels)
    return _read_pillow(source, path, max_pixels)


def _check_layout(path, shape: tuple, max_pixels: int | None) -> None:
    """Refuse a declared array shape that is not one image ``(H, W)`` or ``(H, W, C)``, C <= 4, or that is
    over ``max_pixels`` pixels, before anything is decoded."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and not 1 <= shape[2] <= 4):
        raise _error(path, f"expected a gray, gray + alpha or RGB(A) image, got an array of shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise _error(path, f"image is empty ({shape[0]}x{shape[1]})")
    if max_pixels and shape[0] * shape[1] > max_pixels:
        raise _error(path, f"{shape[1]}x{shape[0]} pixels is over the limit of {max_pixels} "
                           f"(raise it with --max-pixels)")


def _read_npy(source, path, max_pixels: int | None) -> np.ndarray:
    """A ``.npy`` array; its header (shape, type) is checked before the data are read. Never unpickles."""
    from numpy.lib import format as npy

    with contextlib.ExitStack() as stack:
        file = source if isinstance(source, io.BytesIO) else stack.enter_context(open(source, "rb"))
        version = npy.read_magic(file)
        if version not in ((1, 0), (2, 0)):
            raise _error(path, f".npy format version {version[0]}.{version[1]} is not supported")
        header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = header(file)
        if dtype.hasobject:
            raise _error(path, "the .npy file holds Python objects (refused for safety)")
        if dtype.kind not in "biuf":
            raise _error(path, f"unsupported sample type {dtype}")
        _check_layout(path, shape, max_pixels)
        file.seek(0)
        return np.load(file, allow_pickle=False)


def _read_tiff(source, path, max_pixels: int | None) -> np.ndarray:
    """The one image of a TIFF (tifffile): contiguous ``(H, W[, S])`` or planar ``(S, H, W)`` samples."""
    import tifffile

    with tifffile.TiffFile(source) as tiff:
        series = tiff.series
        shape, axes = list(series[0].shape), series[0].axes
        while len(shape) > 2 and shape[0] == 1 and axes[0] not in "YXS":  # a single page, sample or plane
            shape, axes = shape[1:], axes[1:]
        if len(series) > 1 or axes not in ("YX", "YXS", "SYX"):
            pages = len(tiff.pages)
            raise _error(path, f"the TIFF holds several images ({pages} pages, axes {series[0].axes}, shape "
                               f"{tuple(series[0].shape)}); gmdm reads files of one image")
        planar = axes == "SYX"
        _check_layout(path, (shape[1], shape[2], shape[0]) if planar else shape, max_pixels)
        array = series[0].asarray().reshape(shape)
    return np.moveaxis(array, 0, -1) if planar else array


_PILLOW_MODES = {"P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB",
                 "RGBX": "RGB", "RGBa": "RGBA", "La": "LA"}


def _read_pillow(source, path, max_pixels: int | None) -> np.ndarray:
    """PNG, JPEG and BMP through Pillow: the size is checked before decoding; palette, CMYK (JPEG) and other
    colour spaces are converted to RGB(A)."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # the pixel limit is ours (max_pixels), not Pillow's
    with Image.open(source) as picture:
        frames = getattr(picture, "n_frames", 1)
        if frames > 1:
            raise _error(path, f"holds {frames} frames (an animation); gmdm reads files of one image")
        width, height = picture.size
        _check_layout(path, (height, width), max_pixels)
        picture = ImageOps.exif_transpose(picture)
        mode = _PILLOW_MODES.get(picture.mode, picture.mode)
        if picture.mode == "P" and "transparency" in picture.info:
            mode = "RGBA"
        if mode != picture.mode:
            picture = picture.convert(mode)
        array = np.asarray(picture)
    if picture.mode == "I" and array.size and 0 <= array.min() and array.max() <= 65535:
        array = array.astype(np.uint16)  # 16-bit gray as older Pillow versions open it
    return array


def _is_deep_colour_png(data: bytes) -> bool:
    """A 16-bit PNG with colour or alpha (IHDR bit depth 16, colour type 2, 4 or 6): Pillow reads those as
    8 bits and cannot write them, so they go through pypng."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26 and data[24] == 16 and data[25] in (2, 4, 6)


def _read_deep_colour_png(data: bytes, path, max_pixels: int | None) -> np.ndarray:
    import png

    reader = png.Reader(bytes=data)
    width, height, rows, info = reader.asDirect()
    _check_layout(path, (height, width, info["planes"]), max_pixels)
    planes = info["planes"]
    return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)


def _as_float(raw: np.ndarray, path) -> tuple[np.ndarray, ImageInfo]:
    """A decoded array as float64 on the [0, 1] scale, and the sample type it came in."""
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    _check_layout(path, raw.shape, None)
    if raw.dtype.byteorder not in "=|":
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if raw.dtype == np.uint8 or raw.dtype == np.uint16:
        image = raw.astype(np.float64) / np.iinfo(raw.dtype).max
    elif raw.dtype == bool:
        image = raw.astype(np.float64)
    elif raw.dtype.kind == "f":
        image = raw.astype(np.float64)
        if not np.all(np.isfinite(image)):
            raise _error(path, "image contains NaN or infinite values")
        largest = float(np.abs(image).max())
        if largest > MAX_MAGNITUDE:
            raise _error(path, f"values up to {largest:.3g} are not on the [0, 1] scale (float images are taken "
                               f"as they are; at most {MAX_MAGNITUDE:g} in magnitude)")
    else:
        raise _error(path, f"unsupported sample type {raw.dtype}")
    return image, ImageInfo(dtype=raw.dtype if raw.dtype != bool else np.dtype(np.uint8))


def split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image without alpha, alpha or None)``: gray + alpha ``(H, W, 2)`` gives ``(H, W)``, RGBA ``(H, W, 3)``."""
    if image.ndim == 3 and image.shape[2] in (2, 4):
        return (image[..., 0] if image.shape[2] == 2 else image[..., :3]), image[..., -1]
    return image, None


def join_alpha(image: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """The inverse of :func:`split_alpha`."""
    if alpha is None:
        return image
    return np.concatenate([image if image.ndim == 3 else image[..., None], alpha[..., None]], axis=-1)


@contextlib.contextmanager
def atomic_output(path: Path, suffix: str = "", overwrite: bool = True):
    """Yield a temporary file name beside ``path``; on success it becomes ``path`` (with the usual permissions,
    ``0o666`` less the umask), on failure (an exception, SIGINT, or SIGTERM under the CLI) it is removed.
    Readers never see a partial file. Without ``overwrite`` the file is published by a hard link, which fails
    if ``path`` exists by then (where the file system has no hard links: checked just before, not atomic)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        _publish(temporary, path, overwrite)
    finally:
        Path(temporary).unlink(missing_ok=True)


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def _publish(temporary: str, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
        return
    except FileExistsError:
        pass
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if not os.path.lexists(path):
            os.replace(temporary, path)
            return
    raise FileExistsError(errno.EEXIST, "exists (written meanwhile by someone else; use --overwrite to replace it)")


def write_file(path: str | os.PathLike, content: bytes, overwrite: bool = True, error=None) -> None:
    """Write ``content`` to ``path`` through :func:`atomic_output`; any failure raises ``error`` (default
    :class:`ImageError`) naming the file and the reason in one line."""
    error = error or ImageError
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise error(f"{shown(path)}: folder {shown(folder)} does not exist")
    try:
        with atomic_output(path, path.suffix, overwrite) as temporary:
            with open(temporary, "wb") as file:
                file.write(content)
    except OSError as failure:
        raise error(f"{shown(path)}: cannot write ({failure.strerror or _first_line(failure)})") from None


def write_figure(path: str | os.PathLike, figure, overwrite: bool = True, **options) -> None:
    """Save a matplotlib ``figure`` to ``path`` (format from the extension) through :func:`write_file`."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", **options)
    except ValueError as error:
        raise _error(path, f"cannot draw the figure ({_first_line(error)})") from None
    write_file(path, buffer.getvalue(), overwrite)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of an RGB(A) image; gray (and gray + alpha) images give their
    gray channel."""
    image = split_alpha(image)[0]
    if image.ndim == 2:
        return image
    return image @ np.array([0.299, 0.587, 0.114])


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


def _file_bytes(data: np.ndarray, extension: str) -> bytes:
    """``data`` encoded as a file of format ``extension``, in memory."""
    buffer = io.BytesIO()
    if extension == ".npy":
        np.save(buffer, data)
    elif extension in (".tif", ".tiff"):
        import tifffile

        channels = 1 if data.ndim == 2 else data.shape[2]
        tifffile.imwrite(buffer, data, photometric="rgb" if channels >= 3 else "minisblack",
                         extrasamples=["unassalpha"] if channels in (2, 4) else None)
    elif extension == ".png" and data.dtype == np.uint16 and data.ndim == 3:
        import png  # 16-bit colour or alpha: Pillow cannot write those

        height, width, planes = data.shape
        writer = png.Writer(width, height, greyscale=planes < 3, alpha=planes in (2, 4), bitdepth=16)
        writer.write(buffer, data.reshape(height, width * planes))
    else:
        import imageio.v3 as iio

        options = {"quality": 95} if extension in {".jpg", ".jpeg"} else {}
        return iio.imwrite("<bytes>", data, extension=extension, **options)
    return buffer.getvalue()


def _format_problem(extension: str, channels: int | None) -> str | None:
    if extension not in IMAGE_EXTENSIONS:
        return (f"unknown output format '{extension or '(none)'}' "
                f"(use one of {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if channels in (2, 4) and extension not in ALPHA_EXTENSIONS:
        return f"{extension} cannot store the image's alpha channel (write .png, .tif or .npy)"
    return None


def check_output_format(path: str | os.PathLike, channels: int | None = None) -> str:
    """The lower-case extension of ``path`` if it is a format gmdm writes (and, given the image's ``channels``,
    one that can hold its alpha channel), else an :class:`ImageError`."""
    extension = Path(path).suffix.lower()
    problem = _format_problem(extension, channels)
    if problem:
        raise _error(path, problem)
    return extension


def channel_count(image: np.ndarray) -> int:
    """Samples per pixel: 1 for a gray ``(H, W)`` image, else the last dimension."""
    return 1 if np.ndim(image) == 2 else int(np.shape(image)[2])


def colour_channels(image: np.ndarray) -> int:
    """The channels the gray prior works on, alpha left out: 1 for gray (and gray + alpha), 3 for RGB(A)."""
    return channel_count(split_alpha(np.asarray(image))[0])


def write_image(path: str | os.PathLike, image: np.ndarray, dtype: np.dtype | None = None,
                overwrite: bool = True) -> None:
    """Write ``image`` (float, [0, 1] scale) to ``path``, atomically (see :func:`atomic_output`).

    ``.npy`` is always float32 and unclipped. ``.tif``/``.tiff`` is float32 unclipped when
    ``dtype`` is a float type, else integer like the other formats. Integer formats clip to
    [0, 1] and quantise to ``dtype`` (uint8 or uint16; JPEG and BMP are 8-bit only; JPEG quality 95).
    Without ``overwrite`` an existing file is never replaced (an :class:`ImageError`).
    """
    write_file(path, encode_image(image, Path(path).suffix, dtype, path), overwrite)


def encode_image(image: np.ndarray, extension: str, dtype: np.dtype | None = None, name="<stdout>") -> bytes:
    """``image`` encoded in memory as a file of format ``extension`` (``name`` in messages), like
    :func:`write_image`."""
    extension = extension.lower()
    problem = _format_problem(extension, channel_count(image))
    if problem:
        raise _error(name, problem)
    try:
        return _file_bytes(_encode(image, extension, dtype), extension)
    except Exception as error:
        raise _error(name, f"cannot encode image ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
