"""How whole-image passes are cut up and run: tiles (bounded memory), strips of rows on the CPU's threads, and
the CPU's convolution backend.

Local image operators are applied tile by tile, with the same result as on the whole image.

A patch-model operator such as the patch-averaged score changes a pixel according to the pixels within
``b - 1`` of it (the patches that cover it, which reach ``b - 1`` further). Computed on a tile enlarged by
that ``halo`` on every side (clipped at the image border, where the whole-image result sees the same
border), the tile's core is exactly what the whole image would give. Memory then scales with the tile,
not the image, and the image can stay in host memory while tiles go to the accelerator.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

TILE_ELEMENTS = 1 << 25
"""Automatic tile size: at most this many ``J x pixels`` response values per tile (128 MiB in float32)."""


def automatic_tile(num_filters: int, halo: int) -> int:
    """Side of the square tile core whose enlarged tile holds ``TILE_ELEMENTS`` responses of
    ``num_filters`` filters (at least ``4 * halo`` and 64)."""
    return max(math.isqrt(TILE_ELEMENTS // num_filters) - 2 * halo, 4 * halo, 64)


def tiled(function: Callable[..., torch.Tensor], images: torch.Tensor, halo: int, tile: int,
          maps: tuple[torch.Tensor, ...] = (), device: torch.device | None = None) -> torch.Tensor:
    """``function(images, *maps)`` for a local ``function`` of radius ``halo`` that maps ``(N, C, h, w)``
    tiles (and the same windows of each per-pixel map in ``maps``) to ``(N, C', h, w)``, computed on
    ``tile x tile`` cores with ``halo`` pixels of context; ``tile <= 0`` or a tile as large as the image
    computes it in one piece. Tiles are moved to ``device`` (default: where ``images`` are); the result is
    assembled where ``images`` are.
    """
    height, width = images.shape[-2:]
    device = images.device if device is None else device
    if tile <= 0 or (tile >= height and tile >= width):
        return function(images.to(device), *(m.to(device) for m in maps)).to(images.device)
    output = None
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            rows = slice(max(top - halo, 0), min(top + tile + halo, height))
            columns = slice(max(left - halo, 0), min(left + tile + halo, width))
            result = function(images[..., rows, columns].to(device), *(m[..., rows, columns].to(device) for m in maps))
            if output is None:
                output = images.new_empty(*result.shape[:-2], height, width, dtype=result.dtype)
            core = result[..., top - rows.start:top - rows.start + tile, left - columns.start:left - columns.start + tile]
            output[..., top:top + core.shape[-2], left:left + core.shape[-1]] = core.to(output.device)
    return output


# --- the CPU: strips of rows on worker threads, and the convolution backend ----------------------------

_mkldnn_off = {"depth": 0, "previous": True}
_mkldnn_lock = threading.Lock()


@contextlib.contextmanager
def convolution_backend(model, images: torch.Tensor, stride: int = 1):
    """On the CPU, oneDNN (mkldnn) is slower than PyTorch's own GEMM-based convolution for small kernels
    on one image channel and faster for large ones (measured, 481x321 image, 2 threads: 7x7 filters
    45 + 80 ms vs 27 + 26 ms for conv2d + conv_transpose2d; 15x15: 205 + 257 ms vs 460 + 410 ms), and faster for
    strided ones (every second patch position, 7x7: 1.9 ms vs 4.9 ms). Same arithmetic either way; this picks
    the faster for ``model``'s patch size and the ``stride``. The switch is global, so threads that use it
    together (:func:`map_strip_blocks`) count: the last one out restores it."""
    if not (images.device.type == "cpu" and model.patch_size <= 9 and stride == 1
            and torch.backends.mkldnn.is_available()):
        yield
        return
    with _mkldnn_lock:
        if _mkldnn_off["depth"] == 0:
            _mkldnn_off["previous"] = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _mkldnn_off["depth"] += 1
    try:
        yield
    finally:
        with _mkldnn_lock:
            _mkldnn_off["depth"] -= 1
            if _mkldnn_off["depth"] == 0:
                torch.backends.mkldnn.enabled = _mkldnn_off["previous"]


STRIP_VALUES = 1 << 21
"""On the CPU, whole-image passes (the patch-averaged score, the energies of noise estimation) run in
strips of rows holding at most about this many responses (8 MiB in float32), so that responses, scores and
the convolutions' buffers stay in cache: measured on 2 threads, 481x321 image, 7x7 / 15x15 models, this
halves the time of an EB-PA pass (0.13 -> 0.07 s, 0.93 -> 0.44 s)."""


def strip_rows(model, patch_rows: int, patch_columns: int, device: torch.device) -> int:
    """Rows of patch positions per strip: all of them off the CPU, else 4 to 16 (at most ``STRIP_VALUES``
    responses when the image is wide)."""
    if device.type != "cpu":
        return patch_rows
    return max(4, min(16, STRIP_VALUES // (model.num_filters * patch_columns)))


def row_strips(model, images: torch.Tensor):
    """Yield ``(top, bottom, strip)``: the rows of ``images`` ``(N, C, H, W)`` that hold the patch positions
    ``top:bottom`` (all columns), in strips of :func:`strip_rows` rows covering ``0 : H-b+1``."""
    b = model.patch_size
    patch_rows, patch_columns = images.shape[-2] - b + 1, images.shape[-1] - b + 1
    step = strip_rows(model, patch_rows, patch_columns, images.device)
    for top in range(0, patch_rows, step):
        bottom = min(top + step, patch_rows)
        yield top, bottom, images[..., top:bottom + b - 1, :]


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _worker_pool(size: int) -> ThreadPoolExecutor:
    """The process's pool of at least ``size`` worker threads for :func:`map_strip_blocks` (created on first use)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(size, thread_name_prefix="gmdm-strips"), size
        return _pool


def map_strip_blocks(model, images: torch.Tensor, function) -> list:
    """``[function(block) for block in blocks]``: the strips of :func:`row_strips` split into contiguous blocks
    of ``(top, bottom, strip)``, one block per CPU thread, each block run by a worker thread with one thread of
    its own; off the CPU, or with one thread, one block in the calling thread.

    Why: the convolutions of one image channel parallelise poorly inside PyTorch (their im2col / col2im runs
    on one thread), while strips are independent. Measured on 2 threads (481x321 image, calls alternated in one
    process, medians of 31): EB-PA 7x7 0.077 -> 0.052 s, 15x15 0.49 -> 0.37 s. ``function`` must not write
    what another block writes (blocks' patch sums overlap by ``b - 1`` rows: sum them into separate buffers).
    Gradient mode is that of the caller.
    """
    strips = list(row_strips(model, images))
    threads = torch.get_num_threads() if images.device.type == "cpu" else 1
    count = min(threads, len(strips))
    blocks = [strips[k * len(strips) // count:(k + 1) * len(strips) // count] for k in range(count)]
    if count == 1:
        return [function(blocks[0])]
    grad = torch.is_grad_enabled()

    def run(block):
        if torch.get_num_threads() != 1:  # this worker's own setting (OpenMP's is per thread)
            torch.set_num_threads(1)
        with torch.set_grad_enabled(grad):
            return function(block)

    try:
        return list(_worker_pool(count).map(run, blocks))
    finally:
        torch.set_num_threads(threads)  # the default of threads started later, which a worker's setting changed
