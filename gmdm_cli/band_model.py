"""The band GMDM: the convolutional model of Sec. 3.2, made exact by critical sampling.

Sec. 3.2 puts 1-D experts on every pixel of ``J`` convolution responses ``K_j x`` whose spectra have disjoint
supports ``Gamma_j`` with constant magnitude (Eqs. 16-17). Its density does not diffuse as Theorem 3 says
(``benchmarks/conv_theorem3_check.py``): response ``j`` has only ``|Gamma_j|`` degrees of freedom, yet ``n``
experts are multiplied as if its ``n`` pixels were independent. Keeping the filters of (16)-(17) but
sampling each response critically, on ``|Gamma_j|`` points, makes the analysis an orthonormal transform, and
then Theorem 2's argument holds for the whole image:

* along an axis of ``N = M n`` samples, the orthonormal DCT-II ``C_N`` (symmetric boundary, no wrap-around)
  has ``N`` frequencies; band ``m`` is ``n`` consecutive ones (an ideal pass band: disjoint supports, magnitude
  1 on them, Eqs. 16-17), brought back to ``n`` positions by the inverse DCT of size ``n``:
  ``A = diag(C_n^T, ..., C_n^T) C_N`` is orthonormal, and row ``m n + k`` of it is band ``m``'s filter at the
  ``k``-th point of the subsampled lattice;
* in 2-D the transform is separable, ``c = A_H x A_W^T``, with ``M^2`` bands of ``n_H x n_W`` coefficients;
  band ``(0, 0)`` holds the image's mean and coarse content and is not modelled (a flat factor, as the patch
  model leaves patch means alone); the other ``J = M^2 - 1`` bands have experts
  ``psi_j(c, t) = sum_l w_jl N(c; mu_l, sigma_0^2 + 2t)`` on every coefficient (Eq. 6, ``||k_j|| = 1``).

So ``f(x, t) = prod_j prod_k psi_j(c_jk(x), t)`` solves the diffusion equation exactly (Theorem 2) and is
normalised on the modelled subspace. Its score and Tweedie's estimate are one transform, the experts' scores
and the inverse transform; denoising averages Tweedie's estimates over the ``M^2`` shifts of the lattice
(cycle spinning), as EB-PA averages over the patches covering a pixel.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .denoisers import hqs_schedule, hqs_updates
from .model import MixtureExperts, image_shape, expert_log_density, expert_score, initial_logits, time_from_sigma


class BandGMDM(MixtureExperts):
    """GMDM on the ``M x M`` DCT bands of an image: parameter ``logits`` ``(M^2 - 1, L)``."""

    def __init__(self, bands: int, logits: torch.Tensor, gamma: float = 1.0):
        super().__init__()
        if bands < 2:
            raise ValueError("the band model needs at least 2 bands per axis")
        if logits.shape[0] != bands**2 - 1:
            raise ValueError(f"{bands} x {bands} bands take {bands**2 - 1} rows of logits, not {logits.shape[0]}")
        self.bands = bands
        self.gamma = float(gamma)
        self.logits = torch.nn.Parameter(logits.clone())
        self.register_buffer("means", torch.linspace(-gamma, gamma, logits.shape[1], dtype=logits.dtype))
        self.metadata: dict = {}

    @classmethod
    def initial(cls, bands: int = 8, num_components: int = 125, gamma: float = 1.0,
                dtype=torch.float32) -> "BandGMDM":
        """Sec. 4.1's peaked initial weights for every band."""
        return cls(bands, initial_logits(num_components, gamma).expand(bands**2 - 1, -1).to(dtype), gamma)

    def forward(self, crops: torch.Tensor, t) -> torch.Tensor:
        """Tweedie's estimate (:func:`band_tweedie`) of square crops given as rows ``(N, s*s)``, the form in
        which :func:`gmdm_cli.training.dsm_loss` trains every model."""
        size = math.isqrt(crops.shape[1])
        return band_tweedie(self, crops.view(-1, 1, size, size), t).view(crops.shape)

    def filter_norms2(self) -> torch.Tensor:
        """``||k_j||^2 = 1``: the band filters are rows of an orthonormal matrix."""
        return self.logits.new_ones(self.num_filters)

    def log_normaliser(self) -> torch.Tensor:
        """0: the transform is orthonormal (compare :meth:`gmdm_cli.model.PatchGMDM.log_normaliser`)."""
        return self.logits.new_zeros(())

    # --- the model protocol (gmdm_cli.kinds.GMDM) ---

    kind = "conv"
    projected = ()
    exact_patches = False
    shape_fields = ("bands",)

    def site_grid(self, shape) -> tuple[int, int, int, int]:
        """The ``M x M`` lattice cells."""
        m = self.bands
        height, width = image_shape(shape, m, f"the model's {m}x{m} lattice cells")
        return height // m, width // m, m, m

    def site_inputs(self, images: torch.Tensor, function, step: int = 1) -> list:
        """The coefficients of the modelled bands, all at once (the image cropped to multiples of ``M``); every
        lattice cell (``step`` 1: the cells are ``M`` pixels apart already)."""
        if step != 1:
            raise ValueError("a band model's sites are its lattice cells, every one (step 1)")
        rows, columns, m, _ = self.site_grid(images.shape[-2:])
        return [function(0, rows, band_coefficients(self, images[..., :rows * m, :columns * m])[:, 1:])]

    def tweedie_correction(self, images: torch.Tensor, t) -> torch.Tensor:
        """The cycle-spun correction (:func:`band_denoise`) of every image."""
        sigma = math.sqrt(2 * float(t))
        return torch.stack([band_denoise(self, image[0], sigma)[None] for image in images]) - images

    def denoise(self, noisy: torch.Tensor, sigma, method: str, iterations: int | None = None,
                boundary: str = "valid", tile: int | None = None, return_std: bool = False) -> torch.Tensor:
        """The cycle-spun Tweedie estimate (``"ebpa"``, :func:`band_denoise`) or :func:`band_hqs`, on the model's
        device; it mirrors the borders itself (``boundary`` and ``tile`` do not apply). No posterior std yet."""
        if return_std:
            raise ValueError(f"the posterior std needs a patch model, not a {self.kind} model")
        device, dtype = self.logits.device, self.logits.dtype
        level = torch.as_tensor(sigma, dtype=dtype, device=device)
        image = noisy.to(device=device, dtype=dtype)
        if method == "ebpa":
            result = band_denoise(self, image, level)
        else:
            schedule = hqs_schedule(iterations or BAND_HQS_ITERATIONS, BAND_HQS_START, BAND_HQS_END)
            result = band_hqs(self, image, level, schedule)
        return result.to(noisy.device)

    def checkpoint_fields(self) -> dict:
        return {"logits": self.logits.detach().cpu().clone(), "metadata": {"bands": self.bands}}

    @classmethod
    def expected_shapes(cls, metadata: dict) -> dict:
        return {"logits": (metadata["bands"] ** 2 - 1, metadata["num_components"])}

    @classmethod
    def from_checkpoint(cls, payload: dict, dtype=torch.float32) -> "BandGMDM":
        return cls(payload["metadata"]["bands"], payload["logits"].to(dtype), float(payload["metadata"].get("gamma", 1)))

    @classmethod
    def for_training(cls, config) -> "BandGMDM":
        """The initial model of a training run on crops of ``config.patch_size`` pixels."""
        return cls.initial(config.bands)

    @staticmethod
    def training_defaults(bands: int) -> dict:
        """Crops of 8 lattice cells a side, 16 of them a step."""
        return {"patch_size": 8 * bands, "batch_size": 16}

    @staticmethod
    def check_training(config) -> None:
        """A ``ValueError`` for crops that do not split into the bands."""
        if config.patch_size % config.bands:
            raise ValueError(f"crops of {config.patch_size} pixels do not split into {config.bands} bands")

    @staticmethod
    def adopt(config, metadata: dict) -> None:
        """Fit a training ``config`` to a model of ``metadata`` that a run starts from: its bands."""
        config.bands = metadata["bands"]

    @staticmethod
    def run_metadata(config) -> dict:
        """The side of the training crops."""
        return {"crop_size": config.patch_size}


