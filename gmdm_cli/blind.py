"""Blind noise models: the noise that explains an image best, and the per-pixel level it implies (Sec. 4.4).

The model's density is explicit and normalised at every ``t``, so any noise model -- a level per pixel --
has a likelihood: the sum over patches of ``-log f(P_i y, sigma_i^2 / 2)``. Three models compete:

* ``"constant"``: one level for the whole image;
* ``"nlf"``: a noise-level function of the intensity, ``sigma^2(x) = a x + b`` (the Poisson-Gaussian noise of
  camera sensors: ``a`` the photon noise, ``b`` the read noise), ``x`` the mean of the patch;
* ``"map"``: a level per neighbourhood (a local argmin), which follows noise that varies over the image.

Texture is what makes this hard: a textured patch is more likely under more noise, so a local argmin reads
texture as noise. The energies here are those of the model's *quiet* experts (``gmdm calibrate`` chooses
them: the experts whose argmin natural content raises least, high-frequency filters on which noise and
texture differ most): pooled over a neighbourhood of 9 x 9 sites they give a local estimate whose median
over an image is within 1 % of the true level at sigma 5-50 without calibration, where all experts together
read texture as 10 % more noise at sigma 5. They are evaluated every second patch position in each direction
(a quarter of the patches; a band model's lattice cells all), at the levels of a geometric ladder. What texture
still adds to the quiet level is then taken out with the help of all experts' local level, which texture raises
about three times as much and noise alike (:func:`texture_corrected`): the map's levels in textured regions
come down to the noise's, and with them the blur EB-PA gave texture (BSDS400, EB-PA: +0.2 to +0.3 dB on
noise that varies over the image over the uncorrected map).

Clipped files: pixels at exactly 0 or 1 when the image's range ends there (8- or 16-bit files saturate)
carry no noise, or a clipped one; every patch that holds one or lies within a patch's width of one is left out
of every estimate (:func:`~gmdm_cli.sites.usable_sites`), and its level comes from its neighbours or the
fitted model.

Which model: the likelihood always prefers the richest model, because it also explains texture; :func:`choose`
therefore compares each model's gain over the best single level (nats per site) with what chance and texture
give on constant noise (texture adds a fixed variance, so its gain scales as ``1 / sigma^2``), with thresholds
set on BSDS400 training images (``benchmarks/blind.py``, ``benchmarks/results/blind.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .choices import NOISE_MODELS
from .denoisers import aligned_span, ladder_position
from .image_io import split_alpha
from .noise import image_sites
from .sites import SiteEnergies, local_levels, sites_to_pixels, summed_energies

MAP_RADIUS = 4  # local window: (2 R + 1)^2 sites
NLF_BINS = 16  # intensity bins of the noise-level function's fit
# "auto" (:func:`choose`): the gain each model needs, (nats per site, nats per site times the noise variance)
NEEDED_GAINS = {"nlf": (0.02, 5e-5), "map": (0.15, 1e-3)}
SPREAD_LIMIT = 1.4  # typical local level over the global one above which the noise is not one level
TEXTURE_RATIO = 3.0  # what texture adds to all experts' local level over what it adds to the quiet ones'
TABLE_ALIGNMENT = 4  # all experts' table of the levels the texture correction reads: ends at multiples of this
MAP_FLOOR = 0.9  # texture-corrected local levels stay above this times the global (quietest regions') level


@dataclass
class NoiseEstimate:
    """A blind estimate: the chosen noise ``model``, its per-pixel level ``sigma_map`` ``(H, W)`` ([0, 1] scale)
    and what was fitted: the constant level (the calibrated global estimate; the median local level for a model
    without calibration), the noise-level function ``(a, b)``, the binned levels by intensity, and each
    candidate's gain, and the typical (median) quiet local level before the texture correction."""
    model: str
    sigma_map: np.ndarray
    sigma: float
    nlf: tuple[float, float]
    curve: list = field(default_factory=list)
    gains: dict = field(default_factory=dict)
    typical: float = float("nan")

    def summary(self) -> dict:
        """JSON-ready, 0-255 scale for the levels (``a`` and ``b`` on the [0, 1] scale of ``sigma^2 = a x + b``)."""
        return {"noise_model": self.model, "sigma_rms": round(255 * float(np.sqrt(np.mean(self.sigma_map**2))), 3),
                "constant_sigma": round(255 * self.sigma, 3), "typical_local_sigma": round(255 * self.typical, 3),
                "nlf": {"a": self.nlf[0], "b": self.nlf[1],
                        "curve": [{"intensity": round(x, 4), "sigma": round(255 * s, 3), "sites": n}
                                  for x, s, n in self.curve]},
                "gains": {name: round(value, 4) for name, value in self.gains.items()}}


