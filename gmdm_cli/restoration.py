"""Restoration beyond denoising: deblurring, inpainting and upscaling with the same prior, by half-quadratic
splitting (HQS, as EPLL did with its patch prior; Zoran & Weiss 2011).

An observation ``y = A x + n`` (``n`` Gaussian of level ``sigma``, possibly 0) is restored by minimising
``||A x - y||^2 / (2 sigma^2) - log p(x)`` with an auxiliary image ``z`` that is kept close to ``x`` with a weight
that grows: for the levels ``s_1 > ... > s_K`` of a geometric schedule,

* prior step: ``z = x + c(x, s_k^2 / 2)``, the model's Tweedie estimate of ``x`` as if it held noise of level
  ``s_k`` (the patches' Tweedie corrections ``c`` averaged at every pixel, as in ``denoise --method hqs``, but each
  patch weighted by its posterior precision, ``(tr Cov_i / s_k^2)^-q``: patches the prior is sure of count more,
  :func:`~gmdm_cli.denoisers.precision_weights`; ``q`` per forward model, :data:`SCHEDULES`);
* data step: ``x = argmin ||A x - y||^2 + mu_k ||x - z||^2 = (A^T A + mu_k I)^-1 (A^T y + mu_k z)``,
  ``mu_k = sigma^2 / (w s_k^2)`` (``w`` the data weight; ``mu = 0`` makes ``A x = y`` exact).

In the ADMM form (the default, :class:`Schedule`) a scaled dual variable ``u`` carries the data step's residual
from one step to the next: ``x = solve(z - u)``, ``z = prior(x + u)``, ``u += x - z``.

The data step is solved exactly, or nearly, and cheaply for every operator here: a blur by conjugate gradients
preconditioned by the Fourier-diagonal circular solve (:class:`Blur`), a mask pixel by pixel, and a downsampler
``x -> D_r x D_c^T`` (separable, box or antialiased bicubic) in the eigenbases of ``D_r^T D_r`` and ``D_c^T D_c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .choices import DOWNSAMPLERS
from .kinds import GMDM
from .model import time_from_sigma


class _Operator:
    """What the forward models share: the observation as the data step takes it, the start, and the result from
    the restored domain (all as they are here); ``pixelwise``: whether the data step is diagonal (it then weighs
    each pixel by how often the prior counts it, :func:`restore_channel`)."""

    pixelwise = False

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def start(self, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    def result(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Blur(_Operator):
    """``A x = C (k * x)``: convolution with a normalised kernel ``k`` on the observation's domain enlarged by the
    kernel's height and width on every side (circular there), cropped (``C``) to the observation. The enlarged border is
    unknown, so the blur at the image's edges needs no boundary assumption; the restored image is cropped."""

    def __init__(self, kernel: torch.Tensor, shape: tuple[int, int], steps: int = 6):
        self.pad, self.inner, self.steps = tuple(kernel.shape), tuple(shape), steps  # rows, columns
        height, width = shape[0] + 2 * self.pad[0], shape[1] + 2 * self.pad[1]
        padded = torch.zeros(height, width, dtype=kernel.dtype, device=kernel.device)
        padded[:kernel.shape[0], :kernel.shape[1]] = kernel
        # centre the kernel at the origin (circularly), so that the blur does not shift the image
        padded = torch.roll(padded, (-(kernel.shape[0] // 2), -(kernel.shape[1] // 2)), (0, 1))
        self.spectrum = torch.fft.rfft2(padded)
        self.shape = (height, width)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        (p, q), (height, width) = self.pad, self.inner
        return x[p:p + height, q:q + width]

    def _convolve(self, x: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
        spectrum = self.spectrum.conj() if adjoint else self.spectrum
        return torch.fft.irfft2(torch.fft.rfft2(x) * spectrum, s=self.shape)

    def start(self, y: torch.Tensor) -> torch.Tensor:
        """The observation mirrored by the kernel's size (edge pixels repeated)."""
        p, q = self.pad
        rows = torch.cat([y[:p].flip(0), y, y[-p:].flip(0)])
        return torch.cat([rows[:, :q].flip(1), rows, rows[:, -q:].flip(1)], 1)

    result = _crop

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._crop(self._convolve(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        p, q = self.pad
        return self._convolve(torch.nn.functional.pad(y, (q, q, p, p)), adjoint=True)

    def _circular_solve(self, right: torch.Tensor, mu: float) -> torch.Tensor:
        """``(K^T K + mu I)^-1 right`` for the circular blur ``K`` of the whole enlarged domain (Fourier-diagonal)."""
        return torch.fft.irfft2(torch.fft.rfft2(right) / (self.spectrum.abs() ** 2 + mu), s=self.shape)

    def solve(self, y: torch.Tensor, z: torch.Tensor, mu: float) -> torch.Tensor:
        """``(A^T A + mu I)^-1 (A^T y + mu z)`` (``mu > 0``) by conjugate gradients preconditioned with the circular
        solve of the whole domain, which differs from ``A^T A`` at the border only; started from that solve with
        the observation mirrored, ``steps`` iterations."""
        right = self.adjoint(y) + mu * z
        x = self._circular_solve(self._convolve(self.start(y), adjoint=True) + mu * z, mu)
        residual = right - self.adjoint(self.apply(x)) - mu * x
        preconditioned = self._circular_solve(residual, mu)
        direction, product = preconditioned, float((residual * preconditioned).sum())
        for _ in range(self.steps):
            if product <= 0:
                break
            image = self.adjoint(self.apply(direction)) + mu * direction
            step = product / float((direction * image).sum())
            x = x + step * direction
            residual = residual - step * image
            preconditioned = self._circular_solve(residual, mu)
            product, previous = float((residual * preconditioned).sum()), product
            direction = preconditioned + (product / previous) * direction
        return x


BIHARMONIC_LIMIT = 1 << 20
"""Most missing pixels :class:`Mask` starts from by biharmonic inpainting (a sparse solve: ~0.35 s for 77 000
missing pixels)."""


class Mask(_Operator):
    """``A x = m x`` with ``m`` 1 where a pixel is known, 0 where it is missing."""

    pixelwise = True

    def __init__(self, known: torch.Tensor):
        self.known = known

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.known

    def start(self, y: torch.Tensor) -> torch.Tensor:
        """The known pixels, and the missing ones filled by scikit-image's biharmonic inpainting (smooth across
        scratches and lines, where a local mean leaves a seam the prior then keeps: 31.0 against 31.3 dB after
        restoring a camera crop with 4-6 pixel scratches; the same on pixels missing at random); beyond
        :data:`BIHARMONIC_LIMIT` missing pixels (its sparse solve grows fast), by :meth:`local_fill`."""
        missing = self.known == 0
        if int(missing.sum()) > BIHARMONIC_LIMIT:
            return self.local_fill(y)
        from skimage.restoration import inpaint_biharmonic

        filled = inpaint_biharmonic(y.double().cpu().numpy(), missing.cpu().numpy())
        return torch.as_tensor(filled, dtype=y.dtype, device=y.device)

    def local_fill(self, y: torch.Tensor) -> torch.Tensor:
        """The known pixels, and every missing one the Gaussian-weighted mean of the known pixels around it (wider
        windows where the nearest are far)."""
        x = y.clone()
        missing = self.known == 0
        for width in (1.0, 2.0, 4.0, 8.0, 16.0, 64.0):
            if not bool(missing.any()):
                break
            weights, values = _gaussian(self.known, width), _gaussian(y * self.known, width)
            fill = missing & (weights > 1e-3)
            x[fill] = (values / weights.clamp_min(1e-12))[fill]
            missing = missing & ~fill
        x[missing] = float((y * self.known).sum() / self.known.sum())
        return x

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.known * x

    adjoint = apply

    def solve(self, y: torch.Tensor, z: torch.Tensor, mu: float) -> torch.Tensor:
        """``(m y + mu z) / (m + mu)`` pixel by pixel (missing pixels: ``z``; with ``mu = 0`` known ones: ``y``)."""
        return torch.where(self.known > 0, (self.known * y + mu * z) / (self.known + mu), z)


def _gaussian(image: torch.Tensor, width: float) -> torch.Tensor:
    """``image`` (H, W) smoothed by a Gaussian of std ``width`` pixels (zero outside), separable."""
    import torch.nn.functional as F

    radius = int(math.ceil(3 * width))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    taps = torch.exp(-offsets**2 / (2 * width**2))
    x = F.conv2d(image[None, None], taps.view(1, 1, -1, 1), padding=(radius, 0))
    return F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, radius))[0, 0]


def downsampling_matrix(size: int, factor: int, downsampler: str = "box", dtype=torch.float64) -> torch.Tensor:
    """The 1-D downsampler ``(size // factor, size)`` of one axis: ``"box"`` averages each run of ``factor``
    pixels; ``"bicubic"`` is Keys' cubic (a = -0.5) stretched by ``factor`` (antialiased, as MATLAB's
    ``imresize``), centred on each output pixel, mirrored at the ends, rows summing to 1."""
    if downsampler not in DOWNSAMPLERS:
        raise ValueError(f"unknown downsampler '{downsampler}' (choose from {', '.join(DOWNSAMPLERS)})")
    rows = size // factor
    if downsampler == "box":
        matrix = torch.zeros(rows, size, dtype=dtype)
        for i in range(rows):
            matrix[i, i * factor:(i + 1) * factor] = 1 / factor
        return matrix
    return _cubic_matrix(rows, size, factor, stretch=factor, dtype=dtype)


def upsampling_matrix(size: int, factor: int, dtype=torch.float64) -> torch.Tensor:
    """Bicubic interpolation of one axis (Keys' cubic, ``a = -0.5``), ``(size * factor, size)``: the start of
    :func:`restore` for upscaling (what ``skimage.transform.resize(order=3)`` approximates)."""
    return _cubic_matrix(size * factor, size, 1 / factor, stretch=1.0, dtype=dtype)


def _cubic_matrix(rows: int, size: int, step: float, stretch: float, dtype) -> torch.Tensor:
    """Rows of Keys' cubic kernel (stretched by ``stretch``) centred at ``(i + 1/2) step - 1/2`` of the input
    grid of ``size`` pixels, mirrored at the ends (half-sample symmetric), normalised to sum 1."""

    def keys(u: np.ndarray) -> np.ndarray:
        u = np.abs(u)
        return np.where(u <= 1, 1.5 * u**3 - 2.5 * u**2 + 1, np.where(u < 2, -0.5 * u**3 + 2.5 * u**2 - 4 * u + 2, 0))

    matrix = np.zeros((rows, size))
    reach = int(math.ceil(2 * stretch)) + 1
    for i in range(rows):
        centre = (i + 0.5) * step - 0.5
        taps = np.arange(math.floor(centre) - reach, math.floor(centre) + reach + 2)
        weights = keys((centre - taps) / stretch)
        mirrored = np.abs(taps + 0.5) - 0.5  # half-sample symmetric at 0 ...
        mirrored = np.where(mirrored > size - 1, 2 * size - 1 - mirrored, mirrored).astype(int)  # ... and at the end
        np.add.at(matrix[i], np.clip(mirrored, 0, size - 1), weights)
    matrix /= matrix.sum(1, keepdims=True)
    return torch.as_tensor(matrix, dtype=dtype)


class Downsample(_Operator):
    """``A x = D_r x D_c^T``: the image ``factor`` times smaller by :func:`downsampling_matrix` along each axis."""

    def __init__(self, shape: tuple[int, int], factor: int, downsampler: str, dtype, device):
        height, width = shape[0] * factor, shape[1] * factor
        self.shape = (height, width)
        matrices = [downsampling_matrix(n, factor, downsampler) for n in (height, width)]  # float64
        self.rows, self.columns = (m.to(device, dtype) for m in matrices)
        self.up = [upsampling_matrix(n, factor).to(device, dtype) for n in shape]
        # A^T A = (D_r^T D_r) (x) (D_c^T D_c): the data step in the eigenbases of the two small matrices, found in
        # float64 (in float32 the null space's eigenvalues come out ~1e-7 instead of 0)
        (self.row_values, self.row_vectors), (self.column_values, self.column_vectors) = (
            (values.to(device, dtype), vectors.to(device, dtype))
            for values, vectors in (torch.linalg.eigh(m.T @ m) for m in matrices))

    def start(self, y: torch.Tensor) -> torch.Tensor:
        return self.up[0] @ y @ self.up[1].T

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.columns.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.rows.T @ y @ self.columns

    def solve(self, y: torch.Tensor, z: torch.Tensor, mu: float) -> torch.Tensor:
        """``(A^T A + mu I)^-1 (A^T y + mu z)`` in the eigenbases (``mu = 0``: the pseudo-inverse on the range of
        ``A^T``, ``z`` kept on the null space)."""
        right = self.row_vectors.T @ (self.adjoint(y) + mu * z) @ self.column_vectors
        values = self.row_values[:, None] * self.column_values[None, :]
        if mu > 0:
            solved = right / (values + mu)
        else:  # exact: A x = y, and x = z on the null space of A
            known = values > 1e-6 * float(values.max())
            fallback = self.row_vectors.T @ z @ self.column_vectors
            solved = torch.where(known, right / values.clamp_min(1e-30), fallback)
        return self.row_vectors @ solved @ self.column_vectors.T


class Identity(_Operator):
    """``A = I``: plain denoising (what ``restore`` reduces to; with ``solver="hqs"`` it is ``denoise --method
    hqs``)."""

    pixelwise = True

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x

    adjoint = apply

    def solve(self, y: torch.Tensor, z: torch.Tensor, mu) -> torch.Tensor:
        return (y + mu * z) / (1 + mu)


@dataclass(frozen=True)
class Schedule:
    """The prior levels of a restoration: ``iterations`` levels from ``start`` down to ``end`` (or the noise level,
    whichever is higher), geometric; the data weight ``weight`` (``mu_k = sigma^2 / (weight s_k^2)``); the
    ``solver``: ``"admm"`` (HQS with a scaled dual variable ``u``, which keeps the constraint's residual:
    ``x = solve(z - u)``, ``z = prior(x + u)``, ``u += x - z``) or ``"hqs"`` (``x = solve(prior(x))``); the prior
    step's ``weighting``: the power ``q`` of the patches' precision weights (``0``: EB-PA's plain average;
    :func:`~gmdm_cli.denoisers.precision_weights`)."""
    iterations: int
    start: float
    end: float
    weight: float
    solver: str = "admm"
    weighting: float = 0.0

    def levels(self, sigma: float) -> list[float]:
        end = max(self.end, sigma)
        return [end] if self.iterations == 1 else np.geomspace(max(self.start, end), end, self.iterations).tolist()


SOLVERS = ("admm", "hqs")
BLUR_SIGMA_MIN = 0.25 / 255
SCHEDULES = {"blur": Schedule(16, 0.1, 1 / 255, 2.0, "admm", 8.0),
             "mask": Schedule(24, 0.2, 0.5 / 255, 1.0, "admm", 2.0),
             "scale": Schedule(24, 0.05, 0.5 / 255, 1.0, "hqs", 8.0)}
"""The default schedule of each forward model, tuned on BSDS400 (``benchmarks/restore.py --tune``; the precision
weighting with ``--tune --weightings``, on the schedules tuned before it: PSNR rises with the power up to 8 for
a blur and a downsampler, +0.18 and +0.12 dB over the plain average, and falls from 10 on; a mask gains +0.04 at
2 and loses from 4, its known pixels exact, which the isotropic posterior the weights come from does not know;
``benchmarks/results/restore-tuning.md``)."""


def _prior(model: GMDM, x: torch.Tensor, level: float, tile: int | None, weighting: float = 0.0) -> torch.Tensor:
    """The prior step: the model's Tweedie estimate of ``x`` ``(H, W)`` at noise level ``level`` (patch models in
    tiles of ``tile``, their patch estimates averaged with precision weights of power ``weighting``, see
    :func:`~gmdm_cli.denoisers.tweedie_average`; a convolutional model has no patches to weigh)."""
    t = time_from_sigma(level)
    if model.kind == "patch":
        from .denoisers import tweedie_average

        return x + tweedie_average(model, x[None, None], t, tile=tile, weighting=weighting)[0, 0]
    return x + model.tweedie_correction(x[None, None], t)[0, 0]


def restore_channel(model: GMDM, operator, y: torch.Tensor, sigma: float, schedule: Schedule,
                    tile: int | None = None, progress=None) -> torch.Tensor:
    """Restore one gray channel ``y`` (a tensor in the model's dtype) observed through ``operator`` with noise of
    level ``sigma`` (module docstring); ``progress``: called with no arguments after every iteration.

    The prior step counts a pixel as often as patches cover it: where the data step is pixel-wise (identity,
    mask) ``mu_k`` is scaled by ``C(n) / C_max`` (``C`` from :func:`~gmdm_cli.model.patch_counts`), as in
    :func:`gmdm_cli.denoisers.hqs`; elsewhere the interior's value, 1."""
    if schedule.solver not in SOLVERS:
        raise ValueError(f"unknown solver '{schedule.solver}' (choose from {', '.join(SOLVERS)})")
    observed = operator.observed(y)
    x = operator.start(observed)
    coverage = 1.0
    if operator.pixelwise and model.kind == "patch":
        from .model import patch_counts

        counts = patch_counts(model, x[None, None])[0, 0]
        coverage = counts / counts.max()
    z, dual = x, torch.zeros_like(x)
    with torch.no_grad():
        for level in schedule.levels(sigma):
            mu = coverage * (sigma**2 / (schedule.weight * level**2))
            if schedule.solver == "hqs":
                x = operator.solve(observed, _prior(model, x, level, tile, schedule.weighting), mu)
            else:
                x = operator.solve(observed, z - dual, mu)
                z = _prior(model, x + dual, level, tile, schedule.weighting)
                dual = dual + x - z
            if progress is not None:
                progress()
    return operator.result(x)


def gaussian_kernel(std: float, size: int | None = None) -> np.ndarray:
    """A normalised Gaussian blur kernel of standard deviation ``std`` pixels, ``size`` wide (default
    ``2 ceil(3 std) + 1``)."""
    if not (np.isfinite(std) and std > 0):
        raise ValueError(f"a Gaussian blur needs a positive std (got {std})")
    offsets = np.arange(size or 2 * math.ceil(3 * std) + 1) - (size or 2 * math.ceil(3 * std) + 1) // 2
    taps = np.exp(-offsets**2 / (2 * std**2))
    kernel = np.outer(taps, taps)
    return kernel / kernel.sum()


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised linear motion blur kernel: a segment of ``length`` pixels at ``angle`` degrees
    (counter-clockwise from the x axis), sampled finely and spread over the grid bilinearly."""
    if not (np.isfinite(length) and np.isfinite(angle) and 1 <= length <= 256):
        raise ValueError(f"a motion blur needs a length of 1 to 256 pixels and a finite angle (got {length}, {angle})")
    radius = math.ceil(length / 2) + 1
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
    steps = np.linspace(-length / 2, length / 2, max(2, int(8 * length)))
    x = radius + steps * math.cos(math.radians(angle))
    y = radius - steps * math.sin(math.radians(angle))
    left, top = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - left, y - top
    for dy, dx, weight in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (top + dy, left + dx), weight)
    return kernel / kernel.sum()


def check_kernel(kernel, shape) -> np.ndarray:
    """``kernel`` as a normalised float64 array, or a ``ValueError`` saying what is wrong with it."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 3 and kernel.shape[2] in (1, 3, 4):  # an image file: its first channel
        kernel = kernel[..., 0]
    if kernel.ndim != 2:
        raise ValueError(f"a blur kernel must be a 2-D array (got shape {kernel.shape})")
    if not np.isfinite(kernel).all():
        raise ValueError("the blur kernel has non-finite values")
    if kernel.min() < 0 or kernel.sum() <= 0:
        raise ValueError("the blur kernel must be non-negative and not all zero")
    if kernel.shape[0] > shape[0] or kernel.shape[1] > shape[1]:
        raise ValueError(f"the blur kernel ({kernel.shape[0]}x{kernel.shape[1]}) is larger than the image "
                         f"({shape[0]}x{shape[1]})")
    return kernel / kernel.sum()


def check_mask(mask, shape) -> np.ndarray:
    """``mask`` as a boolean ``(H, W)`` array (known where above 1/2 on the [0, 1] scale), or a ``ValueError``."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 2, 3, 4):
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise ValueError(f"the mask ({'x'.join(map(str, mask.shape))}) does not match the image "
                         f"({shape[0]}x{shape[1]})")
    values = mask.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the mask has non-finite values")
    known = values > 0.5
    if not known.any():
        raise ValueError("the mask marks every pixel as missing (0 = missing)")
    return known


def task_of(kernel=None, mask=None, scale=None) -> str:
    """The forward model's name (a key of :data:`SCHEDULES`) for exactly one of ``kernel``, ``mask``, ``scale``."""
    if sum(value is not None for value in (kernel, mask, scale)) != 1:
        raise ValueError("give exactly one forward model: a blur kernel, a mask or a scale")
    return "blur" if kernel is not None else "mask" if mask is not None else "scale"


def restore_array(model: GMDM, image, kernel=None, mask=None, scale: int | None = None, downsampler: str = "box",
                  sigma: float | None = None, schedule: Schedule | None = None, tile: int | None = None,
                  progress=None, iterations: int | None = None):
    """Restore a numpy image on the [0, 1] scale (gray ``(H, W)``, colour ``(H, W, 3|4)``: R, G, B each with the gray
    prior, alpha passed through; upscaled alpha by bicubic interpolation) observed through one forward model:
    ``kernel`` (a blur), ``mask`` (inpainting, 0 = missing) or ``scale`` (upscaling an image downsampled by
    ``downsampler``). ``sigma``: the noise level ([0, 1] scale; default: estimated for a blur, 0 otherwise);
    ``schedule``: default :data:`SCHEDULES` of the task, with ``iterations`` steps when given. Returns float64,
    unclipped."""
    from dataclasses import replace

    from .image_io import join_alpha, split_alpha

    task = task_of(kernel, mask, scale)
    image, alpha = split_alpha(np.asarray(image, dtype=np.float64))
    shape = image.shape[:2]
    device, dtype = model.logits.device, model.logits.dtype
    if task == "blur":
        operator = Blur(torch.as_tensor(check_kernel(kernel, shape), dtype=dtype, device=device), shape)
    elif task == "mask":
        operator = Mask(torch.as_tensor(check_mask(mask, shape), dtype=dtype, device=device))
    else:
        if not (isinstance(scale, (int, np.integer)) and 2 <= scale <= 8):
            raise ValueError(f"the scale must be an integer from 2 to 8 (got {scale})")
        operator = Downsample(shape, int(scale), downsampler, dtype, device)
    if sigma is None:
        from .noise import estimate_noise

        sigma = float(estimate_noise(model, image)[0]) if task == "blur" else 0.0
    if not (np.isfinite(sigma) and 0 <= sigma <= 1):
        raise ValueError(f"the noise level must lie in [0, 1] on the image's scale (got {sigma})")
    if task == "blur":  # a deconvolution needs a data weight: exact data count as noise of 1/4 of a grey level
        sigma = max(sigma, BLUR_SIGMA_MIN)
    schedule = SCHEDULES[task] if schedule is None else schedule
    schedule = schedule if iterations is None else replace(schedule, iterations=int(iterations))
    channels = [image] if image.ndim == 2 else [image[..., k] for k in range(image.shape[2])]
    restored = [restore_channel(model, operator, torch.as_tensor(channel, dtype=dtype, device=device), sigma,
                                schedule, tile, progress).double().cpu().numpy() for channel in channels]
    result = restored[0] if image.ndim == 2 else np.stack(restored, -1)
    if not np.isfinite(result).all():
        raise ValueError("the result is not finite (the image's values are too far outside [0, 1])")
    if alpha is not None and task == "scale":
        alpha = operator.start(torch.as_tensor(alpha, dtype=dtype, device=device)).double().cpu().numpy().clip(0, 1)
    return join_alpha(result, alpha)
