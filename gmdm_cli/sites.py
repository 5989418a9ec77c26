"""The sites of an image where a model's experts look (every patch of a patch model, every lattice cell of a band
model), their energies at a ladder of noise levels, which of them clipping spoils, and per-site values brought
back to pixels: what the noise estimators and the blind noise models (:mod:`gmdm_cli.blind`) share.
"""

from __future__ import annotations

import math

import torch

from .kinds import GMDM
from .model import time_from_sigma

SIGMA_MAX = 0.5  # largest noise level searched (0-1 scale); the model is trained up to 0.4


def clipped_pixels(image: torch.Tensor) -> torch.Tensor:
    """Pixels at an end of the [0, 1] range when the image's values end there (a saturated 8/16-bit file):
    exactly 0 where nothing is below 0, exactly 1 where nothing is above 1. Unclipped noisy images (values
    beyond the range) have none. A clipped Gaussian is not a Gaussian: the estimators leave out every site
    that holds such a pixel (:func:`usable_sites`)."""
    mask = torch.zeros_like(image, dtype=torch.bool)
    if float(image.min()) == 0:
        mask |= image == 0
    if float(image.max()) == 1:
        mask |= image == 1
    return mask


def usable_sites(model: GMDM, images: torch.Tensor) -> torch.Tensor | None:
    """Which sites of :meth:`~gmdm_cli.kinds.GMDM.site_grid` have no clipped pixel (:func:`clipped_pixels`) in their block or within
    one block's width of it, ``(N, rows, columns)`` for ``images`` ``(N, 1, H, W)``; ``None`` when every site is
    usable, or none is (nothing to leave out then). The margin: near a saturated region the patches that escaped
    clipping are those whose noise happened to stay away from the end, a truncated (quieter) sample; the flat
    estimator would pick them first (sigma 5 read as 2.8 on a clipped 8-bit file without it)."""
    import torch.nn.functional as F

    clipped = torch.stack([clipped_pixels(image) for image in images]).to(images.dtype)
    if not bool(clipped.any()):
        return None
    rows, columns, footprint, stride = model.site_grid(images.shape[-2:])
    padded = F.pad(clipped, (footprint,) * 4)  # zeros: outside the image nothing is clipped
    usable = F.max_pool2d(padded, 3 * footprint, stride)[:, 0, :rows, :columns] == 0
    return usable if bool(usable.any()) else None


def sigma_levels(count: int = 48, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """Candidate noise levels for per-patch estimation: 0 and a geometric ladder up to ``sigma_max``."""
    return torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.logspace(math.log10(1 / 255), math.log10(sigma_max), count - 1, dtype=torch.float64)])


def patch_energies(model: GMDM, image: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``-log f(P_i y, sigma_k^2 / 2)`` of every site at every level (tabulated experts, up to the constant
    ``log Z``): ``(K, H-b+1, W-b+1)`` for a patch model's patches, ``(K, H/M, W/M)`` for a band model's lattice
    sites (the sum over its modelled bands); sites as :meth:`~gmdm_cli.kinds.GMDM.site_inputs` gives them."""
    from .tables import expert_table

    images = (image if image.dim() == 4 else image[None, None]).to(model.logits.dtype)
    tables = [expert_table(model, float(time_from_sigma(s))) for s in sigmas]
    rows, columns, _, _ = model.site_grid(images.shape[-2:])
    energies = images.new_empty(len(tables), rows, columns)

    def strip_energies(top: int, bottom: int, z: torch.Tensor) -> None:
        for level, table in enumerate(tables):
            energies[level, top:bottom] = table.energy(z).sum(1)[0]

    with torch.no_grad():
        model.site_inputs(images, strip_energies)
    return energies


def argmin_refined(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Argmin over dimension 0 with a parabola through the neighbours (on the level index); on ``values``'
    device, in its dtype."""
    levels = levels.to(device=values.device, dtype=values.dtype)
    count = values.shape[0]
    best = values.argmin(0).clamp(1, count - 2)
    left, centre, right = (values.gather(0, (best + d)[None])[0] for d in (-1, 0, 1))
    curvature = left - 2 * centre + right
    shift = torch.where(curvature > 0, 0.5 * (left - right) / curvature.clamp_min(1e-12), torch.zeros_like(centre))
    position = (best + shift.clamp(-1, 1)).clamp(0, count - 1)
    lower = position.floor().long().clamp(max=count - 2)
    fraction = (position - lower).to(levels.dtype)
    return torch.lerp(levels[lower], levels[lower + 1], fraction)


def sites_to_pixels(per_site: torch.Tensor, shape, footprint: int, stride: int) -> torch.Tensor:
    """Per-pixel values ``(H, W)`` from values of the sites of :meth:`~gmdm_cli.kinds.GMDM.site_grid` ``(1, 1, h, w)``: every pixel the
    mean of the sites whose ``footprint x footprint`` block covers it (edge pixels no site covers: the nearest)."""
    import torch.nn.functional as F

    ones = per_site.new_ones(1, 1, footprint, footprint)
    summed = F.conv_transpose2d(per_site, ones, stride=stride)
    pixels = summed / F.conv_transpose2d(torch.ones_like(per_site), ones, stride=stride)
    height, width = shape  # a band model's lattice may leave a margin of < M pixels: extend the edge
    return F.pad(pixels, (0, width - pixels.shape[-1], 0, height - pixels.shape[-2]), mode="replicate")[0, 0]
