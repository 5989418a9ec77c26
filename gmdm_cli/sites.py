"""The sites of an image where a model's experts look (every patch of a patch model, every lattice cell of a band
model), their energies at a ladder of noise levels, the local argmins of those energies pooled over
neighbourhoods, which sites clipping spoils, and per-site values brought back to pixels: what the global noise
estimators (:mod:`gmdm_cli.noise`) and the blind noise models (:mod:`gmdm_cli.blind`) share, computed once per
image (:func:`site_energies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .denoisers import LADDER_LEVELS
from .kinds import GMDM
from .tables import ladder_table

SIGMA_MAX = 0.5  # largest noise level searched (0-1 scale); the model is trained up to 0.4
LEVELS = LADDER_LEVELS[(LADDER_LEVELS >= 0.5 / 255) & (LADDER_LEVELS <= SIGMA_MAX)][::2].contiguous()  # of site_energies, ~15 % apart


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


def site_means(model: GMDM, images: torch.Tensor, step: int = 1) -> torch.Tensor:
    """The mean intensity of every site of :meth:`~gmdm_cli.kinds.GMDM.site_grid` (its block's pixels), float64
    ``(N, rows, columns)`` for ``images`` ``(N, 1, H, W)`` (of every ``step``-th in each direction with ``step``)."""
    rows, columns, footprint, stride = model.site_grid(images.shape[-2:])
    return F.avg_pool2d(images, footprint, stride * step)[:, 0, :-(-rows // step), :-(-columns // step)].double()


def sigma_levels(count: int = 48, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """Candidate noise levels for per-patch estimation: 0 and a geometric ladder up to ``sigma_max``."""
    return torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.logspace(math.log10(1 / 255), math.log10(sigma_max), count - 1, dtype=torch.float64)])


def argmin_refined(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Argmin over dimension 0 with a parabola through the neighbours (on the level index); on ``values``'
    device, in its dtype."""
    levels = levels.to(device=values.device, dtype=values.dtype)
    count = values.shape[0]
    best = values.min(0).indices.clamp(1, count - 2)  # on the CPU 3x faster than argmin over dimension 0
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
    def spread(values: torch.Tensor) -> torch.Tensor:  # sum of the sites covering each pixel
        if stride == 1:  # every window of footprint x footprint sites (running sums; the transposed convolution
            return window_sums(values, footprint, footprint - 1)  # is 15x slower on the CPU)
        return F.conv_transpose2d(values, values.new_ones(1, 1, footprint, footprint), stride=stride)

    pixels = spread(per_site) / spread(torch.ones_like(per_site))
    height, width = shape  # a band model's lattice may leave a margin of < M pixels: extend the edge
    return F.pad(pixels, (0, width - pixels.shape[-1], 0, height - pixels.shape[-2]), mode="replicate")[0, 0]


@dataclass
class SiteEnergies:
    """The summed energies of some experts (the quiet ones, :func:`~gmdm_cli.noise.image_sites`) ``(K, h, w)`` at
    ``levels`` ``(K,)`` of sites ``step`` sites of the model's grid apart (``experts``: which), all experts'
    ``responses`` there ``(1, J, h, w)`` (for :func:`summed_energies` of other experts), the sites' mean
    intensities and which are usable (:func:`usable_sites`)."""
    energies: torch.Tensor
    responses: torch.Tensor
    levels: torch.Tensor
    means: torch.Tensor
    valid: torch.Tensor
    step: int  # sites kept along each direction, of the model's own (every patch, or every lattice cell)
    shape: tuple
    experts: list  # whose energies these are
    pooled: dict = field(init=False, repr=False, compare=False, default_factory=dict)  # radius: pooled_energies

    def mean_energies(self, mask: torch.Tensor | None = None, energies: torch.Tensor | None = None) -> torch.Tensor:
        """The mean energy ``(K,)`` of the usable sites (of those of ``mask`` ``(h, w)`` when given) at each level
        (of these sites' energies, or of ``energies`` ``(K, h, w)``)."""
        energies = self.energies if energies is None else energies
        weights = (self.valid if mask is None else mask).flatten().to(energies.dtype)
        return energies.flatten(1) @ weights / weights.sum().clamp_min(1)


def site_energies(model: GMDM, image: torch.Tensor, experts=None, levels: torch.Tensor = LEVELS) -> SiteEnergies:
    """:class:`SiteEnergies` of a gray image ``(H, W)`` (tensor on the model's device): the summed energies of
    ``experts`` (indices; default all) at every second site in each direction (a quarter of a patch model's
    patches, a band model's lattice cells all)."""
    experts = list(range(model.num_filters)) if experts is None else experts
    step = 2 if model.site_grid(image.shape)[3] == 1 else 1
    images = image[None, None].to(model.logits.dtype)
    with torch.no_grad():
        responses = torch.cat(model.site_inputs(images, lambda top, bottom, z: z[0], step), 1)[None]  # (1, J, h, w)
        energies = summed_energies(model, responses, levels, experts)
        means = site_means(model, images, step)[0]
        usable = usable_sites(model, images)
        valid = torch.ones_like(means, dtype=torch.bool) if usable is None else usable[0, ::step, ::step]
    return SiteEnergies(energies, responses, levels.to(energies), means, valid, step, tuple(image.shape),
                        list(experts))


def summed_energies(model, responses: torch.Tensor, levels: torch.Tensor, experts,
                    part: slice = slice(None)) -> torch.Tensor:
    """``sum_{j in experts} -log psi_j`` of ``responses`` ``(1, J, h, w)`` at every one of ``levels`` (or of
    ``levels[part]``): ``(K, h, w)``, float64, from the model's :class:`~gmdm_cli.tables.LadderTable` of those
    experts and levels."""
    index = torch.as_tensor(list(experts), device=responses.device)
    z = responses[0, index]
    with torch.no_grad():
        return ladder_table(model, list(experts), levels, z.abs().amax((1, 2))).energies(z, part).double()


def window_sums(values: torch.Tensor, size: int, pad: int = 0) -> torch.Tensor:
    """Sums over every ``size x size`` window of ``values`` ``(..., h, w)`` zeroed ``pad`` wide around,
    ``(..., h + 2 pad - size + 1, w + 2 pad - size + 1)``: differences of running sums along each axis."""
    padded = F.pad(values, (pad + 1, pad, pad + 1, pad))  # and a leading zero for the differences
    rows = padded.cumsum(-1)
    rows = rows[..., size:] - rows[..., :-size]
    both = rows.cumsum(-2)
    return both[..., size:, :] - both[..., :-size, :]


def box_sum(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over ``(2 radius + 1)^2`` neighbours (zero outside), ``(..., h, w)``."""
    return window_sums(values, 2 * radius + 1, radius)


def pooled_energies(sites: SiteEnergies, radius: int, energies: torch.Tensor | None = None,
                    part: slice = slice(None)):
    """The mean energy ``(K, h, w)`` of each site's usable neighbours within ``radius`` sites (a ``(2 radius + 1)^2``
    window; the summed energies of ``sites``, or ``energies`` at the levels ``part`` of the sites'), how many there
    are ``(h, w)`` and the argmin of
    each window's mean energy ``(h, w)``, a local noise level; a window with none takes the mean of all usable
    sites. Those of ``sites``' own energies are kept with them (the flat estimate and the blind map share them)."""
    if energies is None and radius in sites.pooled:
        return sites.pooled[radius]
    own, energies = energies is None, sites.energies if energies is None else energies
    weights = sites.valid.to(energies.dtype)
    every = bool(sites.valid.all())  # nothing clipped: no need to weigh the energies
    pooled, counts = box_sum(energies if every else energies * weights, radius), box_sum(weights, radius)
    pooled = pooled.add_(1e-3 * sites.mean_energies(energies=energies)[:, None, None]).div_(counts + 1e-3)
    result = pooled, counts, argmin_refined(pooled, sites.levels[part])
    if own:
        sites.pooled[radius] = result
    return result


def local_levels(sites: SiteEnergies, radius: int, energies: torch.Tensor | None = None,
                 part: slice = slice(None)) -> torch.Tensor:
    """The argmin of each site's :func:`pooled_energies` ``(h, w)``: a local noise level."""
    return pooled_energies(sites, radius, energies, part)[2]
