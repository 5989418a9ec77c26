"""The patch GMDM: a product of 1-D Gaussian-mixture experts on orthogonal filters.

Zach, Pock, Kobler, Chambolle, "Explicit Diffusion of Gaussian Mixture Model Based Image
Priors" (SSVM 2023), Sec. 3.1. Notation follows the paper:

* a patch ``p`` has ``a = b*b`` pixels; ``J = a - 1`` zero-mean, pairwise orthogonal filters
  ``k_j`` (rows of ``filters``, shape ``(J, a)``);
* expert ``j`` is the mixture ``psi_j(z, t) = sum_l w_jl N(z; mu_l, sigma_j^2(t))`` (Eq. 6) on the
  response ``z = <k_j, p>``, with ``L`` equidistant means on ``[-gamma, gamma]``, shared
  ``sigma_0 = 2 gamma / (L - 1)`` and weights ``w_j = softmax(zeta_j)`` (``logits``);
* diffusion to time ``t`` (noise level ``sigma = sqrt(2 t)``) only widens the components:
  ``sigma_j^2(t) = sigma_0^2 + 2 t ||k_j||^2`` (Theorem 2).

Everything below works on batches of responses with the filter index in dimension 1:
``(N, J)`` for patches, ``(N, J, H, W)`` for the "valid" convolution of whole images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tiling import convolution_backend, map_strip_blocks

# Largest number of (response, component) pairs evaluated at once, by device type. On the CPU 2^21 (8 MiB in
# float32) keeps the (..., L) mixture tensor's passes (logits, softmax, moments) in cache: measured on 2 threads
# against 2^24, a training step (batch 3200) 0.119 -> 0.092 s (7x7), 0.395 -> 0.352 s (15x15); exact EB-PA 7x7
# of a 481x321 image 4.6 -> 2.5 s. On a GPU, small chunks mean many small kernels per step (2^21 cuts a 15x15
# batch of 3200 into 44 chunks); 2^27 (512 MiB per mixture tensor) takes it in one: a whole training step
# 0.047 -> 0.015 s on an H100 (benchmarks/training_step.py, benchmarks/results/speed-cuda.md).
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 27}
SITE_BLOCK_VALUES = 1 << 23  # the most responses of one block of PatchGMDM.site_inputs with step > 1 (32 MiB)


def time_from_sigma(sigma):
    """Diffusion time of noise level ``sigma`` (0-1 scale): ``Y_t = X + sqrt(2t) N``."""
    return sigma**2 / 2


def initial_logits(num_components: int, gamma: float = 1.0, alpha: float = 1000.0) -> torch.Tensor:
    """Sec. 4.1: ``zeta_jl = 0.1 sqrt(alpha) / (1 + alpha mu_l^2)``, one row (broadcast over j)."""
    means = torch.linspace(-gamma, gamma, num_components, dtype=torch.float64)
    return 0.1 * math.sqrt(alpha) / (1 + alpha * means**2)


class MixtureExperts(torch.nn.Module):
    """What every GMDM shares: ``J`` experts of ``L`` components with weights ``softmax(logits)`` ``(J, L)``,
    means ``linspace(-gamma, gamma, L)`` and ``sigma_0 = 2 gamma / (L - 1)``; subclasses give ``filter_norms2``."""

    @property
    def num_components(self) -> int:
        return self.logits.shape[1]

    @property
    def num_filters(self) -> int:
        return self.logits.shape[0]

    @property
    def sigma0(self) -> float:
        """Shared component standard deviation ``sigma_0 = 2 gamma / (L - 1)`` (Sec. 4.1)."""
        return 2 * self.gamma / (self.num_components - 1)

    def smallest_side(self) -> int:
        """The smallest image side a model works on: the footprint of one of its sites (protocol
        :class:`gmdm_cli.kinds.GMDM`)."""
        return self.site_grid((1 << 30, 1 << 30))[2]

    def expert_variances(self, t, ndim: int = 2) -> torch.Tensor:
        """``sigma_j^2(t) = sigma_0^2 + 2 t ||k_j||^2`` (Theorem 2).

        ``t`` is a number, a tensor ``(N,)`` (one time per sample) or a tensor broadcastable to
        ``(N, 1, *spatial)`` (one time per patch). The result broadcasts against responses with
        ``ndim`` dimensions, filter index in dimension 1.
        """
        norms2 = self.filter_norms2().view(-1, *([1] * (ndim - 2)))  # (J, 1, ...)
        t = torch.as_tensor(t, dtype=self.logits.dtype, device=self.logits.device)
        if t.dim() == 1:
            t = t.view(-1, *([1] * (ndim - 1)))
        return self.sigma0**2 + 2 * t * norms2


class PatchGMDM(MixtureExperts):
    """GMDM on ``b x b`` patches (Eq. 5): parameters ``filters`` ``(J, a)`` and ``logits`` ``(J, L)``."""

    def __init__(self, filters: torch.Tensor, logits: torch.Tensor, gamma: float = 1.0):
        super().__init__()
        num_filters, patch_pixels = filters.shape
        if logits.shape[0] != num_filters:
            raise ValueError(f"{num_filters} filters but {logits.shape[0]} rows of logits")
        self.patch_size = math.isqrt(patch_pixels)
        if self.patch_size**2 != patch_pixels:
            raise ValueError(f"filters of {patch_pixels} pixels are not square patches")
        self.gamma = float(gamma)
        self.filters = torch.nn.Parameter(filters.clone())
        self.logits = torch.nn.Parameter(logits.clone())
        num_components = logits.shape[1]
        self.register_buffer("means", torch.linspace(-gamma, gamma, num_components, dtype=logits.dtype))
        self.metadata: dict = {}  # checkpoint metadata (training record, noise calibration), if loaded

    @classmethod
    def initial(cls, patch_size: int = 7, num_components: int = 125, gamma: float = 1.0,
                generator: torch.Generator | None = None, dtype=torch.float32) -> "PatchGMDM":
        """Sec. 4.1 initialisation: i.i.d. N(0, 1/b^2) filter entries, peaked logits."""
        if patch_size < 2:
            raise ValueError("patch size must be at least 2")
        pixels = patch_size**2
        filters = torch.randn(pixels - 1, pixels, generator=generator, dtype=torch.float64) / patch_size
        logits = initial_logits(num_components, gamma).expand(pixels - 1, -1)
        return cls(filters.to(dtype), logits.to(dtype), gamma)

    def forward(self, patches: torch.Tensor, t) -> torch.Tensor:
        """Tweedie estimate of noisy patches ``(N, a)`` at times ``t`` (:func:`patch_tweedie`, Eq. 3): the
        map that denoising score matching trains, so that ``DistributedDataParallel`` can wrap the model."""
        return patch_tweedie(self, patches, t)

    def kernels(self) -> torch.Tensor:
        """Filters as convolution kernels, ``(J, 1, b, b)``."""
        b = self.patch_size
        return self.filters.view(-1, 1, b, b)

    def filter_norms2(self) -> torch.Tensor:
        """``||k_j||^2``, ``(J,)``."""
        return self.filters.pow(2).sum(1)

    def log_normaliser(self) -> torch.Tensor:
        """``log Z^{-1} = sum_j log ||k_j||``: Jacobian of ``p -> (<k_j, p>)_j`` on the zero-mean
        subspace for orthogonal filters (the paper's Corollary 2.1 prints ``||k_j||^2``; the
        numerical integration in the tests confirms the first power)."""
        return self.filters.pow(2).sum(1).log().sum() / 2

    # --- the model protocol (gmdm_cli.kinds.GMDM) ---

    kind = "patch"
    projected = ("filters",)
    exact_patches = True
    shape_fields = ("patch_size",)

    def site_grid(self, shape) -> tuple[int, int, int, int]:
        """Every ``b x b`` patch, stride 1."""
        b = self.patch_size
        height, width = image_shape(shape, b, f"the {b}x{b} patches of the model")
        return height - b + 1, width - b + 1, b, 1

    def site_inputs(self, images: torch.Tensor, function, step: int = 1) -> list:
        """The responses in strips of rows, blocks of strips on the CPU's threads
        (:func:`~gmdm_cli.tiling.map_strip_blocks`); with ``step > 1`` those of every ``step``-th patch position in
        each direction only, by strided convolutions in the calling thread over blocks of rows of at most
        :data:`SITE_BLOCK_VALUES` responses (on 2 threads the 481 x 321 image's in one: 1.9 ms, in strips on the
        threads 7.4 ms)."""
        if step > 1:
            b, (height, width) = self.patch_size, images.shape[-2:]
            per_row = self.num_filters * ((width - b) // step + 1) * images.shape[0]
            rows = max(1, SITE_BLOCK_VALUES // per_row) * step  # patch rows per block: a multiple of step
            return [function(top, min(top + rows, height - b + 1),
                             image_responses(self, images[..., top:top + rows + b - 1, :], step))
                    for top in range(0, height - b + 1, rows)]

        blocks = map_strip_blocks(self, images, lambda block: [function(top, bottom, image_responses(self, strip))
                                                               for top, bottom, strip in block])
        return [result for block in blocks for result in block]

    def tweedie_correction(self, images: torch.Tensor, t) -> torch.Tensor:
        """The patch-averaged correction (:func:`gmdm_cli.denoisers.tweedie_average`)."""
        from .denoisers import tweedie_average

        return tweedie_average(self, images, t)

    def denoise(self, noisy: torch.Tensor, sigma, method: str, iterations: int | None = None,
                boundary: str = "valid", tile: int | None = None, return_std: bool = False):
        """EB-PA or HQS (:func:`gmdm_cli.denoisers.patch_denoise`), with ``return_std`` also the posterior std."""
        from .denoisers import patch_denoise

        return patch_denoise(self, noisy, sigma, method, iterations, boundary, tile, return_std)

    def checkpoint_fields(self) -> dict:
        return {"filters": self.filters.detach().cpu().clone(), "logits": self.logits.detach().cpu().clone(),
                "metadata": {"patch_size": self.patch_size}}

    @classmethod
    def expected_shapes(cls, metadata: dict) -> dict:
        size, components = metadata["patch_size"], metadata["num_components"]
        return {"filters": (size**2 - 1, size**2), "logits": (size**2 - 1, components)}

    @classmethod
    def from_checkpoint(cls, payload: dict, dtype=torch.float32) -> "PatchGMDM":
        return cls(payload["filters"].to(dtype), payload["logits"].to(dtype), float(payload["metadata"].get("gamma", 1)))

    @classmethod
    def for_training(cls, config) -> "PatchGMDM":
        """The initial model of a training run (``config``: :class:`gmdm_cli.training.TrainingConfig`)."""
        return cls.initial(config.patch_size, generator=torch.Generator().manual_seed(config.seed))

    @staticmethod
    def training_defaults(bands: int) -> dict:
        """The training options whose defaults differ for this kind: none."""
        return {}

    @staticmethod
    def check_training(config) -> None:
        """A ``ValueError`` for a training ``config`` this kind cannot train with."""
        if not 2 <= config.patch_size <= 31:
            raise ValueError(f"--patch-size {config.patch_size}: patches are 2 to 31 pixels wide")

    @staticmethod
    def adopt(config, metadata: dict) -> None:
        """Fit a training ``config`` to a model of ``metadata`` that a run starts from (fine-tuning)."""
        if metadata["patch_size"] != config.patch_size:
            raise ValueError(f"has {metadata['patch_size']}-pixel patches, not {config.patch_size}")

    @staticmethod
    def run_metadata(config) -> dict:
        """What a training run's checkpoint records of ``config`` besides the model's shape: nothing more."""
        return {}


def image_shape(shape, side: int, what: str) -> tuple[int, int]:
    """``(H, W)`` of an image ``shape`` whose sides are at least ``side``; else a ``ValueError`` naming ``what``
    needs that side."""
    height, width = shape[-2:]
    if min(height, width) < side:
        raise ValueError(f"image of {width}x{height} pixels is smaller than {what}")
    return height, width


def _log_mixture(z: torch.Tensor, variances: torch.Tensor, log_weights: torch.Tensor,
                 means: torch.Tensor) -> torch.Tensor:
    """``logsumexp_l(log w_jl - (z - mu_l)^2 / (2 v))`` for ``z, v`` of shape ``(J, m)``."""
    logits = log_weights[:, None, :] - (z[..., None] - means) ** 2 / (2 * variances[..., None])
    return torch.logsumexp(logits, dim=-1)


def _posterior(z: torch.Tensor, variances: torch.Tensor, log_weights: torch.Tensor,
               means: torch.Tensor) -> torch.Tensor:
    """Component posteriors ``gamma_jl(z) = softmax_l(log w_jl - (z - mu_l)^2 / (2 v))``, ``(J, m, L)``.

    The term ``-z^2 / (2 v)`` is the same for every ``l`` and drops out of the softmax, leaving
    ``log w_jl + (z / v) mu_l - mu_l^2 / (2 v)``: one batched matrix product
    ``[1, z/v, -1/(2v)] @ [log w_j; mu; mu^2]`` instead of several passes over ``(J, m, L)``.
    """
    num_filters = log_weights.shape[0]
    coefficients = torch.stack([torch.ones_like(z), z / variances, -0.5 / variances], -1)  # (J, m, 3)
    basis = torch.stack([log_weights, means.expand_as(log_weights), (means**2).expand_as(log_weights)], 1)
    return torch.softmax(torch.bmm(coefficients, basis.view(num_filters, 3, -1)), dim=-1)


class _PosteriorMean(torch.autograd.Function):
    """``m_j(z, v) = sum_l gamma_jl mu_l`` with hand-written derivatives, so that training never
    keeps the autograd graph of the ``(J, m, L)`` mixture tensor:

    * ``dm/dz = Var_gamma(mu) / v``,
    * ``dm/dv = Cov_gamma(mu, (z - mu)^2) / (2 v^2)``,
    * ``dm/d log w_l = gamma_l (mu_l - m)``.
    """

    @staticmethod
    def forward(ctx, z, variances, log_weights, means):
        posterior = _posterior(z, variances, log_weights, means)
        powers = torch.stack([means, means**2, means**3], 1)  # (L, 3)
        moments = posterior @ powers  # (J, m, 3): E[mu], E[mu^2], E[mu^3]
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(z, variances, means, posterior, moments)
        return moments[..., 0]

    @staticmethod
    def backward(ctx, grad_mean):
        z, variances, means, posterior, moments = ctx.saved_tensors
        m1, m2, m3 = moments.unbind(-1)
        var_mu = m2 - m1**2
        # Cov(mu, (z - mu)^2) = -2 z Var(mu) + Cov(mu, mu^2) = -2 z Var(mu) + E[mu^3] - m1 E[mu^2]
        cov = -2 * z * var_mu + m3 - m1 * m2
        grad_z = grad_mean * var_mu / variances
        grad_v = grad_mean * cov / (2 * variances**2)
        # sum over samples of g * gamma_l * (mu_l - m): (J, 2, m) @ (J, m, L) -> (J, 2, L)
        weighted = torch.stack([grad_mean, grad_mean * m1], 1) @ posterior
        grad_log_weights = weighted[:, 0] * means - weighted[:, 1]
        return grad_z, grad_v, grad_log_weights, None


def _over_chunks(function, z: torch.Tensor, variances: torch.Tensor, num_components: int) -> torch.Tensor:
    """Apply ``function(z, v)`` on ``(J, m)`` slices of responses with the filter index in
    dimension 1 (``variances`` broadcasts against ``z``), so that no more than
    ``_CHUNK_ELEMENTS`` (for ``z``'s device type) mixture terms exist at once; result shaped like ``z``."""
    shape = z.shape
    num_filters = shape[1]
    z_flat = z.movedim(1, 0).reshape(num_filters, -1)  # (J, M)
    v_flat = variances.expand(shape).movedim(1, 0).reshape(num_filters, -1)
    elements = _CHUNK_ELEMENTS.get(z.device.type, _CHUNK_ELEMENTS["cpu"])
    chunk = max(1, elements // (num_filters * num_components))
    parts = [function(z_flat[:, i:i + chunk], v_flat[:, i:i + chunk]) for i in range(0, z_flat.shape[1], chunk)]
    return torch.cat(parts, 1).view(num_filters, *shape[:1], *shape[2:]).movedim(0, 1)


def expert_log_density(model: PatchGMDM, z: torch.Tensor, t, experts: torch.Tensor | None = None) -> torch.Tensor:
    """``log psi_j(z, t)`` (Eq. 6 at time t), same shape as ``z``; with ``experts`` (indices) ``z``'s dimension 1
    holds those experts' responses only."""
    variances = model.expert_variances(t, z.dim())
    log_weights = torch.log_softmax(model.logits, dim=1)
    if experts is not None:
        variances = variances.index_select(variances.dim() - z.dim() + 1, experts)
        log_weights = log_weights[experts]
    lse = _over_chunks(lambda zc, vc: _log_mixture(zc, vc, log_weights, model.means),
                       z, variances, model.num_components)
    return lse - 0.5 * torch.log(2 * math.pi * variances)


def expert_score(model: PatchGMDM, z: torch.Tensor, t) -> torch.Tensor:
    """``d/dz log psi_j(z, t) = (sum_l gamma_jl(z) mu_l - z) / sigma_j^2(t)``, same shape as ``z``."""
    variances = model.expert_variances(t, z.dim())
    log_weights = torch.log_softmax(model.logits, dim=1)
    mean = _over_chunks(lambda zc, vc: _PosteriorMean.apply(zc, vc, log_weights, model.means),
                        z, variances, model.num_components)
    return (mean - z) / variances


def expert_curvature(model: PatchGMDM, z: torch.Tensor, t) -> torch.Tensor:
    """``d^2/dz^2 log psi_j(z, t) = (Var_gamma(mu | z) / v - 1) / v`` with ``v = sigma_j^2(t)``, same shape as ``z``
    (no gradient): the experts' part of Tweedie's second-order identity (the posterior covariance)."""
    variances = model.expert_variances(t, z.dim()).detach()
    log_weights = torch.log_softmax(model.logits.detach(), dim=1)
    means = model.means

    def spread(zc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        posterior = _posterior(zc, vc, log_weights, means)
        return posterior @ means**2 - (posterior @ means) ** 2

    with torch.no_grad():
        return (_over_chunks(spread, z.detach(), variances, model.num_components) / variances - 1) / variances


# --- patches ------------------------------------------------------------------------------

def patch_energy(model: PatchGMDM, patches: torch.Tensor, t) -> torch.Tensor:
    """Normalised ``-log f(p, t)`` of patches ``(N, a)`` (Eq. 5), on the zero-mean subspace."""
    z = patches @ model.filters.T  # (N, J)
    return -expert_log_density(model, z, t).sum(1) - model.log_normaliser()


def patch_score(model: PatchGMDM, patches: torch.Tensor, t) -> torch.Tensor:
    """``grad_p log f(p, t) = sum_j k_j psi_j'/psi_j(<k_j, p>, t)`` for patches ``(N, a)``."""
    z = patches @ model.filters.T
    return expert_score(model, z, t) @ model.filters


def patch_tweedie(model: PatchGMDM, patches: torch.Tensor, t) -> torch.Tensor:
    """Empirical Bayes estimate ``p + 2t grad log f(p, t)`` (Eq. 3, ``sigma^2 = 2t``)."""
    t = torch.as_tensor(t, dtype=patches.dtype, device=patches.device)
    sigma2 = 2 * (t[:, None] if t.dim() == 1 else t)
    return patches + sigma2 * patch_score(model, patches, t)


# --- whole images ---------------------------------------------------------------------------

def image_responses(model: PatchGMDM, images: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Responses of every overlapping patch: ``conv2d`` "valid", ``(N, 1, H, W) -> (N, J, H-b+1, W-b+1)`` (of
    every ``stride``-th in each direction, from the first, with ``stride``).

    ``conv2d`` is a correlation, so channel ``j`` at ``(r, c)`` is ``<k_j, P_(r,c) x>``.
    """
    with convolution_backend(model, images, stride):
        return F.conv2d(images, model.kernels(), stride=stride)


def image_patch_energy(model: PatchGMDM, images: torch.Tensor, t) -> torch.Tensor:
    """``-log f(P_i x, t)`` of every overlapping patch, ``(N, H-b+1, W-b+1)``.

    ``t`` may be a number, one value per image ``(N,)`` or one per patch ``(N, 1, H-b+1, W-b+1)``.
    """
    z = image_responses(model, images)
    return -expert_log_density(model, z, t).sum(1) - model.log_normaliser()


def image_patch_scores(model: PatchGMDM, images: torch.Tensor, t) -> torch.Tensor:
    """Expert scores of every overlapping patch, ``(N, J, H-b+1, W-b+1)``."""
    return expert_score(model, image_responses(model, images), t)


def patch_sum(model: PatchGMDM, coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_i P_i^T sum_j k_j c_ij``: put every patch's filter combination back in place and add them up.

    ``(N, J, h, w) -> (N, 1, h+b-1, w+b-1)``; ``conv_transpose2d`` is the adjoint of the "valid"
    ``conv2d`` of :func:`image_responses`. Divided by :func:`patch_counts`, with ``c_ij = sigma_i^2 dlog psi_j``
    this is the EB-PA correction; with ``c_ij = dlog psi_j`` the patch-averaged score of a whole image.
    """
    with convolution_backend(model, coefficients):
        return F.conv_transpose2d(coefficients, model.kernels())


def patch_counts(model: PatchGMDM, images: torch.Tensor) -> torch.Tensor:
    """``C = sum_i P_i^T P_i 1``: how many "valid" ``b x b`` patches cover each pixel of ``images``
    ``(..., H, W)``; ``(1, 1, H, W)``. Separable: pixel ``r`` of a side of ``n`` pixels lies in
    ``min(r + 1, b, n - r, n - b + 1)`` patch positions along that side."""
    b = model.patch_size

    def along(n: int) -> torch.Tensor:
        r = torch.arange(n, dtype=images.dtype, device=images.device)
        return torch.minimum(torch.minimum(r + 1, n - r), torch.tensor(float(min(b, n - b + 1)), dtype=images.dtype, device=images.device))

    height, width = images.shape[-2:]
    return (along(height)[:, None] * along(width)[None, :])[None, None]
