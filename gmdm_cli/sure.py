"""EB-PA's level chosen by Stein's unbiased risk estimate (SURE; Stein 1981), from the image itself.

EB-PA at level ``lam`` is ``D(y) = y + c(y)``, ``c = (1/C) sum_i P_i^T lam^2 sum_j k_j s_ij`` with the experts'
scores ``s_ij = d/dz log psi_j(k_j^T P_i y, lam^2 / 2)`` (Eq. 3 averaged over the patches). For noise of level
``sigma`` (variance ``v = sigma^2``) over ``N`` pixels, SURE is an unbiased estimate of its squared error that needs
no clean image:

    E ||D(y) - x||^2 = E [ ||c(y)||^2 - N v + 2 v div D(y) ],

and the divergence is exact here: the Jacobian of a patch's correction is ``lam^2 sum_j k_j k_j^T h_ij`` (Tweedie's
second-order identity, the experts' curvatures ``h_ij`` of Corollary 2.1), so ``div D = N + lam^2 sum_p (1/C_p)
sum_{i covering p} sum_j k_j[p - i]^2 h_ij = N + lam^2 sum_i sum_j h_ij w_ij``, the weights ``w`` the squared
filters correlated with ``1 / C``.

The level of least SURE is not always ``sigma``: the prior fits some images better than others, and the level
that denoises an image best lies 0.75-1.5 times sigma (a textured image wants less, a smooth one more). SURE
finds it: at the true sigma it picked the best level of a 0.8-1.25 grid on all of 12 BSDS400 training images at
sigma 5, and on BSD68 EB-PA 7x7 at SURE's level gains +0.20 / +0.23 / +0.20 dB over EB-PA at sigma = 15 / 25 /
50 (``benchmarks/table1.py --sure``, ``benchmarks/results/ebpa-7x7-sure.md``). Blind denoising uses it where one
level is chosen (:func:`gmdm_cli.denoise` ``sure``): with an estimated ``sigma`` the level still follows the
image, so the estimate's error costs little (``benchmarks/results/blind.md``). SURE trusts the noise level it is
given: one level's SURE on noise that varies loses up to 1.2 dB. The risk is measured on :func:`crops` (one
32 x 32 crop per 16 crops' area, spread over the image: at 481 x 321, 9 crops, about 0.3 EB-PA passes; on 24
BSDS400 images with the blind estimate at sigma 25, +0.248 dB over denoising at sigma against +0.235 for four
64 x 64 crops, 1/8 of the image, and +0.251 for eight, 1/4: spread counts more than area; but at least nine: on
128 x 128 crops of 20 BSDS400 images with four, single images lost up to 1.4 dB at sigma 15-25, with nine up to
0.41, +0.38 to +0.44 dB on average at sigma 5-25; a search range of 1.4x, 1.6x or 2x either way within 0.006 dB
on 20 whole images), at every second level of the fixed ladder
(:data:`~gmdm_cli.denoisers.LADDER_LEVELS`, whose tables are kept between images) around ``sigma``, 15 % apart,
and the least is refined by a parabola in ``log lam``. Clipped 8-bit files break its Gaussian noise (on average
it still gains, but at sigma 50 single images lose up to 0.9 dB; counting only the unclipped pixels was worse)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .denoisers import LADDER_LEVELS
from .model import PatchGMDM, image_responses, image_shape, patch_counts, patch_sum, time_from_sigma
from .tables import expert_table

SURE_CROP = 32  # side of the crops the risk is measured on
SURE_CROPS = 64  # at most this many crops
SURE_FEWEST = 9  # at least this many (or every crop of a small image): ~9000 pixels
SURE_SHARE = 16  # about one crop per this many crops' area of the image
SURE_RANGE = 1.6  # the level searched within this factor of sigma either way
SURE_STEP = 2  # ladder levels between the levels whose risk is measured (15 %)


def crops(image: torch.Tensor) -> torch.Tensor:
    """``(n, 1, side, side)`` crops (``side`` :data:`SURE_CROP`) of a gray image ``(H, W)`` spread over it: about
    one per :data:`SURE_SHARE` crops' area, at least :data:`SURE_FEWEST` (or all of a small image's), at most
    :data:`SURE_CROPS`; in rows evenly apart and columns by the golden ratio (not all in one column). The whole
    image ``(1, 1, H, W)`` when it is smaller than a crop either way."""
    side = SURE_CROP
    height, width = image.shape
    if height < side or width < side:
        return image[None, None]
    rows, columns = height // side, width // side
    count = max(min(rows * columns, SURE_FEWEST), min(SURE_CROPS, round(rows * columns / SURE_SHARE)))
    cells = dict.fromkeys((int((k + 0.5) * rows / count), int(((0.5 + k * 0.6180339887) % 1) * columns))
                          for k in range(count))  # (row, column), in order, each once
    top, left = (height - rows * side) // 2, (width - columns * side) // 2
    return torch.stack([image[top + row * side:top + (row + 1) * side, left + column * side:left + (column + 1) * side]
                        for row, column in cells])[:, None]


def risk_terms(model: PatchGMDM, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What :func:`stein_risks` reads at every level, computed once for ``images`` ``(N, 1, H, W)``: the responses,
    the counts ``C`` and the divergence's weights ``w_ij = sum_o k_j[o]^2 / C_(i+o)`` (the squared filters correlated
    with ``1 / C``, ``(1, J, h, w)``)."""
    counts = patch_counts(model, images)
    return image_responses(model, images), counts, F.conv2d(1 / counts, model.kernels().detach() ** 2)