@functools.lru_cache(maxsize=16)
def band_matrix(size: int, bands: int, dtype=torch.float64, device: str = "cpu") -> torch.Tensor:
    """The orthonormal ``size x size`` analysis matrix ``A = diag(C_n^T, ..., C_n^T) C_size`` (``n = size /
    bands``): rows ``m n ... (m + 1) n - 1`` are band ``m``'s filters on its lattice."""
    if size % bands:
        raise ValueError(f"{size} samples do not split into {bands} bands")
    n = size // bands
    blocks = torch.block_diag(*[_dct_matrix(n).T] * bands)
    return (blocks @ _dct_matrix(size)).to(dtype=dtype, device=device)


def _dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix, float64: ``C[k, i] = s_k cos(pi (i + 1/2) k / size)``."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    i = torch.arange(size, dtype=torch.float64)[None]
    matrix = torch.cos(math.pi * (i + 0.5) * k / size) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix


def _matrices(model: BandGMDM, height: int, width: int, like: torch.Tensor):
    """The analysis matrices of the rows and of the columns, in ``like``'s dtype and on its device."""
    return tuple(band_matrix(size, model.bands, like.dtype, str(like.device)) for size in (height, width))


def band_coefficients(model: BandGMDM, images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W) -> (N, M^2, H/M, W/M)``: the coefficients of every band, band ``(m1, m2)`` at index
    ``m1 M + m2`` (``H`` and ``W`` multiples of ``M``)."""
    rows, columns = _matrices(model, *images.shape[-2:], images)
    c = rows @ images[:, 0] @ columns.T  # (N, H, W)
    m = model.bands
    n, height, width = c.shape
    return c.view(n, m, height // m, m, width // m).permute(0, 1, 3, 2, 4).reshape(n, m * m, height // m, width // m)


def band_image(model: BandGMDM, coefficients: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`band_coefficients`, ``(N, M^2, h, w) -> (N, 1, M h, M w)``."""
    m = model.bands
    n, _, h, w = coefficients.shape
    c = coefficients.view(n, m, m, h, w).permute(0, 1, 3, 2, 4).reshape(n, m * h, m * w)
    rows, columns = _matrices(model, m * h, m * w, coefficients)
    return (rows.T @ c @ columns)[:, None]


