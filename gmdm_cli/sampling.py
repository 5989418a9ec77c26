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

Posterior samples of a noisy image (:func:`posterior_samples`) run the same dynamics on the posterior of the
less noisy image ``x_tau`` given ``y = x + sigma n``, ``p(x_tau | y) ~ f(x_tau, tau^2/2) N(y; x_tau, (sigma^2 -
tau^2) Id)`` (``y`` is ``x_tau`` with independent noise of variance ``sigma^2 - tau^2`` added), annealed from
``tau = sigma`` down to a small ``tau``.
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


SAMPLE_LEVELS, SAMPLE_STEPS, SAMPLE_DELTA, SAMPLE_END = 12, 3, 0.5, 0.05  # tuned on BSDS400 crops (benchmarks/uncertainty.py)


def posterior_samples(model: GMDM, noisy: torch.Tensor, sigma, count: int, seed: int = 0,
                      levels: int = SAMPLE_LEVELS, steps: int = SAMPLE_STEPS, delta: float = SAMPLE_DELTA,
                      end: float = SAMPLE_END, progress=None) -> torch.Tensor:
    """``count`` samples ``(count, H, W)`` of the posterior ``p(x | y)`` of one gray channel ``y`` ``(H, W)`` with
    Gaussian noise of level ``sigma`` (a number; with a patch model also a per-pixel map ``(H, W)``), by annealed
    Langevin dynamics on ``p(x_tau | y)`` (module docstring), with the patch-averaged score as the prior's.

    The levels are ``tau_k = r_k sigma``, ``r_k = end^(k/levels)`` for ``k = 1..levels``, each with ``steps`` updates
    of step size ``eps = delta r^2 (1 - r^2) sigma^2`` (``delta`` times the harmonic mean of the prior's scale
    ``tau^2`` and the likelihood's ``sigma^2 - tau^2``), which makes the update

        ``x <- x + delta [(1 - r^2) c(x, tau) + r^2 (y - x)] + sqrt(2 eps) xi``,

    ``c(x, tau) = tau^2 s(x, tau^2 / 2)`` the patch-averaged Tweedie correction; with a map, every patch at the level
    of its centre pixel (as EB-PA) and the likelihood and noise pixel by pixel. Starts at ``y`` (a draw of
    ``x_sigma``) and ends with one Tweedie step at the last level. Sample ``k`` is drawn from the generator seeded
    ``seed`` + ``k``, so it does not depend on ``count``. ``progress``: called with no arguments after every level
    of every sample. Their mean tends to the posterior mean as ``count`` grows (its squared error exceeds that
    of the posterior mean by the average posterior variance over ``count``); their spread is the posterior std.
    """
    from .denoisers import _patch_levels

    device, dtype = model.logits.device, model.logits.dtype
    y = noisy.to(device, dtype)
    level = torch.as_tensor(sigma, dtype=dtype, device=device)
    if level.dim() > 0 and model.kind != "patch":
        raise ValueError(f"posterior samples with a noise map need a patch model, not a {model.kind} model")
    patch_level = level if level.dim() == 0 else _patch_levels(model, y, level)
    ratios = [end ** (k / levels) for k in range(1, levels + 1)]
    samples = []
    with torch.no_grad():
        for k in range(count):
            generator = torch.Generator(device=device).manual_seed(seed + k)
            x = y[None, None].clone()
            for r in ratios:
                t = time_from_sigma(r * patch_level)
                noise_scale = math.sqrt(2 * delta * r**2 * (1 - r**2)) * level
                for _ in range(steps):
                    drift = (1 - r**2) * model.tweedie_correction(x, t) + r**2 * (y - x)
                    x = x + delta * drift + noise_scale * torch.randn(x.shape, generator=generator, device=device,
                                                                      dtype=dtype)
                if progress is not None:
                    progress()
            samples.append((x + model.tweedie_correction(x, time_from_sigma(ratios[-1] * patch_level)))[0, 0])
    return torch.stack(samples)


def posterior_samples_array(model: GMDM, image, sigma, count: int, colour: str = "rgb", seed: int = 0,
                            progress=None):
    """:func:`posterior_samples` of a numpy image on the [0, 1] scale (gray ``(H, W)``, colour ``(H, W, 3|4)``) at
    noise levels ``sigma`` (a number or a map, as :func:`~gmdm_cli.denoisers.denoise_array` takes them): float64
    ``(count, H, W[, C])``, alpha passed through. Colour channels (those of ``colour``) are sampled independently,
    channel ``c`` from the seeds ``seed + c 2^32 + k``."""
    import numpy as np

    from .colour import from_channels
    from .denoisers import channel_inputs
    from .image_io import join_alpha

    channels, levels, gray, alpha = channel_inputs(model, image, sigma, colour)
    drawn = np.stack([posterior_samples(model, channel, level, count, seed + (c << 32), progress=progress)
                      .double().cpu().numpy() for c, (channel, level) in enumerate(zip(channels, levels))], -1)
    samples = drawn[..., 0] if gray else from_channels(drawn, colour)
    if not np.all(np.isfinite(samples)):
        raise ValueError("the samples are not finite (the image's values are too far outside [0, 1])")
    return np.stack([join_alpha(sample, alpha) for sample in samples])
