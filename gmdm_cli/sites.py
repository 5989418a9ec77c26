"""The sites of an image where a model's experts look (every patch of a patch model, every lattice cell of a band
model), their energies at a ladder of noise levels, the local argmins of those energies pooled over
neighbourhoods, which sites clipping spoils, and per-site values brought back to pixels: what the global noise
estimators (:mod:`gmdm_cli.noise`) and the blind noise models (:mod:`gmdm_cli.blind`) share, computed once per
image (:func:`site_energies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .denoisers import LADDER_LEVELS
from .kinds import GMDM
from .model import time_from_sigma
from .tables import expert_table

SIGMA_MAX = 0.5  # largest noise level searched (0-1 scale); the model is trained up to 0.4
LEVELS = LADDER_LEVELS[(LADDER_LEVELS >= 0.5 / 255) & (LADDER_LEVELS <= SIGMA_MAX)][::2]  # of site_energies, ~15 % apart


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
    size = 3 * footprint  # a separable maximum: rows, then columns
    near = F.max_pool2d(F.max_pool2d(padded, (size, 1), (stride, 1)), (1, size), (1, stride))
    usable = near[:, 0, :rows, :columns] == 0
    return usable if bool(usable.any()) else None


def site_means(model: GMDM, images: torch.Tensor) -> torch.Tensor:
    """The mean intensity of every site of :meth:`~gmdm_cli.kinds.GMDM.site_grid` (its block's pixels), float64
    ``(N, rows, columns)`` for ``images`` ``(N, 1, H, W)``."""
    rows, columns, footprint, stride = model.site_grid(images.shape[-2:])
    return F.avg_pool2d(images, footprint, stride)[:, 0, :rows, :columns].double()


def sigma_levels(count: int = 48, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """Candidate noise levels for per-patch estimation: 0 and a geometric ladder up to ``sigma_max``."""
    return torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.logspace(math.log10(1 / 255), math.log10(sigma_max), count - 1, dtype=torch.float64)])


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


@dataclass
class SiteEnergies:
    """The summed energies of some experts (the quiet ones, :func:`~gmdm_cli.noise.image_sites`) ``(K, h, w)`` at
    ``levels`` ``(K,)`` of sites ``step`` sites of the model's grid apart, all experts' ``responses`` there
    ``(1, J, h, w)`` (for :func:`summed_energies` of other experts), the sites' mean intensities and which are
    usable (:func:`usable_sites`)."""
    energies: torch.Tensor
    responses: torch.Tensor
    levels: torch.Tensor
    means: torch.Tensor
    valid: torch.Tensor
    step: int  # sites kept along each direction, of the model's own (every patch, or every lattice cell)
    shape: tuple


def site_energies(model: GMDM, image: torch.Tensor, experts=None, levels: torch.Tensor = LEVELS) -> SiteEnergies:
    """:class:`SiteEnergies` of a gray image ``(H, W)`` (tensor on the model's device): the summed energies of
    ``experts`` (indices; default all) at every second site in each direction (a quarter of a patch model's
    patches, a band model's lattice cells all)."""
    experts = list(range(model.num_filters)) if experts is None else experts
    step = 2 if model.site_grid(image.shape)[3] == 1 else 1
    images = image[None, None].to(model.logits.dtype)

    def keep(top: int, bottom: int, z: torch.Tensor) -> torch.Tensor:
        return z[0, :, (-top) % step::step, ::step]  # rows of the whole grid that are multiples of step

    with torch.no_grad():
        responses = torch.cat(model.site_inputs(images, keep), 1)[None]  # (1, J, h, w)
        energies = summed_energies(model, responses, levels, experts)
        means = site_means(model, images)[0, ::step, ::step]
        usable = usable_sites(model, images)
        valid = torch.ones_like(means, dtype=torch.bool) if usable is None else usable[0, ::step, ::step]
    return SiteEnergies(energies, responses, levels.to(energies), means, valid, step, tuple(image.shape))


def summed_energies(model, responses: torch.Tensor, levels: torch.Tensor, experts) -> torch.Tensor:
    """``sum_{j in experts} -log psi_j`` of ``responses`` ``(1, J, h, w)`` at every one of ``levels``: ``(K, h, w)``,
    float64."""
    index = torch.as_tensor(experts, device=responses.device)
    z = responses[:, index]
    largest = z.abs().amax((0, 2, 3)).to(torch.float64)  # (experts,): on every table's grid when within its end
    with torch.no_grad():
        return torch.stack([_energy(model, expert_table(model, float(time_from_sigma(float(s)))), z, index, largest)
                            .sum(1)[0] for s in levels]).double()


def _energy(model, table, z: torch.Tensor, experts: torch.Tensor, largest: torch.Tensor) -> torch.Tensor:
    """``-log psi_j(z, t)`` of the ``experts`` from ``table``; when a response is beyond its grid (``largest``:
    the experts' largest ``|z|``; the grid spans ``gamma`` plus 10 of the expert's standard deviations, so only
    levels far below the noise), by the mixture's Gaussian tail ``(|z| - gamma)^2 / (2 sigma_j^2(t))`` from the
    grid's end instead of exactly: such a level is never an argmin, and the exact mixtures there would cost
    more than all the rest."""
    if bool((largest <= table.high[experts]).all()):
        return table.energy(z, experts)
    shape = (1, -1, 1, 1)
    low, high = (end[experts].to(z).view(shape) for end in (table.low, table.high))
    inside = torch.minimum(torch.maximum(z, low), high)
    variance = table.variances64[experts].to(z).view(shape)
    tail = ((z.abs() - model.gamma).square() - (inside.abs() - model.gamma).square()) / (2 * variance)
    return table.energy(inside, experts) + tail


def box_sum(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over ``(2 radius + 1)^2`` neighbours (zero outside), ``(..., h, w)``: differences of running sums
    along each axis."""
    size = 2 * radius + 1
    padded = F.pad(values, (radius + 1, radius, radius + 1, radius))
    rows = padded.cumsum(-1)
    rows = rows[..., size:] - rows[..., :-size]
    both = rows.cumsum(-2)
    return both[..., size:, :] - both[..., :-size, :]


def pooled_energies(sites: SiteEnergies, radius: int, energies: torch.Tensor | None = None):
    """The mean energy ``(K, h, w)`` of each site's usable neighbours within ``radius`` sites (a ``(2 radius + 1)^2``
    window; the summed energies of ``sites``, or ``energies``) and how many there are ``(h, w)``; a window with
    none takes the mean of all usable sites."""
    energies = sites.energies if energies is None else energies
    weights = sites.valid.to(energies.dtype)
    pooled, counts = box_sum(energies * weights, radius), box_sum(weights, radius)
    overall = (energies * weights).sum((1, 2)) / weights.sum().clamp_min(1)
    return (pooled + 1e-3 * overall[:, None, None]) / (counts + 1e-3), counts


def local_levels(sites: SiteEnergies, radius: int, energies: torch.Tensor | None = None) -> torch.Tensor:
    """The argmin of each site's :func:`pooled_energies` ``(h, w)``: a local noise level."""
    return argmin_refined(pooled_energies(sites, radius, energies)[0], sites.levels)