def band_energy(model: BandGMDM, images: torch.Tensor, t) -> torch.Tensor:
    """``-log f(x, t) = -sum_j sum_k log psi_j(c_jk(x), t)`` per image ``(N,)`` (the unmodelled band
    ``(0, 0)`` contributes nothing)."""
    c = band_coefficients(model, images)[:, 1:]
    return -expert_log_density(model, c, t).sum((1, 2, 3))


def band_score(model: BandGMDM, images: torch.Tensor, t, exact: bool = True) -> torch.Tensor:
    """``grad_x log f(x, t) = A^T psi'/psi(A x, t)`` (0 in band ``(0, 0)``), shaped like ``images``; with
    ``exact=False`` and one ``t`` the experts are read from their :class:`~gmdm_cli.tables.ExpertTable`."""
    return band_image(model, _coefficient_scores(model, band_coefficients(model, images), t, exact))


def _coefficient_scores(model: BandGMDM, c: torch.Tensor, t, exact: bool) -> torch.Tensor:
    """The experts' scores ``psi'/psi(c, t)`` of coefficients ``c`` ``(N, M^2, h, w)``, 0 in band ``(0, 0)``."""
    from .tables import expert_table

    if exact or torch.as_tensor(t).dim() > 0:
        scores = expert_score(model, c[:, 1:], t)
    else:
        scores = expert_table(model, float(t)).score(c[:, 1:])
    return torch.cat([torch.zeros_like(c[:, :1]), scores], 1)


def band_tweedie(model: BandGMDM, images: torch.Tensor, t, exact: bool = True) -> torch.Tensor:
    """Tweedie's estimate ``x + 2t grad log f(x, t)`` (Eq. 3) of whole images. ``t``: a number, one per image
    ``(N,)``, or one per lattice cell ``(N, 1, H/M, W/M)``: every coefficient then has its own time (the
    coefficients are independent, so each is shrunk by its own posterior mean: heteroscedastic noise whose
    level is constant on each cell), ``x_hat = A^T (c + 2t psi'/psi(c, t))``."""
    t = torch.as_tensor(t, dtype=images.dtype, device=images.device)
    scale = 2 * (t.view(-1, 1, 1, 1) if t.dim() == 1 else t)
    c = band_coefficients(model, images)
    return band_image(model, c + scale * _coefficient_scores(model, c, t, exact))


