"""gmdm: image denoising with Gaussian Mixture Diffusion Models (Zach et al., SSVM 2023).

The functions here are the library's front door, in the style of scikit-image: numpy arrays in,
numpy arrays out. Noise levels are on the image's own [0, 1] scale (the command line uses 0-255).
Heavy modules are imported on first use, so ``import gmdm_cli`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "denoise"]


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
    model : gmdm_cli.model.PatchGMDM
    """
    from .checkpoint import load_model as _load

    return _load(name, device=device)


def denoise(image, sigma, method="ebpa", model="7x7", boundary="valid"):
    """Denoise an image corrupted by additive Gaussian noise of standard deviation ``sigma``.

    Parameters
    ----------
    image : ndarray
        Gray ``(H, W)`` or colour ``(H, W, 3|4)`` image, float values on the [0, 1] scale.
    sigma : float
        Noise standard deviation on the same [0, 1] scale (25/255 for "sigma 25").
    method : {"ebpa"}
        Empirical-Bayes patch averaging (Sec. 4.3 of the paper).
    model : str, path or PatchGMDM
        Built-in model name, checkpoint path, or a loaded model.
    boundary : {"valid", "reflect"}
        Patches inside the image only, or mirror the borders first.

    Returns
    -------
    denoised : ndarray
        Float64 array shaped like ``image``, not clipped.

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
    from .model import PatchGMDM

    if not isinstance(model, PatchGMDM):
        model = load_model(model)
    return denoise_array(model, np.asarray(image, dtype=np.float64), float(sigma), method, boundary)
