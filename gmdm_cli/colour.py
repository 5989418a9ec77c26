"""Colour images with the gray prior.

Noise in the three RGB channels of a photograph is usually independent with one level ``sigma``, while the
images' channels are strongly correlated. An orthogonal *opponent* transform separates an intensity channel
from two colour-difference channels,

    I = (R + G + B) / 3,    C1 = (R - B) / 2,    C2 = (R - 2G + B) / 4,

whose rows are orthogonal, so the noise stays independent between them, with levels ``sigma * |a_k|``
(``1/sqrt(3)``, ``1/sqrt(2)``, ``sqrt(6)/4``). Each row is scaled so that the channel spans at most a unit range,
like the gray images the prior was trained on. Each channel is denoised with the gray prior at its own level
and the result transformed back. ``"rgb"`` denoises R, G and B separately at ``sigma``.

Measured on scikit-image's colour pictures (``benchmarks/colour.py``), ``"rgb"`` is 0.2-0.5 dB better with the
gray prior: the colour-difference channels are much smoother than the gray images the prior was trained on, so
it removes too little of their noise, which costs more than the quieter intensity channel gains. ``"rgb"`` is
therefore the default.
"""

from __future__ import annotations

import numpy as np

from .choices import COLOUR_SPACES

OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])


def noise_gains(space: str) -> np.ndarray:
    """Noise level of each transformed channel per unit of RGB noise level, ``(3,)``."""
    return np.linalg.norm(OPPONENT, axis=1) if space == "opponent" else np.ones(3)


def to_channels(rgb: np.ndarray, space: str) -> np.ndarray:
    """``(H, W, 3)`` RGB to the channels of ``space`` (``"opponent"`` or ``"rgb"``)."""
    if space not in COLOUR_SPACES:
        raise ValueError(f"unknown colour space '{space}' (choose from {', '.join(COLOUR_SPACES)})")
    return rgb @ OPPONENT.T if space == "opponent" else rgb


def from_channels(channels: np.ndarray, space: str) -> np.ndarray:
    """Inverse of :func:`to_channels`: rows orthogonal, so ``A^-1 = A^T diag(1 / |a_k|^2)``."""
    if space == "rgb":
        return channels
    return channels @ (OPPONENT.T / np.sum(OPPONENT**2, axis=1)).T


def from_channel_variances(variances: np.ndarray, space: str) -> np.ndarray:
    """Variances ``(..., 3)`` of R, G, B from those of independent channels of ``space`` (the squares of
    :func:`from_channels`' matrix)."""
    if space == "rgb":
        return variances
    return variances @ ((OPPONENT.T / np.sum(OPPONENT**2, axis=1)).T ** 2)


def channel_noise_levels(rgb_levels: np.ndarray, space: str) -> np.ndarray:
    """Noise levels ``(..., 3)`` of the channels of ``space`` for independent noise of levels ``rgb_levels``
    ``(..., 3)`` in R, G and B: ``sqrt(sum_c a_kc^2 sigma_c^2)`` (the rows' own gains when all three are equal)."""
    if space == "rgb":
        return rgb_levels
    return np.sqrt(rgb_levels**2 @ (OPPONENT**2).T)