def band_denoise(model: BandGMDM, noisy: torch.Tensor, sigma, exact: bool = False) -> torch.Tensor:
    """Tweedie's estimate at ``t = sigma^2 / 2`` averaged over the ``M^2`` shifts of the band lattice (cycle
    spinning), for a gray image ``(H, W)`` of any size: it is mirrored to a multiple of ``M`` plus a margin
    of ``M`` on every side, each shift denoises a window of it, and the windows' estimates of the image
    are averaged. ``sigma``: a number, or a per-pixel map ``(H, W)`` (heteroscedastic noise): each shift's
    cells then take the mean variance of the map over them (:func:`band_tweedie`). Tabulated experts for one
    ``sigma`` unless ``exact``; exact mixtures for maps. Returns ``(H, W)``, not clipped."""
    m = model.bands
    height, width = noisy.shape
    inner_h, inner_w = -(-height // m) * m + m, -(-width // m) * m + m
    shifts = [(a, b) for a in range(m) for b in range(m)]

    def windows(image: torch.Tensor) -> torch.Tensor:
        padded = _mirror(image[None, None], m, inner_h - height, m, inner_w - width)
        return torch.cat([padded[..., a:a + inner_h, b:b + inner_w] for a, b in shifts])

    sigma = torch.as_tensor(sigma, dtype=noisy.dtype, device=noisy.device)
    t = time_from_sigma(float(sigma)) if sigma.dim() == 0 else F.avg_pool2d(windows(sigma**2), m) / 2
    estimates = band_tweedie(model, windows(noisy), t, exact)
    total = torch.zeros_like(noisy)
    for index, (a, b) in enumerate(shifts):
        total += estimates[index, 0, m - a:m - a + height, m - b:m - b + width]
    return total / m**2


def _mirror(images: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Symmetric (whole-sample) mirroring, repeated as often as a small image needs."""
    while top or bottom or left or right:
        height, width = images.shape[-2:]
        step = [min(value, size - 1) for value, size in ((left, width), (right, width), (top, height),
                                                          (bottom, height))]
        images = F.pad(images, step, mode="reflect")
        left, right, top, bottom = (value - s for value, s in zip((left, right, top, bottom), step))
    return images


BAND_HQS_ITERATIONS, BAND_HQS_START, BAND_HQS_END, BAND_HQS_DATA_WEIGHT = 4, 0.7, 1 / 64, 36.0  # tuned on BSDS400


def band_hqs(model: BandGMDM, noisy: torch.Tensor, sigma, schedule: list[float] | None = None,
             data_weight: float | None = None) -> torch.Tensor:
    """:func:`hqs` with the band model's prior ``sum_s log f(shift_s x, t)`` over the ``M^2`` lattice shifts, which
    counts every pixel ``M^2`` times (the role of ``C``): ``x = (lambda y + beta M^2 xhat_t(x)) / (lambda +
    beta M^2)`` with ``xhat_t`` the cycle-spun Tweedie estimate (:func:`~gmdm_cli.band_model.band_denoise`) of
    a gray image ``(H, W)``. ``sigma``: a number, or a per-pixel map ``(H, W)``; ``schedule``: times relative to
    ``sigma^2`` (:func:`~gmdm_cli.denoisers.hqs_schedule`). Default schedule ``hqs_schedule(BAND_HQS_ITERATIONS,
    BAND_HQS_START, BAND_HQS_END)`` (4 steps from ``0.7 sigma^2 / 2`` to ``sigma^2 / 128``) and data weight ``BAND_HQS_DATA_WEIGHT``
    (36): the band model's own choice, best of 153 settings on BSDS400 crops (``benchmarks/tune_hqs.py --model
    conv``, ``benchmarks/results/hqs-tuning-conv.md``); it gains only about 0.05 dB over the cycle-spun Tweedie
    estimate, which already averages ``M^2`` estimates."""
    sigma = torch.as_tensor(sigma, dtype=noisy.dtype, device=noisy.device)
    relative = hqs_schedule(BAND_HQS_ITERATIONS, BAND_HQS_START, BAND_HQS_END) if schedule is None else schedule
    weight = BAND_HQS_DATA_WEIGHT if data_weight is None else data_weight
    return hqs_updates(noisy, relative, weight, model.bands**2, lambda x, r: band_denoise(model, x, (2 * r) ** 0.5 * sigma))
