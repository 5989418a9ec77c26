"""Sampling from a patch GMDM: exact patch draws (Sec. 4.2) and whole-image annealed Langevin.

Corollary 2.1: the responses ``Z_j = <k_j, Y_t>`` are independent with densities ``psi_j(., t)``,
so a patch of ``Y_t`` is drawn exactly as ``p = sum_j k_j z_j / ||k_j||^2 + DC`` with ``z_j`` from
the 1-D mixture ``psi_j(., t)``. The model leaves the patch mean (DC) unmodelled: it is set to
``dc`` plus the DC part of the diffusion noise, ``sqrt(2t) n / b`` on every pixel.

Whole images (an extension beyond the paper): annealed Langevin dynamics (Song & Ermon 2019) on
the patch-averaged score ``s(x, t) = (1/C) sum_i P_i^T grad log f(P_i x, t)``, over a geometric
schedule of noise levels ``sigma_1 > ... > sigma_T`` (``t = sigma^2 / 2``), ``steps`` updates per
level with step size ``eps = delta sigma^2``:

    x <- x + eps s(x, t) + sqrt(2 eps) xi,      xi ~ N(0, Id),

followed by one Tweedie step at the last level (the denoised end point).
"""

from __future__ import annotations

import math

import torch

from .kinds import GMDM
from .model import PatchGMDM, time_from_sigma


def sample_patches(model: PatchGMDM, count: int, sigma: float, generator: torch.Generator | None = None,
                   dc: float = 0.5) -> torch.Tensor:
    """``count`` exact draws of ``Y_t`` patches (Corollary 2.1) at noise level ``sigma`` (0-1
    scale), ``(count, b, b)``, in the model's dtype and device."""
    filters = model.filters.detach()
    device, dtype = filters.device, filters.dtype
    t = time_from_sigma(sigma)
    weights = torch.softmax(model.logits.detach(), dim=1)  # (J, L)
    components = torch.multinomial(weights, count, replacement=True, generator=generator)  # (J, count)
    std = model.expert_variances(t).detach().sqrt()  # (J,)
    noise = torch.randn(components.shape, generator=generator, device=device, dtype=dtype)
    responses = model.means[components] + std[:, None] * noise  # z_j ~ psi_j(., t): (J, count)
    norms2 = filters.pow(2).sum(1, keepdim=True)
    patches = responses.T @ (filters / norms2)  # (count, a)
    dc_noise = math.sqrt(2 * t) / model.patch_size * torch.randn(count, 1, generator=generator, device=device,
                                                                   dtype=dtype)
    b = model.patch_size
    return (patches + dc + dc_noise).view(count, b, b)


def patch_covariance(model: PatchGMDM, sigma: float) -> torch.Tensor:
    """The covariance of ``Y_t`` patches under the model, ``(a, a)``:
    ``sum_j Var(z_j) k_j k_j^T / ||k_j||^4 + 2t u u^T`` with ``u`` the unit DC vector."""
    filters = model.filters.detach()
    t = time_from_sigma(sigma)
    weights = torch.softmax(model.logits.detach(), dim=1)
    mean = weights @ model.means
    variance = weights @ model.means**2 - mean**2 + model.expert_variances(t).detach()  # (J,)
    norms2 = filters.pow(2).sum(1)
    scaled = filters * (variance.sqrt() / norms2)[:, None]
    dc = torch.full((filters.shape[1], 1), 1 / model.patch_size, dtype=filters.dtype, device=filters.device)
    return scaled.T @ scaled + 2 * t * dc @ dc.T


def langevin_schedule(sigma_start: float = 0.4, sigma_end: float = 0.01, levels: int = 30) -> list[float]:
    """Geometric, strictly decreasing noise levels from ``sigma_start`` to ``sigma_end`` (0-1 scale)."""
    ratio = (sigma_end / sigma_start) ** (1 / max(levels - 1, 1))
    return [sigma_start * ratio**i for i in range(levels)]


def sample_image(model: GMDM, height: int, width: int, count: int = 1,
                 generator: torch.Generator | None = None, schedule: list[float] | None = None,
                 steps: int = 20, delta: float = 0.2, progress=None) -> torch.Tensor:
    """Whole images ``(count, 1, height, width)`` by annealed Langevin dynamics (module docstring), with any kind
    of model (its whole-image score, :meth:`~gmdm_cli.kinds.GMDM.tweedie_correction`).

    Starts from mid-gray plus noise of the first level; returns the Tweedie estimate at the last.
    ``progress``: called with no arguments after every level of the schedule.
    """
    schedule = schedule or langevin_schedule()
    shape = (count, 1, height, width)
    x = 0.5 + schedule[0] * torch.randn(shape, generator=generator, device=model.logits.device,
                                        dtype=model.logits.dtype)

    def averaged_score(images, sigma):
        return model.tweedie_correction(images, time_from_sigma(sigma)) / sigma**2

    with torch.no_grad():
        for sigma in schedule:
            step = delta * sigma**2
            for _ in range(steps):
                noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + step * averaged_score(x, sigma) + math.sqrt(2 * step) * noise
            if progress is not None:
                progress()
        return x + schedule[-1] ** 2 * averaged_score(x, schedule[-1])


IMAGE_BYTES_PER_PIXEL = 3072
IMAGE_BYTES_FIXED = 2**30
"""Memory of :func:`sample_image`: an upper envelope of its peak resident memory (7x7 model, CPU, 2 threads)
measured for 256x256 x 1 and 8 images (0.78, 2.21 GiB), 512x512 x 1, 2 and 4 (1.58, 2.25, 2.28 GiB) and 1024x1024
x 1 (1.48 GiB): 1 GiB and 3 KiB per pixel of every image. Peaks do not grow in proportion (tiles bound the
responses; the allocator keeps memory per thread), so it over-estimates large images."""


def sample_memory(count: int, height: int, width: int) -> int:
    """Bytes :func:`sample_image` needs for ``count`` images of ``height x width`` (about)."""
    return IMAGE_BYTES_PER_PIXEL * count * height * width + IMAGE_BYTES_FIXED


def patch_draws(model: PatchGMDM, count: int, sigmas, generator: torch.Generator | None = None):
    """``count`` exact patch draws at each noise level of ``sigmas`` (0-1 scale) as numpy: ``(N, b, b)`` for one
    level, ``(levels, N, b, b)`` for several; and their picture, one grid block per level (every patch stretched
    to [0, 1], Fig. 2), enlarged to about 512 pixels."""
    import numpy as np

    from .diagnostics import patch_grid

    draws = np.stack([sample_patches(model, count, sigma, generator).double().cpu().numpy() for sigma in sigmas])
    columns = int(np.ceil(np.sqrt(count)))
    picture = np.concatenate([np.pad(patch_grid(block, columns), ((0, 2), (0, 0)), constant_values=1)
                              for block in draws])[:-2]
    return (draws[0] if len(sigmas) == 1 else draws), _enlarged(picture)


def image_strip(images):
    """Images ``(N, H, W)`` side by side, 2 white pixels apart, clipped to [0, 1] and enlarged to about 512
    pixels: the picture of :func:`sample_image`'s draws."""
    import numpy as np

    picture = np.concatenate([np.pad(image, ((0, 0), (0, 2)), constant_values=1) for image in images], axis=1)
    return _enlarged(np.clip(picture[:, :-2], 0, 1))


def _enlarged(picture):
    """Small pictures enlarged (nearest neighbour) to about 512 pixels for viewing."""
    import numpy as np

    zoom = max(1, 512 // max(picture.shape))
    return np.kron(picture, np.ones((zoom, zoom)))
