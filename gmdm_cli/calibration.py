"""Calibration of a model's global noise estimates on clean images (``gmdm calibrate``): the mean raw estimate at
known noise levels, stored with the checkpoint and applied by :func:`gmdm_cli.noise.apply_calibration`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kinds import GMDM
from .noise import (QUIET_EXPERTS, RAW_ESTIMATORS, _histograms, expert_sigmas, histogram_argmin,
                    raw_global_sigmas)

CALIBRATION_LEVELS = (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 100)  # 0-255 scale


CALIBRATED = RAW_ESTIMATORS


QUIET_SELECTION_FROM = 15  # 0-255: levels at which the quiet experts are chosen (the quiet estimator's range)


def calibrate_noise(model: GMDM, images, sigmas=CALIBRATION_LEVELS, seed: int = 0,
                    estimators=CALIBRATED) -> dict:
    """Measure the raw global estimators of :data:`RAW_ESTIMATORS` on clean gray ``images`` (numpy, [0, 1])
    with synthetic noise of known levels (0-255 scale); returns ``{estimator: {"raw": [...], "true": [...]}}``
    (0-1 scale) for :func:`apply_calibration`: the mean raw estimate at each true level, made strictly
    increasing. ``"quiet"`` first chooses its ``QUIET_EXPERTS`` experts: those whose own argmin
    (:func:`expert_sigmas`, searched from half to twice the true level) exceeds the true level least, on
    average over the images and the levels from ``QUIET_SELECTION_FROM`` on (their indices are stored with
    the curve)."""
    unknown = [estimator for estimator in estimators if estimator not in CALIBRATED]
    if unknown:
        raise ValueError(f"unknown estimator '{unknown[0]}' (choose from {', '.join(CALIBRATED)})")
    global_ones = [estimator for estimator in estimators if estimator != "quiet"]
    raw, histograms = _measure(model, images, sigmas, np.random.default_rng(seed), global_ones)
    extra = {}
    if "quiet" in estimators:
        experts = _quiet_choice(model, histograms, sigmas)
        raw["quiet"] = [float(np.mean([histogram_argmin(model, h, experts) for h in level])) for level in histograms]
        extra["quiet"] = {"experts": experts}
    result = {}
    for estimator in estimators:
        means = np.maximum.accumulate(np.asarray(raw[estimator])) + 1e-9 * np.arange(len(sigmas))
        result[estimator] = {"raw": [float(r) for r in means], "true": [s / 255 for s in sigmas],
                             "images": len(images), "seed": seed, **extra.get(estimator, {})}
    return result


def _measure(model: GMDM, images, sigmas, rng, estimators) -> tuple[dict, list]:
    """The mean raw estimate of each of ``estimators`` over ``images`` at each level of ``sigmas`` (0-255) with
    noise from ``rng``, and every noisy image's response histograms (per level, per image)."""
    raw = {estimator: [] for estimator in estimators}
    histograms = []
    for sigma in sigmas:
        histograms.append([])
        found = []
        for image in images:
            noisy = image + sigma / 255 * rng.standard_normal(image.shape)
            tensor = torch.as_tensor(noisy, dtype=model.logits.dtype, device=model.logits.device)
            histograms[-1].append(_histograms(model, tensor))
            found.append(raw_global_sigmas(model, tensor, estimators, histograms[-1][-1]) if estimators else {})
        for estimator in estimators:
            raw[estimator].append(float(np.mean([values[estimator] for values in found])))
    return raw, histograms


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
