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

from .model import PatchGMDM, image_patch_scores, image_responses, patch_average, time_from_sigma
from .tables import ExpertTable


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` or ``(N, 1, H, W)`` as ``(N, 1, H, W)``."""
    if image.dim() == 2:
        return image[None, None]
    if image.dim() == 4 and image.shape[1] == 1:
        return image
    raise ValueError(f"expected an (H, W) or (N, 1, H, W) image tensor, got shape {tuple(image.shape)}")


BOUNDARIES = ("valid", "reflect")


def ebpa(model: PatchGMDM, noisy: torch.Tensor, sigma, boundary: str = "valid", exact: bool = False) -> torch.Tensor:
    """EB-PA estimate of ``noisy`` (``(H, W)`` or ``(N, 1, H, W)``, [0, 1] scale) at noise level
    ``sigma`` (same scale): a number, or, with ``boundary="valid"``, one value per patch
    ``(N, 1, H-b+1, W-b+1)``.

    ``boundary="valid"`` uses the patches inside the image only (the paper's setting: pixels
    near the border are covered by fewer patches); ``"reflect"`` mirrors the image by ``b - 1``
    pixels first, so every pixel is covered by ``b^2`` patches, and crops the result.
    Returns a tensor shaped like ``noisy``; not clipped.
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary '{boundary}' (choose from {', '.join(BOUNDARIES)})")
    batch = _as_batch(noisy)
    b = model.patch_size
    height, width = batch.shape[-2:]
    if min(height, width) < b:
        raise ValueError(f"image of {width}x{height} pixels is smaller than the "
                         f"{b}x{b} patches of the model")
    sigma = torch.as_tensor(sigma, dtype=batch.dtype, device=batch.device)
    if boundary == "reflect":
        if sigma.dim() > 0:
            raise ValueError("boundary 'reflect' takes a single sigma, not a per-patch map")
        pad = min(b - 1, height - 1, width - 1)  # reflection needs pad < size
        padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
        estimate = ebpa(model, padded, sigma, exact=exact)[..., pad:pad + height, pad:pad + width]
        return estimate.reshape(noisy.shape)
    t = time_from_sigma(sigma)
    if exact or sigma.dim() > 0:
        scores = image_patch_scores(model, batch, t)  # (N, J, H-b+1, W-b+1)
    else:
        scores = ExpertTable(model, float(t)).score(image_responses(model, batch))
    estimate = batch + patch_average(model, sigma**2 * scores)
    return estimate.view_as(noisy)


METHODS = ("ebpa",)


def psnr(estimate, clean) -> float:
    """PSNR in dB of ``estimate`` clipped to [0, 1] against ``clean`` (the project's protocol)."""
    import numpy as np

    return float(10 * np.log10(1 / np.mean((np.clip(estimate, 0, 1) - clean) ** 2)))


def denoise_array(model: PatchGMDM, image, sigma: float, method: str = "ebpa", boundary: str = "valid"):
    """Denoise a numpy image on the [0, 1] scale at noise level ``sigma`` (same scale).

    Gray ``(H, W)`` images are denoised directly; colour ``(H, W, 3|4)`` images channel by
    channel with the gray prior, alpha passed through. Runs on the model's device, returns
    float64 numpy, unclipped.
    """
    import numpy as np

    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    device, dtype = model.filters.device, model.filters.dtype
    channels = image[..., None] if image.ndim == 2 else image
    colour = channels.shape[-1] if channels.shape[-1] != 4 else 3
    stack = torch.as_tensor(np.moveaxis(channels[..., :colour], -1, 0)[:, None], dtype=dtype, device=device)
    with torch.no_grad():
        result = ebpa(model, stack, sigma, boundary)
    output = np.array(channels, dtype=np.float64)
    output[..., :colour] = np.moveaxis(result[:, 0].double().cpu().numpy(), 0, -1)
    return output[..., 0] if image.ndim == 2 else output
