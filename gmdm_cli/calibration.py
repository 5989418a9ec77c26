"""Calibration of a model's global noise estimates on clean images (``gmdm calibrate``): the mean raw estimate at
known noise levels, stored with the checkpoint and applied by :func:`gmdm_cli.noise.apply_calibration`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kinds import GMDM
from .noise import QUIET_EXPERTS, RAW_ESTIMATORS, _histograms, expert_sigmas, quiet_experts, raw_global_sigmas

CALIBRATION_LEVELS = (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 100)  # 0-255 scale


CALIBRATED = RAW_ESTIMATORS


QUIET_SELECTION_FROM = 15  # 0-255: levels at which the quiet experts are chosen (the quiet estimator's range)


def calibrate_noise(model: GMDM, images, sigmas=CALIBRATION_LEVELS, seed: int = 0,
                    estimators=CALIBRATED, choose_experts: bool = True) -> dict:
    """Measure the raw global estimators of :data:`RAW_ESTIMATORS` on clean gray ``images`` (numpy, [0, 1])
    with synthetic noise of known levels (0-255 scale); returns ``{estimator: {"raw": [...], "true": [...]}}``
    (0-1 scale) for :func:`apply_calibration`: the mean raw estimate at each true level, made strictly
    increasing. ``"quiet"`` first chooses its ``QUIET_EXPERTS`` experts: those whose own argmin
    (:func:`expert_sigmas`, searched from half to twice the true level) exceeds the true level least, on
    average over the images and the levels from ``QUIET_SELECTION_FROM`` on (their indices are stored with
    the curve), unless ``choose_experts`` is false and the model has quiet experts (then they are kept: its
    ``"flat"`` curve was measured with them); ``"flat"`` is measured with those experts (else with the model's own
    quiet ones, if any)."""
    unknown = [estimator for estimator in estimators if estimator not in CALIBRATED]
    if unknown:
        raise ValueError(f"unknown estimator '{unknown[0]}' (choose from {', '.join(CALIBRATED)})")
    experts, extra = quiet_experts(model), {}
    choose = "quiet" in estimators and (choose_experts or experts is None)
    histograms = None
    if choose or "mean-energy" in estimators:
        histograms = [[_histograms(model, noisy) for noisy in level] for level in _noisy(model, images, sigmas, seed)]
    if choose:
        experts = _quiet_choice(model, histograms, sigmas)
    if "quiet" in estimators:
        extra["quiet"] = {"experts": experts}
    raw = {estimator: [] for estimator in estimators}
    for k, level in enumerate(_noisy(model, images, sigmas, seed)):
        found = [raw_global_sigmas(model, noisy, estimators, None if histograms is None else histograms[k][i],
                                   experts=experts) for i, noisy in enumerate(level)]
        for estimator in estimators:
            raw[estimator].append(float(np.mean([values[estimator] for values in found])))
    result = {}
    for estimator in estimators:
        means = np.maximum.accumulate(np.asarray(raw[estimator])) + 1e-9 * np.arange(len(sigmas))
        result[estimator] = {"raw": [float(r) for r in means], "true": [s / 255 for s in sigmas],
                             "images": len(images), "seed": seed, **extra.get(estimator, {})}
    return result


def _noisy(model: GMDM, images, sigmas, seed: int):
    """Per level of ``sigmas`` (0-255), the ``images`` with seeded noise of that level (tensors for ``model``):
    the same every time."""
    rng = np.random.default_rng(seed)
    for sigma in sigmas:
        yield [torch.as_tensor(image + sigma / 255 * rng.standard_normal(image.shape), dtype=model.logits.dtype,
                               device=model.logits.device) for image in images]


def _quiet_choice(model: GMDM, histograms: list, sigmas) -> list[int]:
    """The ``QUIET_EXPERTS`` experts whose own argmin, searched from half to twice the true level, exceeds it least
    on average over the images and the levels from ``QUIET_SELECTION_FROM`` on."""
    ratios = []
    for sigma, level in zip(sigmas, histograms):
        if sigma >= QUIET_SELECTION_FROM:
            levels = torch.logspace(math.log10(sigma / 510), math.log10(sigma / 127.5), 32, dtype=torch.float64)
            ratios += [expert_sigmas(model, h, levels).cpu().numpy() * 255 / sigma for h in level]
    if not ratios:
        raise ValueError(f"the 'quiet' calibration needs a level of at least {QUIET_SELECTION_FROM}")
    return sorted(int(j) for j in np.argsort(np.mean(ratios, 0))[:QUIET_EXPERTS])


UNCERTAINTY_LEVELS = (5, 15, 25, 50, 100)  # 0-255 scale
UNCERTAINTY_EXPONENTS = ((0.5, 3.0, 11), (0.0, 1.5, 7))  # grids (low, high, count) of the two exponents searched


def calibrate_uncertainty(model: GMDM, images, sigmas=UNCERTAINTY_LEVELS, seed: int = 0) -> dict:
    """Calibrate EB-PA's posterior std (:func:`~gmdm_cli.denoisers.ebpa_posterior`) on clean gray ``images`` with
    synthetic noise of known levels (0-255). The pooled variance has two parts, the patches' own posterior
    variance ``V_own`` and their disagreement ``V_spread``; averaging over overlapping patches shrinks the error
    below the first where they agree and not where they do not, so the calibrated variance is
    ``sigma^2 exp(alpha) (V_own / sigma^2)^p (V_spread / sigma^2)^q`` with ``p, q`` chosen per level to make the
    binned RMS error match the binned prediction best (:func:`calibration_error`, deciles of the prediction) and
    ``alpha`` so that the mean predicted variance is the mean squared error. Returns
    ``{"sigma": [...], "alpha": [...], "own": [...], "spread": [...], "images", "seed"}`` (0-1 scale) for
    :func:`apply_uncertainty_calibration`."""
    from .denoisers import ebpa_posterior

    rng = np.random.default_rng(seed)
    curve = {"sigma": [], "alpha": [], "own": [], "spread": []}
    for sigma in sigmas:
        level = sigma / 255
        parts, errors = [], []
        for image in images:
            noisy = torch.as_tensor(image + level * rng.standard_normal(image.shape), dtype=model.logits.dtype)
            estimate, own, spread = ebpa_posterior(model, noisy, level)
            parts.append(np.stack([own.numpy().ravel(), spread.numpy().ravel()]) / level**2)
            errors.append((estimate.numpy() - image).ravel() / level)
        logs, error = np.log(np.maximum(np.concatenate(parts, 1), 1e-12)), np.concatenate(errors)
        best = None
        for p in np.linspace(*UNCERTAINTY_EXPONENTS[0]):
            for q in np.linspace(*UNCERTAINTY_EXPONENTS[1]):
                exponent = p * logs[0] + q * logs[1]
                alpha = float(np.log(np.mean(error**2)) - np.log(np.mean(np.exp(exponent))))
                merit = calibration_error(np.exp((alpha + exponent) / 2), error)[0]
                best = min(best or (merit, alpha, p, q), (merit, alpha, p, q))
        for key, value in zip(("sigma", "alpha", "own", "spread"), (level, *best[1:])):
            curve[key].append(float(value))
    return {**curve, "images": len(images), "seed": seed}


def calibration_error(predicted, error, bins: int = 10) -> tuple[float, float, list]:
    """How far predicted stds are from the actual errors: the pixels binned by predicted std (``bins`` quantiles),
    per bin ``log(RMS error / RMS predicted)``; returns its mean and largest magnitude, and the bins as
    ``(RMS predicted, RMS error, fraction of pixels)``."""
    predicted, error = np.ravel(predicted), np.ravel(error)
    edges = np.quantile(predicted, np.linspace(0, 1, bins + 1))
    index = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, bins - 1)
    table = []
    for k in range(bins):
        chosen = index == k
        if chosen.any():
            table.append((float(np.sqrt(np.mean(predicted[chosen] ** 2))), float(np.sqrt(np.mean(error[chosen] ** 2))),
                          float(chosen.mean())))
    logs = np.abs([np.log(actual / max(expected, 1e-300)) for expected, actual, _ in table])
    return float(np.mean(logs)), float(np.max(logs)), table
