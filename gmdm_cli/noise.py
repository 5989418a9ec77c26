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
"""

from __future__ import annotations

import math

import torch

from .model import PatchGMDM, expert_log_density, image_responses, time_from_sigma

SIGMA_MAX = 0.5  # largest noise level searched (0-1 scale); the model is trained up to 0.4


def response_histograms(model: PatchGMDM, images: torch.Tensor, bins: int = 4096):
    """Per-expert linear-binned histograms of the responses of all patches of ``images`` ``(N, 1, H, W)``.

    Returns ``(centres, weights)``, both ``(J, bins)``; ``weights`` sum to 1 for every expert.
    """
    z = image_responses(model, images).detach().movedim(1, 0).reshape(model.filters.shape[0], -1)  # (J, M)
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


def mean_patch_energy(model: PatchGMDM, histograms, sigma: float) -> float:
    """``mean_i -log f(P_i y, t)`` at ``t = sigma^2 / 2`` from :func:`response_histograms` (normalised)."""
    centres, weights = histograms
    with torch.no_grad():
        energies = -expert_log_density(model, centres[None], time_from_sigma(sigma))[0]  # (J, bins)
        return float((weights * energies).sum() - model.log_normaliser())


def estimate_global_sigma(model: PatchGMDM, image: torch.Tensor, bins: int = 4096, coarse: int = 26,
                          tolerance: float = 1e-4) -> float:
    """``sqrt(2 argmin_t mean_i -log f(P_i y, t))`` for a gray image ``(H, W)`` or ``(1, 1, H, W)``, 0-1 scale.

    Raw argmin, without any calibration; searched on ``[0, SIGMA_MAX]``.
    """
    images = image if image.dim() == 4 else image[None, None]
    histograms = response_histograms(model, images.to(model.filters.dtype), bins)
    grid = [SIGMA_MAX * i / (coarse - 1) for i in range(coarse)]
    values = [mean_patch_energy(model, histograms, s) for s in grid]
    best = min(range(coarse), key=values.__getitem__)
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, coarse - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    energy_a, energy_b = mean_patch_energy(model, histograms, a), mean_patch_energy(model, histograms, b)
    while high - low > tolerance:
        if energy_a <= energy_b:
            high, b, energy_b = b, a, energy_a
            a = high - ratio * (high - low)
            energy_a = mean_patch_energy(model, histograms, a)
        else:
            low, a, energy_a = a, b, energy_b
            b = low + ratio * (high - low)
            energy_b = mean_patch_energy(model, histograms, b)
    return (low + high) / 2
