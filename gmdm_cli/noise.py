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
image to image (on BSD68 it loses to a wavelet MAD estimator). :func:`estimate_flat_sigma` (the default
of :func:`estimate_noise`) applies the same argmin to the flattest regions only: the energies of all
patches are pooled over windows, each window gets its argmin, and the windows with the lowest ones are
pooled for the final argmin. Natural images nearly always have some flat region, where the argmin sees
noise only; the selection's own bias is the same for every image and is removed by the calibration
(:func:`~gmdm_cli.calibration.calibrate_noise`).

The flat estimate sees few pixels, so at high noise its spread (about 1 % of sigma) exceeds that of a
whole-image estimate. Texture raises some experts' argmins far more than others' (high-frequency filters
see little of natural images): the ``"quiet"`` estimate is the whole-image argmin over the
``QUIET_EXPERTS`` experts that calibration images raised least. ``"auto"`` (the default) uses the flat
estimate at low noise and the quiet one at high noise (:func:`auto_estimate`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .choices import ESTIMATORS, RAW_ESTIMATORS
from .kinds import GMDM
from .model import expert_log_density, time_from_sigma
from .image_io import split_alpha
from .sites import SIGMA_MAX, argmin_refined, patch_energies, sigma_levels, usable_sites


def response_histograms(model: GMDM, images: torch.Tensor, bins: int = 512):
    """Per-expert linear-binned histograms of the responses of all patches of ``images`` ``(N, 1, H, W)``
    (of the :func:`~gmdm_cli.sites.usable_sites` only, when some hold clipped pixels).

    Returns ``(centres, weights)``, both ``(J, bins)``; ``weights`` sum to 1 for every expert.
    """
    usable = usable_sites(model, images)

    def responses(top: int, bottom: int, z: torch.Tensor) -> torch.Tensor:  # (J, sites)
        if usable is None:
            return z.movedim(1, 0).reshape(model.num_filters, -1)
        return z.movedim(1, 0)[:, usable[:, top:bottom]]

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


def expert_mean_energies(model: GMDM, histograms, sigma: float) -> torch.Tensor:
    """``mean_i -log psi_j(<k_j, P_i y>, t)`` of every expert ``(J,)`` at ``t = sigma^2 / 2``, from
    :func:`response_histograms`."""
    centres, weights = histograms
    with torch.no_grad():
        return (-expert_log_density(model, centres[None], time_from_sigma(sigma))[0] * weights).sum(1)


def mean_patch_energy(model: GMDM, histograms, sigma: float, experts=None) -> float:
    """``mean_i -log f(P_i y, t)`` at ``t = sigma^2 / 2`` from :func:`response_histograms` (normalised); with
    ``experts`` (indices) the sum over those experts only, up to the constant ``log Z``."""
    energies = expert_mean_energies(model, histograms, sigma)
    if experts is not None:
        return float(energies[list(experts)].sum())
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


def estimate_flat_sigma(model: GMDM, image: torch.Tensor, window: int = 15, fraction: float = 0.01,
                        whole: float | None = None) -> float:
    """Raw noise level of a gray image ``(H, W)`` (0-1 scale) from its flattest regions.

    Patch energies are computed on the levels of :func:`~gmdm_cli.sites.sigma_levels` from 0.15 to 1.2 times the
    whole-image estimate :func:`estimate_global_sigma` (content only raises an argmin; a fixed ladder, so the
    expert tables are built once for many images) and averaged over ``window x window``
    blocks of patch positions (overlapping by two thirds); every block gets its argmin. The ``fraction`` of
    blocks with the lowest argmin are the flattest regions: the estimate is the argmin over ``t`` of their
    mean energy, i.e. Fig. 4's estimator restricted to them. When that argmin is the ladder's lowest level (an
    image with texture everywhere raises the whole-image estimate to 4-6 times the noise at sigma 2-5), the
    ladder is extended downwards until it is not. Window 15 and fraction 1 % were chosen on
    BSDS400 training images (``benchmarks/tune_noise.py``; ``benchmarks/noise.py`` measures it on BSD68).
    Uncalibrated: selecting low blocks biases it low by the same factor for every image, which
    :func:`~gmdm_cli.calibration.calibrate_noise` removes. ``whole``: the whole-image estimate when it is
    already known.
    """
    whole = estimate_global_sigma(model, image) if whole is None else whole
    ladder = sigma_levels()
    levels = flat_levels(whole, ladder)
    lowest = int(torch.searchsorted(ladder, levels[0]))  # the ladder's index of levels[0]
    blocks = window_energies(model, image, levels, window)
    while True:
        flattest = torch.argsort(argmin_refined(blocks, levels))[:max(1, round(fraction * blocks.shape[1]))]
        estimate = float(argmin_refined(blocks[:, flattest].mean(1, keepdim=True), levels)[0])
        if estimate > levels[1] or lowest == 0:
            return estimate
        below, lowest = ladder[max(lowest - 4, 0):lowest], max(lowest - 4, 0)  # a factor 1.5 further down
        blocks = torch.cat([window_energies(model, image, below, window), blocks])
        levels = torch.cat([below, levels])


def flat_levels(whole: float, ladder: torch.Tensor) -> torch.Tensor:
    """The levels of ``ladder`` from 0.15 to 1.2 times the whole-image estimate ``whole`` (at least 2/255), one
    more on each side: where :func:`estimate_flat_sigma` looks first."""
    whole = max(whole, 2 / 255)
    inside = torch.nonzero((ladder >= 0.15 * whole) & (ladder <= 1.2 * whole))[:, 0]
    return ladder[max(int(inside[0]) - 1, 0):int(inside[-1]) + 2]


def window_energies(model: GMDM, image: torch.Tensor, levels: torch.Tensor, window: int = 15) -> torch.Tensor:
    """Mean patch energies at ``levels`` over ``window x window`` blocks of patch positions (stride
    ``window // 3``): ``(K, blocks)`` for :func:`estimate_flat_sigma`, in the model's dtype. A band model's blocks
    are of lattice cells (:meth:`~gmdm_cli.kinds.GMDM.site_grid`), ``window`` pixels wide (rounded). Blocks
    with a clipped pixel (:func:`~gmdm_cli.sites.usable_sites`) are left out, unless all have one."""
    import torch.nn.functional as F

    energies = patch_energies(model, image, levels)  # (K, h, w)
    window = max(1, min(round(window / model.site_grid(image.shape[-2:])[3]), *energies.shape[-2:]))
    stride = max(1, window // 3)
    blocks = F.avg_pool2d(energies[None], window, stride=stride)[0].flatten(1)
    usable = usable_sites(model, image.reshape(1, 1, *image.shape[-2:]))
    if usable is not None:
        clean = F.max_pool2d((~usable).to(blocks.dtype)[None], window, stride=stride).flatten() == 0
        blocks = blocks[:, clean] if bool(clean.any()) else blocks
    return blocks


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


def raw_global_sigmas(model: GMDM, image: torch.Tensor, estimators=RAW_ESTIMATORS,
                      histograms=None) -> dict[str, float]:
    """The uncalibrated global estimates of ``estimators`` (of :data:`RAW_ESTIMATORS`) for a gray image, from one
    set of response histograms: ``"mean-energy"`` the argmin of the mean energy of all patches (Fig. 4),
    ``"quiet"`` the same over the experts content raises least (the model's calibration's choice,
    :func:`quiet_experts`), ``"flat"`` (:func:`estimate_flat_sigma`) starts from the mean-energy one.
    ``histograms``: the image's :func:`response_histograms` when already computed."""
    unknown = [estimator for estimator in estimators if estimator not in RAW_ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator '{unknown[0]}' (choose from {', '.join(RAW_ESTIMATORS)})")
    histograms = _histograms(model, image) if histograms is None else histograms
    found = {}
    if "mean-energy" in estimators or "flat" in estimators:
        found["mean-energy"] = histogram_argmin(model, histograms)
    if "flat" in estimators:
        found["flat"] = estimate_flat_sigma(model, image, whole=found["mean-energy"])
    if "quiet" in estimators:
        experts = quiet_experts(model)
        if experts is None:
            raise ValueError("the 'quiet' estimator needs the model's 'quiet' calibration (gmdm calibrate)")
        found["quiet"] = histogram_argmin(model, histograms, experts)
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


def auto_weight(flat: float) -> float:
    """Weight of the flat estimate in ``"auto"`` given the calibrated flat estimate (0-1 scale): 1 below
    ``AUTO_RAMP[0]``, 0 above ``AUTO_RAMP[1]``, linear between; the quiet estimate takes the rest."""
    low, high = AUTO_RAMP
    return min(1.0, max(0.0, (high - flat) / (high - low)))


def estimate_global_noise(model: GMDM, image: torch.Tensor, estimator: str = "auto") -> tuple[float, float]:
    """``(calibrated, raw flat or None)`` global noise level of a gray image (0-1 scale) by ``estimator``
    (``"auto"``: :func:`auto_estimate`)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{estimator}' (choose from {', '.join(ESTIMATORS)})")
    if estimator != "auto":
        raw = raw_global_sigma(model, image, estimator)
        return apply_calibration(raw, calibration_for(model, estimator)), raw if estimator == "flat" else None
    raw = raw_global_sigmas(model, image, ("flat", "quiet") if quiet_experts(model) is not None else ("flat",))
    return auto_estimate(model, raw), raw["flat"]


def auto_estimate(model: GMDM, raw: dict[str, float]) -> float:
    """The ``"auto"`` estimate from raw ``"flat"`` and ``"quiet"`` ones: the calibrated flat estimate (the best
    at low noise) blended into the calibrated quiet one (the best at high noise) by :func:`auto_weight`; the
    flat estimate alone without a quiet one. Chosen on BSDS400 training images (``benchmarks/tune_noise.py``,
    ``benchmarks/results/noise-tuning.md``)."""
    flat = apply_calibration(raw["flat"], calibration_for(model, "flat"))
    if raw.get("quiet") is None:
        return flat
    weight = auto_weight(flat)
    return weight * flat + (1 - weight) * apply_calibration(raw["quiet"], calibration_for(model, "quiet"))


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
        tensor, gain = _intensity(model, image)
        return estimate_global_noise(model, tensor, estimator)[0] / gain, None
    sigma, levels, _ = estimate_noise_models(model, image, estimator, noise_model)
    return sigma, levels


def estimate_noise_models(model: GMDM, image, estimator: str = "auto", noise_model: str = "auto"):
    """``(sigma, levels, estimates)``: the global level of :func:`estimate_noise` and the blind estimates of
    :func:`gmdm_cli.blind.blind_levels` (per-pixel ``levels`` and one :class:`~gmdm_cli.blind.NoiseEstimate`
    per gray or RGB channel); a gray image's ``"auto"`` level is the constant model's, measured once."""
    from .blind import blind_levels

    image = split_alpha(np.asarray(image, dtype=np.float64))[0]
    tensor, gain = _intensity(model, image)
    sigma, _ = estimate_global_noise(model, tensor, estimator)
    known = sigma if image.ndim == 2 and estimator == "auto" else None
    levels, estimates = blind_levels(model, image, noise_model, known)
    return sigma / gain, levels, estimates


def _intensity(model: GMDM, image) -> tuple[torch.Tensor, float]:
    """The gray image, or a colour image's intensity, as a tensor for ``model``; and its noise gain."""
    import numpy as np

    from .colour import noise_gains, to_channels

    image = np.asarray(image, dtype=np.float64)
    gray = image if image.ndim == 2 else to_channels(image, "opponent")[..., 0]
    gain = 1.0 if image.ndim == 2 else float(noise_gains("opponent")[0])
    return torch.as_tensor(gray, dtype=model.logits.dtype, device=model.logits.device), gain