def stein_risks(model: PatchGMDM, images: torch.Tensor, sigma: float, levels, terms=None) -> list[float]:
    """SURE of EB-PA (``boundary="valid"``) at each of ``levels`` of ``images`` ``(N, 1, H, W)`` with noise of
    level ``sigma``, less the terms that do not depend on the level (``2 v N - N v``): ``||c||^2 + 2 v sum_p
    (div D - 1)``, summed over the images. The divergence's sum is ``lam^2 sum_i sum_j h_ij w_ij``
    (:func:`risk_terms`; ``terms``: those of ``images`` when already computed); the corrections of all levels are
    put back in place in one batch."""
    responses, counts, weights = risk_terms(model, images) if terms is None else terms
    scores, divergences = [], []
    for level in levels:
        score, curvature = expert_table(model, float(time_from_sigma(level))).score_and_curvature(responses)
        scores.append(score.mul_(level**2))
        divergences.append(level**2 * float((curvature * weights).sum()))
    corrections = patch_sum(model, torch.cat(scores)).div_(counts).view(len(levels), -1)
    return [float(c.square().sum()) + 2 * sigma**2 * d for c, d in zip(corrections, divergences)]


def applies(model, method: str, colour: str) -> bool:
    """Whether SURE can choose the level: EB-PA of a patch model, in R, G, B."""
    return method == "ebpa" and isinstance(model, PatchGMDM) and colour == "rgb"


def sure_level(model: PatchGMDM, image: torch.Tensor, sigma: float) -> float:
    """The EB-PA level of the least SURE for a gray image ``(H, W)`` (a tensor) with noise of level ``sigma``
    (a number, [0, 1] scale): the risks on its :func:`crops` at every :data:`SURE_STEP`-th of the
    :data:`~gmdm_cli.denoisers.LADDER_LEVELS` around ``sigma`` (15 % apart: the nearest and one either side to start,
    one more at a time while the least is at an end, within :data:`SURE_RANGE`), the least refined by the parabola
    in ``log lam`` through it and its two neighbours. Every second rung instead of every one: 3.7-4.2 levels
    measured per image instead of 4.5-5.3, and EB-PA at the level found within -0.001 to +0.002 dB on average
    (20 BSDS400 images at sigma 5 / 15 / 25 / 50, worst image -0.004; every third rung: -0.003 / +0.002, worst
    -0.014)."""
    b = model.patch_size
    image_shape(image.shape, b, f"the {b}x{b} patches of the model")
    ladder = LADDER_LEVELS.tolist()
    low, high = sigma / SURE_RANGE, sigma * SURE_RANGE
    usable = [k for k, level in enumerate(ladder) if low <= level <= high]
    if len(usable) < 3:  # beyond the ladder's ends
        return sigma
    nearest = min(usable, key=lambda k: abs(math.log(ladder[k] / sigma)))
    step = SURE_STEP
    start = [k for k in (nearest - step, nearest, nearest + step) if k in usable]
    with torch.no_grad():
        images = crops(image.to(model.filters.dtype).to(model.filters.device))
        terms = risk_terms(model, images)
        risks = dict(zip(start, stein_risks(model, images, sigma, [ladder[k] for k in start], terms)))
        while True:
            best = min(risks, key=risks.get)
            move = -step if best == min(risks) else step if best == max(risks) else 0
            if move == 0 or best + move not in usable:
                break
            risks[best + move] = stein_risks(model, images, sigma, [ladder[best + move]], terms)[0]
    if best - step not in risks or best + step not in risks:  # the least at the range's end
        return ladder[best]
    x = [math.log(ladder[k]) for k in (best - step, best, best + step)]
    y = [risks[k] for k in (best - step, best, best + step)]
    # the vertex of the parabola through three equally spaced points
    curvature = y[0] - 2 * y[1] + y[2]
    offset = 0.5 * (y[0] - y[2]) / curvature if curvature > 0 else 0.0
    return math.exp(x[1] + max(-1.0, min(1.0, offset)) * (x[2] - x[1]))


def sure_levels(model, image, sigma, method: str = "ebpa", colour: str = "rgb"):
    """``sigma`` (as :func:`~gmdm_cli.denoisers.denoise_array` takes it, [0, 1] scale) with the single level of
    every channel of a numpy image replaced by :func:`sure_level` of that channel: a number for a gray image with
    one level; else a map ``(H, W, 3)`` (read-only where every channel has one level) whose channels each hold one
    level, or the channel's own map where it varies (left as it is). EB-PA of a patch model in R, G, B only: else a
    ``ValueError``."""
    from .denoisers import channel_inputs, channel_maps
    from .image_io import split_alpha

    if not applies(model, method, colour):
        raise ValueError("SURE chooses the level of EB-PA with a patch model, in R, G, B")
    channels, levels, gray, _ = channel_inputs(model, image, sigma, colour)
    chosen = [sure_level(model, channel, level) if isinstance(level, float) else level
              for channel, level in zip(channels, levels)]
    if gray:
        return chosen[0] if isinstance(chosen[0], float) else sigma
    colours = split_alpha(np.asarray(image))[0]
    shape = colours.shape[:2]
    if all(isinstance(level, float) for level in chosen):
        return np.broadcast_to(np.array(chosen), (*shape, 3))
    maps = channel_maps(np.asarray(sigma, dtype=np.float64), colours, colour)
    return np.stack([np.broadcast_to(np.float64(level), shape) if isinstance(level, float) else maps[..., k]
                     for k, level in enumerate(chosen)], -1)
