"""Denoising with a patch GMDM: empirical-Bayes patch averaging (EB-PA, Sec. 4.3).

EB-PA applies Tweedie's formula (Eq. 3) to every overlapping ``b x b`` patch (stride 1) and
averages the patch estimates at each pixel. Since the score is linear in the filters this is

    x = y + sigma^2 * conv_transpose2d(dlog psi(conv2d(y, K), t), K) / C,    t = sigma^2 / 2,

with ``C`` the number of patches covering each pixel; the patch matrix is never formed.
The patch means are left unchanged (the filters are zero-mean), as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import PatchGMDM, image_patch_scores, image_responses, patch_average, patch_counts, time_from_sigma
from .tables import ExpertTable


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` or ``(N, 1, H, W)`` as ``(N, 1, H, W)``."""
    if image.dim() == 2:
        return image[None, None]
    if image.dim() == 4 and image.shape[1] == 1:
        return image
    raise ValueError(f"expected an (H, W) or (N, 1, H, W) image tensor, got shape {tuple(image.shape)}")


BOUNDARIES = ("valid", "reflect")


def _prepare(model: PatchGMDM, noisy: torch.Tensor, sigma, boundary: str):
    """Validate; return the ``(N, 1, H, W)`` batch (mirrored by ``b - 1`` for ``"reflect"``), sigma as a
    tensor, and the crop that undoes the padding."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary '{boundary}' (choose from {', '.join(BOUNDARIES)})")
    batch = _as_batch(noisy)
    b = model.patch_size
    height, width = batch.shape[-2:]
    if min(height, width) < b:
        raise ValueError(f"image of {width}x{height} pixels is smaller than the "
                         f"{b}x{b} patches of the model")
    sigma = torch.as_tensor(sigma, dtype=batch.dtype, device=batch.device)
    if boundary == "valid":
        return batch, sigma, (slice(None), slice(None))
    if sigma.dim() > 0:
        raise ValueError("boundary 'reflect' takes a single sigma, not a per-patch map")
    pad = min(b - 1, height - 1, width - 1)  # reflection needs pad < size
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    return padded, sigma, (slice(pad, pad + height), slice(pad, pad + width))


def _patch_scores(model: PatchGMDM, batch: torch.Tensor, t: torch.Tensor, exact: bool) -> torch.Tensor:
    """Expert scores of every patch, ``(N, J, H-b+1, W-b+1)``: tabulated for one ``t`` unless ``exact``;
    per-patch times always use the exact mixtures."""
    if exact or t.dim() > 0:
        return image_patch_scores(model, batch, t)
    return ExpertTable(model, float(t)).score(image_responses(model, batch))


def ebpa(model: PatchGMDM, noisy: torch.Tensor, sigma, boundary: str = "valid", exact: bool = False) -> torch.Tensor:
    """EB-PA estimate of ``noisy`` (``(H, W)`` or ``(N, 1, H, W)``, [0, 1] scale) at noise level
    ``sigma`` (same scale): a number, or, with ``boundary="valid"``, one value per patch
    ``(N, 1, H-b+1, W-b+1)``.

    ``boundary="valid"`` uses the patches inside the image only (the paper's setting: pixels
    near the border are covered by fewer patches); ``"reflect"`` mirrors the image by ``b - 1``
    pixels first, so every pixel is covered by ``b^2`` patches, and crops the result.
    With a single ``sigma`` the experts are evaluated through an :class:`ExpertTable` (interpolated,
    relative error ~1e-4) unless ``exact``; per-patch maps always use the exact mixtures.
    Returns a tensor shaped like ``noisy``; not clipped.
    """
    batch, sigma, (rows, columns) = _prepare(model, noisy, sigma, boundary)
    scores = _patch_scores(model, batch, time_from_sigma(sigma), exact)
    estimate = batch + patch_average(model, sigma**2 * scores)
    return estimate[..., rows, columns].reshape(noisy.shape)


def hqs_schedule(sigma: float, iterations: int = 6, start: float = 0.5, end: float = 1 / 128) -> list[float]:
    """Diffusion times of HQS: geometric from ``start * sigma^2 / 2`` down to ``end * sigma^2 / 2``
    (``beta = 1 / (2t)`` grows from ``start^-1 / sigma^2`` to ``end^-1 / sigma^2``), strictly decreasing."""
    t = time_from_sigma(sigma)
    if iterations == 1:
        return [start * t]
    ratio = (end / start) ** (1 / (iterations - 1))
    return [start * t * ratio**k for k in range(iterations)]


def hqs(model: PatchGMDM, noisy: torch.Tensor, sigma: float, schedule: list[float] | None = None,
        data_weight: float | None = None, boundary: str = "valid", exact: bool = False) -> torch.Tensor:
    """Half-quadratic splitting (Zoran & Weiss; Sec. 4.3): minimise
    ``(lambda/2)||x - y||^2 - sum_i log f(P_i x, t)`` by alternating, for each ``t`` of ``schedule``,

    * ``z_i = P_i x + 2t grad log f(P_i x, t)`` (one Tweedie step on every patch),
    * ``x = (lambda y + beta sum_i P_i^T z_i) / (lambda + beta C)``, ``beta = 1 / (2t)``,
      ``lambda = data_weight / sigma^2``.

    Since ``beta 2t = 1`` the pixel update is ``(lambda y + beta C x + C s(x)) / (lambda + beta C)`` with
    ``s`` the patch-averaged score. Default schedule: :func:`hqs_schedule`. The prior sums over all
    overlapping patches, so it counts every pixel about ``b^2`` times; ``data_weight`` rebalances the
    data term (EPLL uses ``lambda = N / sigma^2``, N pixels per patch). With ``data_weight = 1`` the prior
    dominates and HQS over-smooths (it then loses to EB-PA). The defaults (6 steps from
    ``0.5 sigma^2 / 2`` to ``sigma^2 / 256``, data weight 16) are provisional: the best of a small grid on
    crops of 5 training images at sigma 25; ``benchmarks/tune_hqs.py`` runs the full search.
    """
    batch, sigma_tensor, (rows, columns) = _prepare(model, noisy, sigma, boundary)
    if sigma_tensor.dim() > 0:
        raise ValueError("HQS takes a single sigma")
    schedule = hqs_schedule(float(sigma)) if schedule is None else schedule
    weight = (16.0 if data_weight is None else data_weight) / float(sigma) ** 2  # lambda
    counts = patch_counts(model, batch)
    x = batch
    for t in schedule:
        beta = 1 / (2 * t)
        score = patch_average(model, _patch_scores(model, x, torch.as_tensor(t, dtype=x.dtype), exact))
        x = (weight * batch + counts * (beta * x + score)) / (weight + beta * counts)
    return x[..., rows, columns].reshape(noisy.shape)


METHODS = ("ebpa", "hqs")


def psnr(estimate, clean) -> float:
    """PSNR in dB of ``estimate`` clipped to [0, 1] against ``clean`` (the project's protocol)."""
    import numpy as np

    return float(10 * np.log10(1 / np.mean((np.clip(estimate, 0, 1) - clean) ** 2)))


def denoise_array(model: PatchGMDM, image, sigma, method: str = "ebpa", boundary: str = "valid"):
    """Denoise a numpy image on the [0, 1] scale at noise level ``sigma`` (same scale).

    ``sigma`` is a number, or a per-pixel map ``(H, W)`` (heteroscedastic noise; EB-PA with every
    patch at the level of its centre pixel, ``boundary="valid"``). Gray ``(H, W)`` images are
    denoised directly; colour ``(H, W, 3|4)`` images channel by channel with the gray prior, alpha
    passed through. Runs on the model's device, returns float64 numpy, unclipped.
    """
    import numpy as np

    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    device, dtype = model.filters.device, model.filters.dtype
    channels = image[..., None] if image.ndim == 2 else image
    colour = channels.shape[-1] if channels.shape[-1] != 4 else 3
    stack = torch.as_tensor(np.moveaxis(channels[..., :colour], -1, 0)[:, None], dtype=dtype, device=device)
    with torch.no_grad():
        if np.ndim(sigma) == 2:
            if method != "ebpa" or boundary != "valid":
                raise ValueError("a per-pixel noise map works with method 'ebpa' and boundary 'valid'")
            if np.shape(sigma) != image.shape[:2]:
                raise ValueError(f"noise map of shape {np.shape(sigma)} does not match the image {image.shape[:2]}")
            b, half = model.patch_size, model.patch_size // 2
            rows, columns = image.shape[0] - b + 1, image.shape[1] - b + 1
            centres = np.asarray(sigma)[half:half + rows, half:half + columns]
            result = ebpa(model, stack, torch.as_tensor(centres, dtype=dtype, device=device)[None, None])
        elif method == "ebpa":
            result = ebpa(model, stack, sigma, boundary)
        else:
            result = hqs(model, stack, sigma, boundary=boundary)
    output = np.array(channels, dtype=np.float64)
    output[..., :colour] = np.moveaxis(result[:, 0].double().cpu().numpy(), 0, -1)
    return output[..., 0] if image.ndim == 2 else output
