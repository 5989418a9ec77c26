"""Noise-level estimation with a GMDM (Sec. 4.4, Fig. 4).

The model's density is explicit at every diffusion time, with its Gaussian normalisation
``1 / (sqrt(2 pi) sigma_j(t))``, so the noise level of an image is the time that makes its patches
most likely:

    sigma_hat = sqrt(2 t_hat),    t_hat = argmin_t  mean_i -log f(P_i y, t).

The mean over all patches of ``-log f`` is a sum over experts of the mean of ``-log psi_j`` over that
expert's responses. Those are binned once per image into a fine histogram per expert (linear binning,
``bins`` bins between the smallest and largest response), so each evaluation at a new ``t`` costs
``J x bins x L`` instead of ``J x pixels x L``. The minimum is bracketed on a coarse grid of ``sigma``
and refined by golden-section search.

That estimate is biased by image content: texture is "explained" as noise, so its error varies from
image to image (on BSD68 it loses to a wavelet MAD estimator). Texture raises some experts' argmins far more
than others' (high-frequency filters see little of natural images): the ``"quiet"`` estimate is the
whole-image argmin over the ``QUIET_EXPERTS`` experts that calibration images raised least.
:func:`estimate_flat_sigma` applies the argmin of those quiet experts to the flattest regions only: their
energies at every second patch position are pooled over windows, each window gets its argmin, and the windows
with the lowest ones are pooled for the final argmin. Natural images nearly always have some flat region,
where the argmin sees noise only; the selection's own bias is nearly the same for every image and is removed
by the calibration (:func:`~gmdm_cli.calibration.calibrate_noise`). The same site energies serve the blind
noise models (:mod:`gmdm_cli.blind`), so a blind estimate computes them once.

The flat estimate sees few pixels, so at high noise its spread exceeds that of the whole-image quiet
estimate: ``"auto"`` (the default) uses the flat estimate at low noise and the quiet one at high noise
(:func:`auto_blend`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from .choices import ESTIMATORS, RAW_ESTIMATORS
from .kinds import GMDM
from .model import expert_log_density, time_from_sigma
from .image_io import split_alpha
from .sites import (LEVELS, SIGMA_MAX, SiteEnergies, argmin_refined, clipped_pixels, pooled_energies,
                    sigma_levels, site_energies, usable_sites)


def response_histograms(model: GMDM, images: torch.Tensor, bins: int = 512):
    """Per-expert linear-binned histograms of the responses of all patches of ``images`` ``(N, 1, H, W)``
    (of the :func:`~gmdm_cli.sites.usable_sites` only, when some hold clipped pixels).

    Returns ``(centres, weights)``, both ``(J, bins)``; ``weights`` sum to 1 for every expert.
    """
    usable = usable_sites(model, images)

    def responses(top: int, bottom: int, z: torch.Tensor) -> torch.Tensor:  # (experts, sites)
        z = z.movedim(1, 0)
        return z.reshape(z.shape[0], -1) if usable is None else z[:, usable[:, top:bottom]]

    with torch.no_grad():
        z = torch.cat(model.site_inputs(images, responses), 1)
    low, high = z.min(1, keepdim=True).values, z.max(1, keepdim=True).values
    step = (high - low).clamp_min(1e-12) / (bins - 1)
    position = (z - low) / step
    left = position.floor().clamp(0, bins - 2)
    fraction = position - left
    offsets = (torch.arange(z.shape[0], device=z.device) * bins)[:, None]
    index = (left.long() + offsets).reshape(-1)
    weights = torch.zeros(z.shape[0] * bins, dtype=z.dtype, device=z.device)
    weights.index_add_(0, index, (1 - fraction).reshape(-1))
    weights.index_add_(0, index + 1, fraction.reshape(-1))
    centres = low + step * torch.arange(bins, dtype=z.dtype, device=z.device)
    return centres, weights.view(-1, bins) / z.shape[1]


def expert_mean_energies(model: GMDM, histograms, sigma: float, experts=None) -> torch.Tensor:
    """``mean_i -log psi_j(<k_j, P_i y>, t)`` of every expert ``(J,)`` (of ``experts`` only, when given) at
    ``t = sigma^2 / 2``, from :func:`response_histograms`."""
    centres, weights = histograms
    if experts is not None:
        experts = torch.as_tensor(list(experts), device=centres.device)
        centres, weights = centres[experts], weights[experts]
    with torch.no_grad():
        return (-expert_log_density(model, centres[None], time_from_sigma(sigma), experts)[0] * weights).sum(1)


def mean_patch_energy(model: GMDM, histograms, sigma: float, experts=None) -> float:
    """``mean_i -log f(P_i y, t)`` at ``t = sigma^2 / 2`` from :func:`response_histograms` (normalised); with
    ``experts`` (indices) the sum over those experts only, up to the constant ``log Z``."""
    energies = expert_mean_energies(model, histograms, sigma, experts)
    if experts is not None:
        return float(energies.sum())
    with torch.no_grad():
        return float(energies.sum() - model.log_normaliser())


def estimate_global_sigma(model: GMDM, image: torch.Tensor, bins: int = 512, coarse: int = 14,
                          tolerance: float = 1e-4) -> float:
    """``sqrt(2 argmin_t mean_i -log f(P_i y, t))`` for a gray image ``(H, W)`` or ``(1, 1, H, W)``, 0-1 scale.

    Raw argmin, without any calibration; searched on ``[0, SIGMA_MAX]``.
    """
    return histogram_argmin(model, _histograms(model, image, bins), coarse=coarse, tolerance=tolerance)


def _histograms(model: GMDM, image: torch.Tensor, bins: int = 512):
    images = image if image.dim() == 4 else image[None, None]
    return response_histograms(model, images.to(model.logits.dtype), bins)


def histogram_argmin(model: GMDM, histograms, experts=None, coarse: int = 14, tolerance: float = 1e-4) -> float:
    """The ``sigma`` in ``[0, SIGMA_MAX]`` that minimises :func:`mean_patch_energy` (of ``experts``, default all):
    bracketed on a grid of ``coarse`` levels, refined by golden-section search."""
    grid = [SIGMA_MAX * i / (coarse - 1) for i in range(coarse)]
    values = [mean_patch_energy(model, histograms, s, experts) for s in grid]
    best = min(range(coarse), key=values.__getitem__)
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, coarse - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    energy_a, energy_b = (mean_patch_energy(model, histograms, s, experts) for s in (a, b))
    while high - low > tolerance:
        if energy_a <= energy_b:
            high, b, energy_b = b, a, energy_a
            a = high - ratio * (high - low)
            energy_a = mean_patch_energy(model, histograms, a, experts)
        else:
            low, a, energy_a = a, b, energy_b
            b = low + ratio * (high - low)
            energy_b = mean_patch_energy(model, histograms, b, experts)
    return (low + high) / 2


def expert_sigmas(model: GMDM, histograms, levels: torch.Tensor | None = None) -> torch.Tensor:
    """Every expert's own argmin ``(J,)``: the ``sigma`` of ``levels`` (default: 96 levels of
    :func:`~gmdm_cli.sites.sigma_levels`, refined by a parabola) that minimises the mean of ``-log psi_j`` over the image's
    responses. Content raises it; :func:`~gmdm_cli.calibration.calibrate_noise` keeps the experts it raises least (``"quiet"``)."""
    levels = sigma_levels(96) if levels is None else levels
    energies = torch.stack([expert_mean_energies(model, histograms, float(s)) for s in levels])  # (K, J)
    return argmin_refined(energies, levels)


QUIET_EXPERTS = 8  # experts kept by the "quiet" estimator
AUTO_RAMP = (20 / 255, 40 / 255)  # "auto": flat below, quiet above, linear between (on the flat estimate)
AUTO_RAMP_CLIPPED = (15 / 255, 30 / 255)  # the same for a clipped file: clipping biases the flat estimate low first


def image_sites(model: GMDM, image: torch.Tensor, experts=None) -> SiteEnergies:
    """The :func:`~gmdm_cli.sites.site_energies` of a gray image ``(H, W)`` that the flat estimate and the blind
    noise models (:mod:`gmdm_cli.blind`) share: of the ``experts`` given, else the model's quiet ones
    (:func:`quiet_experts`), else (a model without that calibration) of all experts."""
    return site_energies(model, image, quiet_experts(model) if experts is None else experts)


FLAT_RADIUS = 4  # the flat estimate's windows: (2 R + 1)^2 sites, every second patch position
FLAT_FRACTION = 0.01  # the share of the windows it keeps


def estimate_flat_sigma(model: GMDM, image: torch.Tensor, sites: SiteEnergies | None = None,
                        radius: int = FLAT_RADIUS, fraction: float = FLAT_FRACTION) -> float | None:
    """Raw noise level of a gray image ``(H, W)`` (0-1 scale) from its flattest regions.

    The quiet experts' energies of every second patch position (:func:`image_sites`, or ``sites`` when already
    computed) are averaged over windows of ``(2 radius + 1)^2`` of them, one around every site, and each
    window gets its argmin over the levels. The ``fraction`` of the windows with the lowest argmins (of those
    with at least half the sites of a full window usable) are the flattest regions: the estimate is the argmin
    over ``t`` of their mean energy, i.e. Fig. 4's estimator restricted to them. Radius 4 and fraction 1 % were
    chosen on BSDS400 training images (``benchmarks/tune_noise.py``; ``benchmarks/noise.py`` measures it on
    BSD68). Uncalibrated: selecting low windows biases it low by nearly the same factor for every image, which
    :func:`~gmdm_cli.calibration.calibrate_noise` removes. ``None`` when clipping leaves no window half usable.
    """
    sites = image_sites(model, image) if sites is None else sites
    pooled, counts, levels = pooled_energies(sites, radius)
    levels, counts = levels.flatten(), counts.flatten()
    full = math.prod(min(2 * radius + 1, n) for n in sites.valid.shape)  # a whole window's sites
    candidates = torch.nonzero(counts >= 0.5 * full)[:, 0]
    if len(candidates) == 0:  # clipping left no window half usable
        return None
    lowest = torch.topk(levels[candidates], max(1, round(fraction * len(candidates))), largest=False, sorted=False)
    flattest = candidates[lowest.indices]
    return float(argmin_refined(pooled.flatten(1)[:, flattest].mean(1, keepdim=True), sites.levels)[0])


def estimate_quiet_sigma(sites: SiteEnergies, kept: torch.Tensor | None = None) -> float:
    """Raw noise level (0-1 scale) of the whole image whose quiet experts' :func:`image_sites` are ``sites``: the
    argmin over the ladder of the mean energy of its usable sites (of the ``kept`` ones, a mask of the sites, when
    given; of all when none is usable), refined by :func:`gaussian_argmin`: Fig. 4's estimator over the experts
    content raises least, at every second patch position (its histogram over every patch and golden-section
    search read the same within 0.1 % on average, 20x slower)."""
    kept = sites.valid if kept is None else kept
    kept = kept if bool(kept.any()) else torch.ones_like(kept)
    return gaussian_argmin(sites.mean_energies(kept), sites.levels)


def gaussian_argmin(energies: torch.Tensor, levels: torch.Tensor) -> float:
    """The level minimising ``energies`` ``(K,)`` given at ``levels``: through the three levels around the
    smallest, the curve ``A / v + B log v + C`` (``v = sigma^2``; Gaussian responses of variance ``s^2`` read by
    a Gaussian of variance ``v`` have the mean energy ``(s^2 / v + log v) / 2``), whose minimum is ``v = A / B``.
    A parabola through them instead reads up to 0.8 % high, by an amount that depends on where the minimum falls
    between the levels, which a calibration cannot take out (on 20 BSDS400 images at sigma 25-100 this fit and
    the argmin over every patch agree within 0.1 % on average). Kept between the two levels either side; the
    ladder's level when the curve is not convex."""
    levels = levels.to(energies)
    best = int(energies.argmin().clamp(1, len(energies) - 2))
    variance = levels[best - 1:best + 2] ** 2
    system = torch.stack([1 / variance, torch.log(variance), torch.ones_like(variance)], 1)
    a, b, _ = torch.linalg.solve(system, energies[best - 1:best + 2])
    if not (a > 0 and b > 0):
        return float(levels[best])
    return float(torch.sqrt(a / b).clamp(levels[best - 1], levels[best + 1]))


