"""Local image operators applied tile by tile, with the same result as on the whole image.

A patch-model operator such as the patch-averaged score changes a pixel according to the pixels within
``b - 1`` of it (the patches that cover it, which reach ``b - 1`` further). Computed on a tile enlarged by
that ``halo`` on every side (clipped at the image border, where the whole-image result sees the same
border), the tile's core is exactly what the whole image would give. Memory then scales with the tile,
not the image, and the image can stay in host memory while tiles go to the accelerator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
