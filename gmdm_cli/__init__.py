"""gmdm: image denoising with Gaussian Mixture Diffusion Models (Zach et al., SSVM 2023).

The functions here are the library's front door, in the style of scikit-image: numpy arrays in,
numpy arrays out. Noise levels are on the image's own [0, 1] scale (the command line uses 0-255).
Heavy modules are imported on first use, so ``import gmdm_cli`` stays cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

__version__ = "0.1.0"
__all__ = ["load_model", "get_model", "denoise", "posterior_samples", "restore", "estimate_noise", "estimate_noise_model",
           "Denoised"]


def load_model(name="7x7", device="cpu"):
    """Load a built-in model (``"7x7"``, ``"15x15"``) or a checkpoint written by ``gmdm train``.

    Parameters
    ----------
    name : str or path
        Built-in model name or checkpoint path.
    device : str or torch.device
        Where the model's numerics run (``"cpu"``, ``"cuda"``).

    Returns
    -------
    model : gmdm_cli.kinds.GMDM
        A :class:`gmdm_cli.model.PatchGMDM` or :class:`gmdm_cli.band_model.BandGMDM`.
    """
    from .checkpoint import load_model as _load

    return _load(name, device=device)


def get_model(model="7x7", device="cpu"):
    """A model as it is, or a built-in name or checkpoint path loaded once per process, file version and device
    (its expert tables are kept with it): what :func:`denoise` and the other functions here use, and the command
    line too."""
    from .checkpoint import resolve_model_path
    from .kinds import is_model

    if is_model(model):
        return model
    path = resolve_model_path(model)
    return _loaded(str(path), path.stat().st_mtime_ns if path.is_file() else None, str(device))


@functools.lru_cache(maxsize=4)
def _loaded(path, stamp, device):
    return load_model(path, device)


@dataclass(frozen=True)
class Denoised:
    """What :func:`denoise` gives with ``return_noise=True``: the ``image``, the noise levels it was denoised at
    (``sigma``: a number or a per-pixel map, [0, 1] scale), blind, the noise models' ``estimates``, and with
    ``return_std`` the posterior ``std`` per pixel; with SURE the ``levels`` EB-PA ran at instead (as ``sigma``: a
    number, or a map whose channels each hold one level), else None."""

    image: object
    sigma: object
    estimates: list = field(default_factory=list)
    std: object = None
    levels: object = None


def denoise(image, sigma=None, method="ebpa", model="7x7", blind=False, boundary="valid", colour="rgb",
            tile=None, iterations=None, noise_model="auto", return_noise=False, return_std=False, sure=None):
    """Denoise an image corrupted by additive Gaussian noise.

    Parameters
    ----------
    image : ndarray
        Gray ``(H, W)`` or colour ``(H, W, 3|4)`` image, float values on the [0, 1] scale.
    sigma : float or ndarray, optional
        Noise standard deviation on the same [0, 1] scale (25/255 for "sigma 25"), or a per-pixel map
        ``(H, W)`` of it (colour: also ``(H, W, 3)``, one map per channel). Leave it out with ``blind=True``.
    method : {"ebpa", "hqs"}
        Empirical-Bayes patch averaging (Sec. 4.3 of the paper) or half-quadratic splitting.
    model : str, path or model
        Built-in model name, checkpoint path, or a loaded model.
    blind : bool
        Estimate the noise first (:func:`estimate_noise_model`) and denoise with the per-pixel levels of the
        noise model it chooses.
    boundary : {"valid", "reflect"}
        Patches inside the image only, or mirror the borders first.
    colour : {"rgb", "opponent"}
        Colour images: denoise R, G, B separately (default), or decorrelated opponent channels
        (:mod:`gmdm_cli.colour`; measured 0.2-0.5 dB worse with the gray prior, see the README).
    tile : int, optional
        Tile side for bounded memory (same result); None picks one, 0 works on the whole image at once.
    iterations : int, optional
        HQS only: steps of its schedule (:func:`gmdm_cli.denoisers.hqs_schedule`); default 6 for the patch
        models, 4 for the conv model (each tuned on training images).
    noise_model : {"auto", "constant", "nlf", "map"}
        With ``blind=True``: the noise model (:mod:`gmdm_cli.blind`); ``"auto"`` chooses the one that explains
        the image best: one level, a noise-level function of the intensity, or a spatial map.
    return_noise : bool
        Return a :class:`Denoised` with the noise levels used (and, blind, the estimates) instead of the image.
    return_std : bool
        EB-PA with a patch model: also return the posterior standard deviation of every pixel, ``(denoised,
        std)`` (same scale; ``(H, W, 3)`` for colour; :func:`gmdm_cli.denoisers.ebpa_std`). It is the model's
        uncertainty under its prior, calibrated on training images, not a guarantee.
    sure : bool, optional
        EB-PA with a patch model, in R, G, B: denoise every channel that has one noise level at the level of least
        Stein's unbiased risk estimate instead (:mod:`gmdm_cli.sure`: the prior fits some images better than
        others; +0.20 to +0.23 dB on BSD68 at sigma 15-50). It trusts the level given: not for noise that
        varies. None (default): with ``blind=True`` where it applies, else not.

    Returns
    -------
    denoised : ndarray
        Float64 array shaped like ``image``, not clipped; alpha passed through.

    Notes
    -----
    Every overlapping patch gets Tweedie's estimate ``p + sigma^2 grad log f(p, sigma^2/2)`` (Eq. 3)
    and the estimates are averaged at each pixel.

    Examples
    --------
    >>> import numpy as np, gmdm_cli
    >>> from skimage import data
    >>> clean = data.camera()[:128, :128] / 255.0
    >>> noisy = clean + 25 / 255 * np.random.default_rng(0).standard_normal(clean.shape)
    >>> denoised = gmdm_cli.denoise(noisy, sigma=25 / 255)
    >>> bool(np.mean((denoised - clean) ** 2) < np.mean((noisy - clean) ** 2) / 3)
    True
    """
    import numpy as np

    from .denoisers import denoise_array

    if (sigma is None) != bool(blind):
        raise ValueError("give sigma, or blind=True (not both)")
    model = get_model(model)
    image = np.asarray(image, dtype=np.float64)
    estimates = []
    if blind:
        from .blind import blind_levels

        sigma, estimates = blind_levels(model, image, noise_model)
    elif np.ndim(sigma) == 0:
        sigma = float(sigma)
    from .sure import applies, sure_levels

    if sure is None:
        sure = blind and applies(model, method, colour)
    levels = sure_levels(model, image, sigma, method, colour) if sure else None
    result = denoise_array(model, image, sigma if levels is None else levels, method, boundary, tile, colour,
                           iterations, return_std)
    result, std = result if return_std else (result, None)
    if return_noise:
        return Denoised(result, sigma, estimates, std, levels)
    return (result, std) if return_std else result


def posterior_samples(image, count=8, sigma=None, model="7x7", blind=False, colour="rgb", seed=0,
                      noise_model="auto", progress=None):
    """Draw images from the posterior ``p(x | image)`` of the clean image given the noisy one.

    Annealed Langevin dynamics on the posterior of ever less noisy versions of the image, with the model's
    patch-averaged score as the prior (:func:`gmdm_cli.sampling.posterior_samples`). Every sample is a plausible
    clean image under the model; their mean tends to the posterior mean (close to EB-PA) as ``count`` grows, and
    their spread shows where the model is unsure. About 36 EB-PA passes per sample.

    Parameters
    ----------
    image : ndarray
        Gray ``(H, W)`` or colour ``(H, W, 3|4)`` image, float values on the [0, 1] scale.
    count : int
        Number of samples.
    sigma : float or ndarray, optional
        Noise level on the [0, 1] scale, or a per-pixel map (patch models), as for :func:`denoise`.
    model, blind, colour, noise_model
        As for :func:`denoise`.
    seed : int
        Sample ``k`` of a gray image is drawn from the generator seeded ``seed + k`` (the same whatever ``count``).
    progress : callable, optional
        Called with no arguments after each of the ``12 count`` (colour: ``36 count``) annealing levels.

    Returns
    -------
    samples : ndarray
        Float64 ``(count, H, W[, C])``, not clipped; alpha passed through.

    Examples
    --------
    >>> import numpy as np, gmdm_cli
    >>> from skimage import data
    >>> clean = data.camera()[200:264, 200:264] / 255.0
    >>> noisy = clean + 25 / 255 * np.random.default_rng(0).standard_normal(clean.shape)
    >>> samples = gmdm_cli.posterior_samples(noisy, 4, sigma=25 / 255)
    >>> samples.shape, bool(np.mean((samples.mean(0) - clean) ** 2) < np.mean((noisy - clean) ** 2) / 2)
    ((4, 64, 64), True)
    """
    import numpy as np

    from .sampling import posterior_samples_array

    if (sigma is None) != bool(blind):
        raise ValueError("give sigma, or blind=True (not both)")
    if int(count) < 1:
        raise ValueError(f"count must be at least 1 (got {count})")
    model = get_model(model)
    image = np.asarray(image, dtype=np.float64)
    if blind:
        from .blind import blind_levels

        sigma = blind_levels(model, image, noise_model)[0]
    return posterior_samples_array(model, image, sigma, int(count), colour, seed, progress)


def restore(image, kernel=None, mask=None, scale=None, downsampler="box", sigma=None, model="7x7", iterations=None,
            tile=None, progress=None):
    """Restore an image seen through one forward model: a blur (deblurring), missing pixels (inpainting) or a
    smaller size (upscaling), with the same prior as :func:`denoise`.

    Half-quadratic splitting in its ADMM form (:mod:`gmdm_cli.restoration`): prior steps are the model's Tweedie
    estimate at a decreasing noise level, data steps are solved exactly.

    Parameters
    ----------
    image : ndarray
        Gray ``(H, W)`` or colour ``(H, W, 3|4)`` image on the [0, 1] scale (colour: R, G, B each with the gray
        prior; alpha passed through).
    kernel : ndarray, optional
        Deblur: the blur kernel (normalised here; non-negative, not larger than the image), e.g.
        :func:`gmdm_cli.restoration.gaussian_kernel` or :func:`~gmdm_cli.restoration.motion_kernel`.
    mask : ndarray, optional
        Inpaint: ``(H, W)``, true (or above 1/2) where a pixel is known, 0 where it is missing.
    scale : int, optional
        Upscale ``scale`` times (2-8): the image was downsampled ``scale x scale`` by ``downsampler``.
    downsampler : {"box", "bicubic"}
        Block means, or antialiased bicubic (Keys' cubic stretched by the scale, as MATLAB's ``imresize``).
    sigma : float, optional
        Noise level on the [0, 1] scale; default: estimated for a blur, 0 (exact data) otherwise.
    model : str, path or model
        Built-in model name, checkpoint path, or a loaded model.
    iterations : int, optional
        Prior steps (default: the task's tuned schedule, :data:`gmdm_cli.restoration.SCHEDULES`).
    tile : int, optional
        Prior steps in tiles of this side (same result); None picks one.
    progress : callable, optional
        Called with no arguments after every step of every channel.

    Returns
    -------
    restored : ndarray
        Float64, unclipped: ``(H, W[, C])``, or ``scale`` times larger.

    Examples
    --------
    >>> import numpy as np, gmdm_cli
    >>> from skimage import data
    >>> clean = data.camera()[192:256, 192:256] / 255.0
    >>> known = np.random.default_rng(0).random(clean.shape) > 0.5
    >>> restored = gmdm_cli.restore(clean * known, mask=known, iterations=12)
    >>> bool(np.allclose(restored[known], clean[known]) and np.mean((restored - clean) ** 2) < 1e-3)
    True
    """
    from .restoration import restore_array

    return restore_array(get_model(model), image, kernel, mask, scale, downsampler, sigma, None, tile, progress,
                         iterations)


def estimate_noise(image, map=False, model="7x7", estimator="auto", noise_model="auto", return_estimates=False):
    """Estimate the standard deviation of additive Gaussian noise in an image (Sec. 4.4 of the paper).

    Parameters
    ----------
    image : ndarray
        Gray ``(H, W)`` or colour ``(H, W, 3|4)`` image, float values on the [0, 1] scale.
    map : bool
        Also estimate the noise level pixel by pixel (:func:`estimate_noise_model`'s levels).
    model : str, path or model
        Built-in model name, checkpoint path, or a loaded model.
    estimator : {"auto", "flat", "quiet", "mean-energy"}
        ``"flat"``: the argmin over t in the image's flattest regions (robust to texture, the best at low noise);
        ``"quiet"``: the argmin of the mean energy of the experts that content raises least (the best at high
        noise); ``"auto"`` (default): flat below sigma 20/255, quiet above 40/255, blended between;
        ``"mean-energy"``: ``sqrt(2 argmin_t mean_i -log f(P_i y, t))`` over all patches, the paper's estimate.
    noise_model : {"auto", "constant", "nlf", "map"}
        The noise model of the map (:mod:`gmdm_cli.blind`).
    return_estimates : bool
        Return ``(sigma, sigma_map, estimates)``: the map and the noise models of :func:`estimate_noise_model`
        (the global level measured once).

    Returns
    -------
    sigma : float
        Noise standard deviation on the [0, 1] scale (calibrated when the checkpoint carries a calibration).
    sigma_map : ndarray
        With ``map=True`` only: ``(H, W)`` per-pixel levels, same scale (colour: ``(H, W, 3)``).

    Examples
    --------
    >>> import numpy as np, gmdm_cli
    >>> from skimage import data
    >>> noisy = data.camera() / 255.0 + 20 / 255 * np.random.default_rng(0).standard_normal((512, 512))
    >>> abs(255 * gmdm_cli.estimate_noise(noisy) - 20) < 1.5
    True
    """
    import numpy as np

    from .noise import estimate_noise as estimate, estimate_noise_models

    if return_estimates:
        return estimate_noise_models(get_model(model), np.asarray(image, dtype=np.float64), estimator, noise_model)
    sigma, sigma_map = estimate(get_model(model), np.asarray(image, dtype=np.float64), map, estimator, noise_model)
    return (sigma, sigma_map) if map else sigma


def estimate_noise_model(image, noise_model="auto", model="7x7"):
    """Which noise explains an image: one level, a noise-level function ``sigma^2 = a x + b`` of the intensity
    (the Poisson-Gaussian noise of camera sensors), or a spatial map (:mod:`gmdm_cli.blind`).

    Parameters
    ----------
    image : ndarray
        Gray ``(H, W)`` or colour ``(H, W, 3|4)`` image, float values on the [0, 1] scale (clipped 8/16-bit
        files are fine: saturated pixels are left out).
    noise_model : {"auto", "constant", "nlf", "map"}
        ``"auto"`` chooses by the likelihood gains; the others force one.
    model : str, path or model
        Built-in model name, checkpoint path, or a loaded model.

    Returns
    -------
    estimates : list of gmdm_cli.blind.NoiseEstimate
        One for a gray image, one per RGB channel: the chosen ``model``, its per-pixel ``sigma_map``, the
        constant level, the fitted ``nlf`` ``(a, b)`` with its binned ``curve``, and the ``gains``.

    Examples
    --------
    >>> import numpy as np, gmdm_cli
    >>> from skimage import data
    >>> clean = data.camera() / 255.0
    >>> noisy = clean + np.sqrt(0.01 * clean + 0.0004) * np.random.default_rng(0).standard_normal(clean.shape)
    >>> estimate, = gmdm_cli.estimate_noise_model(noisy)
    >>> estimate.model, bool(abs(estimate.nlf[0] - 0.01) < 0.002)
    ('nlf', True)
    """
    import numpy as np

    from .blind import blind_levels

    return blind_levels(get_model(model), np.asarray(image, dtype=np.float64), noise_model)[1]