def apply_calibration(sigma, calibration: dict | None):
    """Map raw argmin estimates to noise levels with a checkpoint's ``noise_calibration``
    (piecewise linear through measured ``(raw, true)`` pairs; identity without one)."""
    if not calibration:
        return sigma
    import numpy as np

    raw, true = np.asarray(calibration["raw"]), np.asarray(calibration["true"])
    values = np.asarray(sigma.cpu() if isinstance(sigma, torch.Tensor) else sigma, dtype=np.float64)
    # linear continuation beyond the measured range, with the end segments' slopes
    slope_low = (true[1] - true[0]) / (raw[1] - raw[0])
    slope_high = (true[-1] - true[-2]) / (raw[-1] - raw[-2])
    mapped = np.interp(values, raw, true)
    mapped = np.where(values < raw[0], true[0] + slope_low * (values - raw[0]), mapped)
    mapped = np.where(values > raw[-1], true[-1] + slope_high * (values - raw[-1]), mapped)
    mapped = np.maximum(mapped, 0)
    if isinstance(sigma, torch.Tensor):
        return torch.as_tensor(mapped, dtype=sigma.dtype, device=sigma.device)
    return float(mapped) if np.ndim(mapped) == 0 else mapped


def raw_global_sigmas(model: GMDM, image: torch.Tensor, estimators=RAW_ESTIMATORS, histograms=None,
                      sites: SiteEnergies | None = None, experts=None) -> dict[str, float]:
    """The uncalibrated global estimates of ``estimators`` (of :data:`RAW_ESTIMATORS`) for a gray image:
    ``"mean-energy"`` the argmin of the mean energy of all patches (Fig. 4), ``"quiet"``
    (:func:`estimate_quiet_sigma`) the same over the experts content raises least, ``"flat"``
    (:func:`estimate_flat_sigma`) the flattest regions' argmin over the same experts. ``experts``: those experts
    (default: the model's calibration's choice, :func:`quiet_experts`); ``histograms`` (all experts'), ``sites``
    (of those experts): the image's :func:`response_histograms` and :func:`image_sites` when already computed."""
    unknown = [estimator for estimator in estimators if estimator not in RAW_ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator '{unknown[0]}' (choose from {', '.join(RAW_ESTIMATORS)})")
    experts = quiet_experts(model) if experts is None else experts
    if "quiet" in estimators and experts is None:
        raise ValueError("the 'quiet' estimator needs the model's 'quiet' calibration (gmdm calibrate)")
    found = {}
    if "mean-energy" in estimators:
        found["mean-energy"] = histogram_argmin(model, _histograms(model, image) if histograms is None else histograms)
    if "flat" in estimators or "quiet" in estimators:
        sites = image_sites(model, image, experts) if sites is None else sites
    if "flat" in estimators:
        found["flat"] = estimate_flat_sigma(model, image, sites)
        if found["flat"] is None:  # clipped nearly everywhere: from all windows
            found["flat"] = estimate_flat_sigma(model, image, replace(sites, valid=torch.ones_like(sites.valid)))
    if "quiet" in estimators:
        found["quiet"] = estimate_quiet_sigma(sites)
    return {estimator: found[estimator] for estimator in estimators}


def raw_global_sigma(model: GMDM, image: torch.Tensor, estimator: str = "flat") -> float:
    """The uncalibrated global estimate of ``estimator`` (one of :data:`RAW_ESTIMATORS`) for a gray image."""
    return raw_global_sigmas(model, image, (estimator,))[estimator]


def calibration_for(model: GMDM, estimator: str) -> dict | None:
    """The checkpoint's calibration of ``estimator`` (of :data:`RAW_ESTIMATORS`), if it has one (one per estimator,
    by name; a single curve, as written before there were several estimators, is the ``"mean-energy"`` one)."""
    calibration = model.metadata.get("noise_calibration") or {}
    if "raw" in calibration:
        return calibration if estimator == "mean-energy" else None
    return calibration.get(estimator)


def quiet_experts(model: GMDM) -> list[int] | None:
    """The experts of the ``"quiet"`` estimator, chosen by :func:`~gmdm_cli.calibration.calibrate_noise`; ``None`` without one."""
    calibration = calibration_for(model, "quiet")
    return calibration["experts"] if calibration else None


def auto_weight(flat: float, ramp=AUTO_RAMP) -> float:
    """Weight of the flat estimate in ``"auto"`` given the calibrated flat estimate (0-1 scale): 1 below
    ``ramp[0]``, 0 above ``ramp[1]``, linear between; the quiet estimate takes the rest."""
    low, high = ramp
    return min(1.0, max(0.0, (high - flat) / (high - low)))


def estimate_global_noise(model: GMDM, image: torch.Tensor, estimator: str = "auto",
                          sites: SiteEnergies | None = None) -> tuple[float, float]:
    """``(calibrated, raw flat or None)`` global noise level of a gray image (0-1 scale) by ``estimator``
    (``"auto"``: :func:`auto_blend`, the quiet estimate measured only where it has a weight; the quiet one alone
    when the flat argmin is the lowest level searched, which is no estimate); ``sites``: the
    image's :func:`image_sites` when already computed. On a clipped file (:func:`~gmdm_cli.sites.clipped_pixels`)
    the quiet estimate is :func:`clipped_quiet_sigma`, and ``"auto"`` is that alone when clipping leaves no
    usable site for the flat estimate (:func:`~gmdm_cli.sites.usable_sites`: every patch near a saturated pixel,
    as at sigma 50 on most 8-bit photographs)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{estimator}' (choose from {', '.join(ESTIMATORS)})")
    experts = quiet_experts(model)
    clipped = experts is not None and bool(clipped_pixels(image).any())

    if estimator == "mean-energy":
        raw = raw_global_sigmas(model, image, (estimator,))[estimator]
        return apply_calibration(raw, calibration_for(model, estimator)), None
    sites = image_sites(model, image) if sites is None else sites

    def quiet() -> float:
        if clipped:
            return clipped_quiet_sigma(model, sites)
        raw = raw_global_sigmas(model, image, ("quiet",), sites=sites)["quiet"]
        return apply_calibration(raw, calibration_for(model, "quiet"))

    if estimator == "quiet":
        return quiet(), None
    if estimator == "flat":
        raw = raw_global_sigmas(model, image, (estimator,), sites=sites)[estimator]
        return apply_calibration(raw, calibration_for(model, estimator)), raw
    # a clipped file whose sites are all valid has none usable (usable_sites: those near a clipped pixel are not)
    raw = None if clipped and bool(sites.valid.all()) else estimate_flat_sigma(model, image, sites)
    if raw is None:  # clipped (nearly) everywhere: nothing flat to read
        return quiet(), None
    if experts is not None and raw <= float(LEVELS[1]):  # the ladder's bottom is no estimate (a band model's below
        return quiet(), raw                              # sigma ~8: its flattest cells read as noise-free)
    flat = apply_calibration(raw, calibration_for(model, "flat"))
    return (flat if experts is None else auto_blend(flat, quiet, AUTO_RAMP_CLIPPED if clipped else AUTO_RAMP)), raw


CLIP_MARGIN = 1.5  # clipped files: the quiet estimate reads sites whose mean is this many sigma from both ends


def clipped_quiet_sigma(model: GMDM, sites: SiteEnergies, rounds: int = 3) -> float:
    """The calibrated quiet estimate of a gray image whose values were clipped to [0, 1] (0-1 scale), from its
    quiet experts' :func:`image_sites` ``sites``.

    A clipped Gaussian is not a Gaussian, and at high noise (sigma 50 on an 8-bit photograph) nearly every patch
    holds or neighbours a saturated pixel, so none can be left out as at low noise. Instead the quiet experts
    read only the sites whose mean intensity ``m`` is at least ``CLIP_MARGIN`` levels from both ends (there few
    pixels clip), and the level they find, the clipped noise's ``s``, is undone for the clipping that remains:
    ``sigma`` solves ``mean_i Var(clip(m_i + sigma Z, 0, 1)) = s^2`` over those sites (:func:`clipped_variance`).
    The selection depends on ``sigma``: ``rounds`` rounds from the estimate over the usable sites. On 12 BSDS400
    images clipped and rounded to 8 bits at sigma 50: mean absolute error 0.49 (scikit-image's
    ``estimate_sigma`` 3.89)."""
    calibration = calibration_for(model, "quiet")
    sigma = apply_calibration(estimate_quiet_sigma(sites), calibration)
    for _ in range(rounds):
        kept = (sites.means > CLIP_MARGIN * sigma) & (sites.means < 1 - CLIP_MARGIN * sigma)
        if int(kept.sum()) < 25:  # too few sites (a hundred patches) of mid intensity: keep the last estimate
            break
        clipped = apply_calibration(estimate_quiet_sigma(sites, kept), calibration)
        sigma = unclipped_sigma(clipped, sites.means[kept])
    return sigma


def clipped_variance(mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """``Var(clip(mean + sigma Z, 0, 1))`` for ``Z ~ N(0, 1)``, elementwise (the truncated-normal moments)."""
    low, high = -mean / sigma, (1 - mean) / sigma
    cdf_low, cdf_high = torch.special.ndtr(low), torch.special.ndtr(high)
    pdf_low, pdf_high = (torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) for x in (low, high))
    inside = cdf_high - cdf_low
    first = (1 - cdf_high) + mean * inside + sigma * (pdf_low - pdf_high)
    second = (1 - cdf_high) + mean**2 * inside + 2 * mean * sigma * (pdf_low - pdf_high) \
        + sigma**2 * (inside + low * pdf_low - high * pdf_high)
    return second - first**2


def unclipped_sigma(clipped: float, means: torch.Tensor, steps: int = 40, bins: int = 1024) -> float:
    """The ``sigma`` whose clipped variance (:func:`clipped_variance`), averaged over sites of intensities
    ``means``, is ``clipped^2``: bisection on ``[clipped, 4 clipped]`` (clipping only lowers the variance), the
    intensities binned into ``bins`` equal bins of [0, 1] first."""
    counts = torch.bincount((means.flatten() * bins).long().clamp(0, bins - 1), minlength=bins).double()
    centres = (torch.arange(bins, dtype=torch.float64, device=counts.device) + 0.5) / bins
    weights = counts / counts.sum()
    low, high = clipped, 4 * clipped
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if float(clipped_variance(centres, middle) @ weights) < clipped**2 else (low, middle)
    return (low + high) / 2


def auto_blend(flat: float, quiet, ramp=AUTO_RAMP) -> float:
    """``"auto"`` from the calibrated flat estimate (the best at low noise) and the calibrated quiet one (the best
    at high noise; a function, called only where it has a weight): weighted by :func:`auto_weight` on ``ramp``.
    Chosen on BSDS400 training images (``benchmarks/tune_noise.py``, ``benchmarks/results/noise-tuning.md``; for
    clipped files :data:`AUTO_RAMP_CLIPPED`: 20 training images clipped to 8 bits at sigma 20 / 25 / 35, mean
    absolute error 0.51 / 0.42 / 0.47 against 0.62 / 0.61 / 0.53 on the unclipped ramp)."""
    weight = auto_weight(flat, ramp)
    return flat if weight == 1 else weight * flat + (1 - weight) * quiet()


def estimate_noise(model: GMDM, image, noise_map: bool = False, estimator: str = "auto",
                   noise_model: str = "auto"):
    """Noise level of a numpy image on the [0, 1] scale: ``(sigma, map or None)``, same scale.

    ``estimator`` (:func:`estimate_global_noise`): ``"auto"`` (the default), ``"flat"``
    (:func:`estimate_flat_sigma`), ``"quiet"`` (the whole-image argmin over the experts content raises least)
    or ``"mean-energy"`` (the paper's whole-image argmin, :func:`estimate_global_sigma`). Colour images are
    measured on their intensity ``(R + G + B) / 3`` (the first opponent channel of :mod:`gmdm_cli.colour`,
    noise level ``sigma / sqrt(3)`` for independent noise of level ``sigma`` in every channel) and reported per
    RGB channel. Estimates go through the model's calibration of each estimator when its checkpoint carries
    one. The map is the blind estimate of :func:`gmdm_cli.blind.blind_levels` with ``noise_model``: ``(H, W)``,
    or ``(H, W, 3)`` for a colour image (every channel its own noise model). An alpha channel is left out.
    """
    image = split_alpha(np.asarray(image, dtype=np.float64))[0]
    if not noise_map:
        return global_levels(model, image, estimator)[0], None
    sigma, levels, _ = estimate_noise_models(model, image, estimator, noise_model)
    return sigma, levels


def estimate_noise_models(model: GMDM, image, estimator: str = "auto", noise_model: str = "auto"):
    """``(sigma, levels, estimates)``: the global level of :func:`estimate_noise` and the blind estimates of
    :func:`gmdm_cli.blind.blind_levels` (per-pixel ``levels`` and one :class:`~gmdm_cli.blind.NoiseEstimate`
    per gray or RGB channel); a gray image's ``"auto"`` level is the constant model's, measured once."""
    from .blind import blind_levels

    image = split_alpha(np.asarray(image, dtype=np.float64))[0]
    sites = image_sites(model, _intensity(model, image)[0]) if image.ndim == 2 else None  # measured once
    sigma, channels = global_levels(model, image, estimator, sites)
    known = (sigma if image.ndim == 2 else channels) if estimator == "auto" else None
    levels, estimates = blind_levels(model, image, noise_model, known, sites)
    return sigma, levels, estimates


def global_levels(model: GMDM, image: np.ndarray, estimator: str = "auto",
                  sites: SiteEnergies | None = None) -> tuple[float, list[float] | None]:
    """The calibrated global level of a gray or colour numpy image (0-1 scale; a colour image's per RGB channel) by
    :func:`estimate_global_noise`, and each channel's own level when they were measured one by one (else
    ``None``): a colour image's is measured on its intensity, unless a channel is clipped
    (:func:`~gmdm_cli.sites.clipped_pixels`): where one channel saturates alone the intensity is not at an end,
    and its noise is no Gaussian (astronaut, clipped at sigma 40: 35.9), so then every channel is measured on its
    own, clipping-aware, and their RMS is the level. ``sites``: a gray image's :func:`image_sites`, when already
    computed."""
    if image.ndim == 3:
        channels = [torch.as_tensor(image[..., k], dtype=model.logits.dtype, device=model.logits.device)
                    for k in range(3)]
        if any(bool(clipped_pixels(channel).any()) for channel in channels):
            levels = [estimate_global_noise(model, channel, estimator)[0] for channel in channels]
            return float(np.sqrt(np.mean(np.square(levels)))), levels
    tensor, gain = _intensity(model, image)
    return estimate_global_noise(model, tensor, estimator, sites)[0] / gain, None


def _intensity(model: GMDM, image) -> tuple[torch.Tensor, float]:
    """The gray image, or a colour image's intensity, as a tensor for ``model``; and its noise gain."""
    import numpy as np

    from .colour import noise_gains, to_channels

    image = np.asarray(image, dtype=np.float64)
    gray = image if image.ndim == 2 else to_channels(image, "opponent")[..., 0]
    gain = 1.0 if image.ndim == 2 else float(noise_gains("opponent")[0])
    return torch.as_tensor(gray, dtype=model.logits.dtype, device=model.logits.device), gain