def energy_at(levels: torch.Tensor, energies: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``energies`` ``(K, ...)`` at ``levels`` ``(K,)``, each at its own level ``sigma`` ``(...)``, interpolated
    linearly in ``log sigma``."""
    lower, fraction = ladder_position(levels, sigma)
    low, high = (energies.gather(0, (lower + d)[None])[0] for d in (0, 1))
    return torch.lerp(low, high, fraction)


NLF_LIKELIHOOD_BINS = 256  # intensity bins of the noise-level function's likelihood


@dataclass
class IntensityBins:
    """Sites grouped into equal bins of mean intensity, what the likelihood of a noise-level function reads: each
    bin's sites' mean ``intensity`` ``(B,)``, summed ``energies`` ``(K, B)`` at ``levels`` and ``counts``
    ``(B,)``."""
    intensity: torch.Tensor
    energies: torch.Tensor
    levels: torch.Tensor
    counts: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def mean_intensity(self) -> float:
        return float((self.intensity * self.counts).sum()) / max(self.count, 1)

    def energy(self, a: float, b: float) -> float:
        """The sites' summed energy when each is at the level ``sqrt(a x + b)`` of its bin's mean intensity ``x``
        (within a bin the level varies by less than ``a / (2 B sigma)``)."""
        return float(energy_at(self.levels, self.energies, (a * self.intensity + b).clamp_min(1e-10).sqrt()).sum())


def intensity_bins(sites: SiteEnergies, mask: torch.Tensor, bins: int = NLF_LIKELIHOOD_BINS) -> IntensityBins:
    """The :class:`IntensityBins` of the sites of ``mask`` ``(h, w)``, ``bins`` equal bins over their range."""
    if bool(mask.all()):  # no copy
        means, energies = sites.means.flatten(), sites.energies.flatten(1)
    else:
        index = torch.nonzero(mask.flatten())[:, 0]
        means, energies = sites.means.flatten()[index], sites.energies.flatten(1)[:, index]
    low, high = (means.min(), means.max()) if len(means) else (0.0, 1.0)
    which = ((means - low) / max(float(high - low), 1e-12) * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(which, minlength=bins).to(means.dtype)
    intensity = means.new_zeros(bins).index_add_(0, which, means) / counts.clamp_min(1)
    return IntensityBins(intensity, energies.new_zeros(len(energies), bins).index_add_(1, which, energies),
                         sites.levels, counts)


def all_expert_levels(model, sites: SiteEnergies, quiet: torch.Tensor, ratio: float = TEXTURE_RATIO) -> torch.Tensor:
    """:func:`local_levels` of all experts' :func:`summed_energies` at the sites ``(h, w)`` (those of the sites'
    own experts and of the others): the level texture raises most, for :func:`texture_corrected`, given the quiet
    local levels ``quiet``. Only over the levels that can change the correction: from the last at or below the
    lowest quiet level (all experts' level below a site's quiet one corrects nothing) to the first at or above
    ``ratio^(1/2)`` times the highest (beyond, the correction with that ``ratio`` is at its floor), and one more
    at either end for the refinement. A window's mean energy falls and then rises with the level, so the argmin
    over these is the argmin over all kept within them, which corrects alike (the same maps to 1e-12 on five
    scikit-image images with four kinds of noise), at half the cost or less. The other experts' energies come from
    a table of those levels (its ends at multiples of :data:`TABLE_ALIGNMENT`): its grid is set by the lowest of them,
    not by the ladder's bottom, so that a first call builds it in about half the time (481 x 321 camera with
    signal-dependent noise, 2 threads: the estimate after the site energies 0.73-0.75 s, was 1.41-1.45 s), with the
    same maps within 2e-7 (on the [0, 1] scale; five scikit-image images, three kinds of noise). The other experts
    are read at every second site in each direction only (a sixteenth of the patches), each such site's energies
    standing for its 2 x 2 block in the windows' sums, whose 81 sites the quiet experts read in full: 26-31 ->
    15 ms on that image, and blind EB-PA within -0.0044 to -0.0002 dB on average of reading them at every site
    (BSDS400, 16 images, nine kinds of noise that choose a map or the noise-level function; worst image
    -0.016 dB)."""
    levels = sites.levels
    low, high = (torch.tensor(value, dtype=levels.dtype, device=levels.device)
                 for value in (float(quiet.min()), ratio**0.5 * float(quiet.max())))
    part = slice(max(int(torch.searchsorted(levels, low, right=True)) - 2, 0),
                 min(int(torch.searchsorted(levels, high)) + 2, len(levels)))
    others = [j for j in range(model.num_filters) if j not in sites.experts]
    energies = sites.energies[part]
    if others:  # else the sites' energies are all experts' already
        # a table of the levels around these only (its grid set by the lowest of them), ends at multiples of
        # TABLE_ALIGNMENT levels so that the next images' tables are mostly the same
        table = slice(*aligned_span(part.start, part.stop, TABLE_ALIGNMENT, len(levels)))
        within = slice(part.start - table.start, part.stop - table.start)
        # of every second site in each direction, each standing for its 2 x 2 block of sites
        coarse = summed_energies(model, sites.responses[..., ::2, ::2], levels[table], others, within)
        rows, columns = energies.shape[-2:]
        energies = energies + coarse.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :rows, :columns]
    return local_levels(sites, MAP_RADIUS, energies, part)


def texture_corrected(quiet: torch.Tensor, everything: torch.Tensor, floor: float,
                      ratio: float = TEXTURE_RATIO) -> torch.Tensor:
    """Local noise levels ``(h, w)`` with the part that texture adds taken out (Sec. 4.4's argmin reads texture
    as noise). Texture adds a variance to a local level, noise its own; the quiet experts see texture least,
    all experts together ``ratio`` (:data:`TEXTURE_RATIO`) times as much (the ratio of the two added variances,
    measured on BSDS400 training images at sigma 5, where texture dominates: 3.4-4.2), while both read the
    noise alike (their levels agree within a few % on smooth images). With ``q`` the quiet local level
    (``quiet``) and ``a`` all experts' (``everything``, :func:`all_expert_levels`), the noise's level is
    ``n^2 = q^2 - (a^2 - q^2) / (ratio - 1)``, kept between ``floor`` (where the correction took away too much:
    the level of the image's quietest regions) and ``q``."""
    added = (everything.square() - quiet.square()).clamp_min(0) / (ratio - 1)
    corrected = (quiet.square() - added).clamp_min(floor**2).sqrt()
    return torch.minimum(corrected, quiet.clamp_min(floor))


def fit_nlf(sites: SiteEnergies, local: torch.Tensor, likelihood: IntensityBins | None = None, bins: int = NLF_BINS):
    """The noise-level function ``sigma^2 = a x + b`` (``a, b >= 0``) and its binned curve
    ``[(intensity, sigma, sites), ...]``: the usable sites are binned by mean intensity (``bins`` bins of equal
    counts); each bin's level is the median of its sites' local levels (robust to the texture that raises some of
    them); ``(a, b)`` is the fit of the bins' variances weighted by their counts, refined by maximum likelihood
    (the sum of the usable sites' energies, minimised over ``(a, b)``, read from ``likelihood``: their
    :func:`intensity_bins`, made here when not given)."""
    means, levels = sites.means[sites.valid], local[sites.valid]
    if means.numel() < 2 * bins:
        sigma = float(levels.median()) if levels.numel() else float(local.median())
        return (0.0, sigma**2), []
    values, levels = means.double().cpu().numpy(), levels.double().cpu().numpy()
    # the quantiles' edges, linear between order statistics (torch.quantile's), by selection instead of a sort
    position = np.linspace(0, 1, bins + 1)[1:-1] * (len(values) - 1)
    below = position.astype(np.int64)
    above = np.minimum(below + 1, len(values) - 1)
    ordered = np.partition(values, np.unique(np.concatenate([below, above])))
    edges = ordered[below] + (position - below) * (ordered[above] - ordered[below])
    which = np.searchsorted(edges, values, side="left")  # boundaries[i-1] < x <= boundaries[i]
    counts = np.bincount(which, minlength=bins)
    intensity = np.bincount(which, weights=values, minlength=bins) / np.maximum(counts, 1)
    grouped = levels[np.argsort(which, kind="stable")]  # each bin's levels together
    curve, start = [], 0
    for k, count in enumerate(counts.tolist()):
        if count:  # the bin's lower median (torch.median's)
            middle = (count - 1) // 2
            curve.append((float(intensity[k]), float(np.partition(grouped[start:start + count], middle)[middle]),
                          count))
        start += count
    x, s, n = (np.array(v, dtype=np.float64) for v in zip(*curve))
    a, b = _nonnegative_line(x, s**2, n)
    a, b = _refine_nlf(intensity_bins(sites, sites.valid) if likelihood is None else likelihood, a, b)
    return (a, b), curve


def _nonnegative_line(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted least-squares ``y ~ a x + b`` with ``a, b >= 0``."""
    design = np.stack([x, np.ones_like(x)], 1) * np.sqrt(weights)[:, None]
    a, b = np.linalg.lstsq(design, y * np.sqrt(weights), rcond=None)[0]
    if a < 0:
        return 0.0, float(max(np.average(y, weights=weights), 0))
    if b < 0:
        return float(max(np.sum(weights * x * y) / max(np.sum(weights * x * x), 1e-12), 0)), 0.0
    return float(a), float(b)


def _refine_nlf(likelihood: IntensityBins, a: float, b: float, rounds: int = 3) -> tuple[float, float]:
    """Coordinate search on ``(a, b)`` (factors 2^(+-1/2^k)) for the smallest summed energy of the sites whose
    level the line gives (the maximum-likelihood noise-level function near the robust fit)."""
    scale = max(a * likelihood.mean_intensity() + b, 1e-8) if likelihood.count else 1e-4
    cost = likelihood.energy
    best = cost(a, b)
    a, b = max(a, 0.02 * scale), max(b, 0.02 * scale)  # a zero coefficient cannot be scaled
    for k in range(rounds):
        factor = 2 ** (1 / 2**k)
        for which in (0, 1):
            for f in (factor, 1 / factor):
                trial = (a * f, b) if which == 0 else (a, b * f)
                value = cost(*trial)
                if value < best:
                    best, (a, b) = value, trial
    return a, b


def pixel_levels(model, sites: SiteEnergies, per_site: torch.Tensor) -> torch.Tensor:
    """Per-pixel levels ``(H, W)`` from levels of the sites: each site's level repeated over the sites it
    stands for, then every pixel the mean of the sites that cover it."""
    rows, columns, footprint, stride = model.site_grid(sites.shape)
    full = per_site.repeat_interleave(sites.step, 0).repeat_interleave(sites.step, 1)[:rows, :columns]
    return sites_to_pixels(full[None, None], sites.shape, footprint, stride)


def nlf_levels(model, image: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``sqrt(a x + b)`` at every pixel, ``x`` the mean of the ``footprint x footprint`` block around it."""
    footprint = model.site_grid(image.shape)[2]
    x = image[None, None].double()
    pad = footprint // 2
    local = F.avg_pool2d(F.pad(x, (pad, footprint - 1 - pad) * 2, mode="replicate"), footprint, stride=1)[0, 0]
    return (a * local + b).clamp_min(0).sqrt()


def estimate_blind(model, image, noise_model: str = "auto", constant: float | None = None,
                   sites: SiteEnergies | None = None) -> NoiseEstimate:
    """The blind noise estimate of a gray image ``(H, W)`` (numpy, [0, 1] scale).

    Candidates: ``"constant"`` (the calibrated global estimate, :func:`~gmdm_cli.noise.estimate_global_noise`;
    the median local level for a model without a ``"flat"`` calibration), ``"nlf"`` (:func:`fit_nlf`) and
    ``"map"`` (:func:`local_levels`, less what texture adds: :func:`texture_corrected`, never below
    :data:`MAP_FLOOR` times the global level; the noise-level function's levels are capped by these and kept
    above the same floor: on constant noise over texture whose amount follows the intensity the function can
    fall far below the noise in dark regions). Each
    candidate's *gain* is how much lower the mean quiet energy of the usable sites is under it than under the
    best single level (a log-likelihood ratio per site, in nats), the map's of the local levels before the
    correction. ``noise_model="auto"`` chooses by the gains
    (:func:`choose`); any other of :data:`~gmdm_cli.choices.NOISE_MODELS` forces one. ``constant``: the global
    level, ``sites``: the image's :func:`~gmdm_cli.noise.image_sites`, when already known.
    """
    from .noise import calibration_for, estimate_global_noise

    if noise_model not in NOISE_MODELS:
        raise ValueError(f"unknown noise model '{noise_model}' (choose from {', '.join(NOISE_MODELS)})")
    tensor = torch.as_tensor(np.asarray(image), dtype=model.logits.dtype, device=model.logits.device)
    sites = image_sites(model, tensor) if sites is None else sites
    local = local_levels(sites, MAP_RADIUS)
    valid = sites.valid if sites.valid.any() else torch.ones_like(sites.valid)
    likelihood = intensity_bins(sites, valid)
    (a, b), curve = fit_nlf(sites, local, likelihood)
    best_single = float(sites.mean_energies(valid).min())
    gains = {"nlf": best_single - likelihood.energy(a, b) / likelihood.count,
             "map": best_single - float(energy_at(sites.levels, sites.energies, local)[valid].mean())}
    typical = float(local[valid].median())
    if calibration_for(model, "flat") is None:  # no calibrated global level: the quietest sites' (uncalibrated)
        constant, quietest = typical, float(torch.quantile(local[valid], 0.01))
    else:
        constant = estimate_global_noise(model, tensor, sites=sites)[0] if constant is None else constant
        quietest = constant
    floor, corrected = MAP_FLOOR * quietest, None

    def corrected_levels() -> torch.Tensor:  # computed once, when needed
        nonlocal corrected
        if corrected is None:
            corrected = texture_corrected(local, all_expert_levels(model, sites, local), floor)
        return corrected

    chosen = noise_model if noise_model != "auto" else choose(
        gains, constant, typical, lambda: float(corrected_levels()[valid].median()))
    if chosen == "constant":
        return NoiseEstimate(chosen, np.full(sites.shape, constant), constant, (a, b), curve, gains, typical)
    sigma_map = pixel_levels(model, sites, corrected_levels())
    if chosen == "nlf":  # never above the texture-corrected local levels (texture only raises them), nor below their floor
        sigma_map = torch.minimum(nlf_levels(model, tensor, a, b), sigma_map).clamp_min(floor)
    return NoiseEstimate(chosen, sigma_map.double().cpu().numpy(), constant, (a, b), curve, gains, typical)


def choose(gains: dict, constant: float, typical: float, corrected_typical=None) -> str:
    """``"auto"``'s choice from the gains (nats per site) of :func:`estimate_blind`, the global level ``constant``
    and the ``typical`` local level (the median over the image).

    The map always gains: by chance, up to ~0.06 nats per site whatever the level, and on texture, which it
    reads as noise, nats that scale as ``1 / sigma^2`` (texture adds a fixed variance, not a fixed fraction of
    the noise: up to 0.55 nats at sigma 5, 2e-4 nats times the variance). It is chosen when its gain passes both
    parts of :data:`NEEDED_GAINS` (the variance: the typical level's) and the noise-level function explains less
    than half of it. The noise-level function has two parameters and follows texture much less; at low noise
    texture whose amount goes with the intensity passes for it (0.2 nats at sigma 5 on training images), but its
    levels are capped by the texture-corrected local ones and floored like them, so that costs little, while
    missing signal-dependent noise costs much (0.24 dB at sigma^2 = 0.001 x + 0.0002 with the thresholds of
    before, 0.13 now): it needs the smaller gains of :data:`NEEDED_GAINS` ``["nlf"]``. Else one level, unless the typical level is more than
    :data:`SPREAD_LIMIT` times the global one: the global estimate reads the flattest regions, and noise whose
    typical level is far above theirs is not one level (denoising at the quietest level left 4-8 dB of noise in
    smooth fields); then the map. Texture raises the typical level too, so it must stay above the limit with the
    texture taken out as in the map (``corrected_typical``: a function that gives the median texture-corrected
    local level, called only then): at sigma 5 on BSDS400 it kept one level on an image that the map denoised
    0.6 dB worse, and changed nothing else over 12 kinds of noise. Set on BSDS400 training images (``benchmarks/blind.py --data
    ../shared/data/bsds400 --forced``: the PSNR of every model, then the thresholds that make the worst kind of
    noise best; ``benchmarks/results/blind.md``)."""
    variance = max(typical, 1 / 255) ** 2

    def passes(name: str) -> bool:
        nats, scaled = NEEDED_GAINS[name]
        return gains[name] > nats and gains[name] * variance > scaled

    if passes("map") and gains["nlf"] < 0.5 * gains["map"]:
        return "map"
    if passes("nlf"):
        return "nlf"
    spread = typical > SPREAD_LIMIT * constant and (corrected_typical is None
                                                    or corrected_typical() > SPREAD_LIMIT * constant)
    return "map" if spread else "constant"


def blind_levels(model, image, noise_model: str = "auto", constant=None,
                 sites: SiteEnergies | None = None) -> tuple[np.ndarray, list[NoiseEstimate]]:
    """Per-pixel noise levels of a numpy image ([0, 1] scale) by :func:`estimate_blind`: ``(H, W)`` for a gray
    image, ``(H, W, 3)`` for a colour one (every RGB channel its own noise model: the noise of a camera's
    channels differs), and the estimates. ``constant``: a gray image's global level, or a colour image's three
    channels' levels, and a gray image's :func:`~gmdm_cli.noise.image_sites`, when already known. An alpha channel
    is left out."""
    image = split_alpha(np.asarray(image, dtype=np.float64))[0]
    if image.ndim == 2:
        estimate = estimate_blind(model, image, noise_model, constant, sites)
        return estimate.sigma_map, [estimate]
    estimates = [estimate_blind(model, image[..., k], noise_model, None if constant is None else constant[k])
                 for k in range(3)]
    return np.stack([estimate.sigma_map for estimate in estimates], -1), estimates
