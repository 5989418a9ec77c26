"""Calibration of a model's global noise estimates on clean images (``gmdm calibrate``): the mean raw estimate at
known noise levels, stored with the checkpoint and applied by :func:`gmdm_cli.noise.apply_calibration`.
"""

from __future__ import annotations

import math

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
    import numpy as np

    unknown = [estimator for estimator in estimators if estimator not in CALIBRATED]
    if unknown:
        raise ValueError(f"unknown estimator '{unknown[0]}' (choose from {', '.join(CALIBRATED)})")
    rng = np.random.default_rng(seed)
    global_ones = [estimator for estimator in estimators if estimator != "quiet"]
    raw = {estimator: [] for estimator in estimators}
    kept_histograms, ratios = [], []  # for "quiet", once its experts are chosen
    for sigma in sigmas:
        estimates = {estimator: [] for estimator in estimators}
        kept_histograms.append([])
        for image in images:
            noisy = image + sigma / 255 * rng.standard_normal(image.shape)
            tensor = torch.as_tensor(noisy, dtype=model.logits.dtype, device=model.logits.device)
            histograms = _histograms(model, tensor)
            found = raw_global_sigmas(model, tensor, global_ones, histograms) if global_ones else {}
            if "quiet" in estimators:
                kept_histograms[-1].append(histograms)
                if sigma >= QUIET_SELECTION_FROM:  # argmins searched from half to twice the true level
                    levels = torch.logspace(math.log10(sigma / 510), math.log10(sigma / 127.5), 32, dtype=torch.float64)
                    ratios.append(expert_sigmas(model, histograms, levels).cpu().numpy() * 255 / sigma)
            for estimator, value in found.items():
                estimates[estimator].append(value)
        for estimator in global_ones:
            raw[estimator].append(float(np.mean(estimates[estimator])))
    extra = {}
    if "quiet" in estimators:
        if not ratios:
            raise ValueError(f"the 'quiet' calibration needs a level of at least {QUIET_SELECTION_FROM}")
        experts = sorted(int(j) for j in np.argsort(np.mean(ratios, 0))[:QUIET_EXPERTS])
        raw["quiet"] = [float(np.mean([histogram_argmin(model, h, experts) for h in level]))
                        for level in kept_histograms]
        extra["quiet"] = {"experts": experts}
    result = {}
    for estimator in estimators:
        means = np.maximum.accumulate(np.asarray(raw[estimator])) + 1e-9 * np.arange(len(sigmas))
        result[estimator] = {"raw": [float(r) for r in means], "true": [s / 255 for s in sigmas],
                             "images": len(images), "seed": seed, **extra.get(estimator, {})}
    return result
