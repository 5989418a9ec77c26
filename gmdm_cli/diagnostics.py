"""What a model has learned: filters, potentials and their fit to data (Fig. 1, Appendix B).

* potentials ``-log psi_j(z, t)`` of every expert at chosen noise levels;
* empirical marginals ``h_j(z, t)`` of the responses ``<k_j, p + sqrt(2t) n>`` of image patches
  (Eq. 21), as histograms;
* the normalised mean-squared error of Appendix B between model and data marginals,
  ``NMSE_kappa(t) = sum_j int_{Omega_j} (psi_j - h_j)^2 dz / max_{Omega_j} h_j^2``, where the
  credible interval ``Omega_j(t, kappa)`` leaves mass ``kappa`` of ``h_j`` in each tail.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .image_io import write_figure
from .model import PatchGMDM, expert_log_density, time_from_sigma

KAPPAS = (0.005, 0.01, 0.02)


def response_ranges(model: PatchGMDM, sigma_max: float) -> torch.Tensor:
    """Per-expert plotting half-width: 4 standard deviations of ``psi_j(., t_max)``, at most ``gamma``+."""
    weights = torch.softmax(model.logits.detach(), 1)
    mean = weights @ model.means
    variance = weights @ model.means**2 - mean**2 + model.expert_variances(time_from_sigma(sigma_max)).detach()
    return torch.clamp(4 * variance.sqrt(), max=1.2 * model.gamma)


def expert_densities(model: PatchGMDM, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """``psi_j(z, t)`` on per-expert grids ``(J, G)``."""
    with torch.no_grad():
        return expert_log_density(model, grid.T.contiguous(), time_from_sigma(sigma)).T.exp()


def noisy_responses(model: PatchGMDM, patches: torch.Tensor, sigma: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``<k_j, p + sigma n>`` for patches ``(N, a)``: ``(J, N)``."""
    noisy = patches + sigma * torch.randn(patches.shape, generator=generator, dtype=patches.dtype)
    return (noisy @ model.filters.detach().T).T


def nmse(model: PatchGMDM, patches: torch.Tensor, sigma: float, kappas=KAPPAS, bins: int = 201,
         generator: torch.Generator | None = None) -> dict[float, float]:
    """Appendix B's ``NMSE_kappa`` at noise level ``sigma`` (0-1 scale) for each ``kappa``."""
    responses = noisy_responses(model, patches, sigma, generator).double().numpy()  # (J, N)
    result = {}
    for kappa in kappas:
        empirical, centres, widths = [], [], []
        for values in responses:
            low, high = np.quantile(values, [kappa, 1 - kappa])
            histogram, edges = np.histogram(values, bins=bins, range=(low, high))
            widths.append(edges[1] - edges[0])
            empirical.append(histogram / (len(values) * widths[-1]))  # h_j as a density on R
            centres.append((edges[:-1] + edges[1:]) / 2)
        empirical, widths = np.array(empirical), np.array(widths)
        grid = torch.tensor(np.array(centres), dtype=model.filters.dtype)
        model_density = expert_densities(model, grid, sigma).double().numpy()
        errors = ((model_density - empirical) ** 2).sum(1) * widths / empirical.max(1) ** 2
        result[kappa] = float(errors.sum())
    return result


def inspect_figure(model: PatchGMDM, path, sigmas=(0.0, 0.05, 0.1, 0.2), patches: torch.Tensor | None = None,
                   max_filters: int = 48, generator: torch.Generator | None = None, overwrite: bool = True) -> None:
    """Fig. 1: filters (top), ``-log psi_j(., t)`` at ``sigmas`` (middle) and, given ``patches``,
    the empirical ``-log h_j`` (bottom); saved to ``path`` (atomically; without ``overwrite`` never over an
    existing file). Experts are sorted by filter norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    filters = model.filters.detach()
    norms = filters.norm(dim=1)
    order = torch.argsort(norms, descending=True)[:max_filters]
    columns = min(12, len(order))
    rows_per_block = math.ceil(len(order) / columns)
    blocks = 3 if patches is not None else 2
    figure, axes = plt.subplots(blocks * rows_per_block, columns, squeeze=False,
                                figsize=(1.3 * columns, 1.25 * blocks * rows_per_block))
    grid = torch.linspace(-1, 1, 201, dtype=filters.dtype) * response_ranges(model, max(sigmas))[:, None]  # (J, G)
    potentials = [-expert_densities(model, grid, sigma).double().log().numpy() for sigma in sigmas]
    responses = [noisy_responses(model, patches, sigma, generator).double().numpy()
                 for sigma in sigmas] if patches is not None else []
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(sigmas)))
    b = model.patch_size
    for slot, j in enumerate(order.tolist()):
        row, column = divmod(slot, columns)
        z = grid[j].double().numpy()
        axes[row, column].imshow(filters[j].view(b, b).double().numpy(), cmap="gray")
        axes[row, column].set_title(f"|k|={norms[j]:.2f}", fontsize=6)
        for potential, colour in zip(potentials, colours):
            axes[rows_per_block + row, column].plot(z, potential[j] - potential[j].min(), color=colour,
                                                    linewidth=0.8)
        for values, colour in zip(responses, colours):
            histogram, edges = np.histogram(values[j], bins=101, range=(z[0], z[-1]), density=True)
            with np.errstate(divide="ignore"):
                energy = -np.log(histogram)
            axes[2 * rows_per_block + row, column].plot((edges[:-1] + edges[1:]) / 2,
                                                        energy - energy[np.isfinite(energy)].min(),
                                                        color=colour, linewidth=0.8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[rows_per_block:].ravel():
        ax.set_ylim(0, 12)
    for block in range(blocks):
        for slot in range(len(order), columns * rows_per_block):
            axes[block * rows_per_block + slot // columns, slot % columns].axis("off")
    labels = ", ".join(f"{255 * s:g}" for s in sigmas)
    figure.suptitle(f"GMDM {b}x{b}: filters, potentials -log psi_j (sigma = {labels} on the 0-255 scale)"
                    + (", empirical -log h_j" if patches is not None else ""), fontsize=9)
    figure.tight_layout()
    try:
        write_figure(path, figure, overwrite, dpi=110)
    finally:
        plt.close(figure)


def patch_grid(patches: np.ndarray, columns: int | None = None, gap: int = 1) -> np.ndarray:
    """Tile ``(N, b, b)`` patches into one image with ``gap`` white pixels between them; every patch is
    stretched to [0, 1] on its own (as in Fig. 2), so structure shows whatever its contrast."""
    count, b, _ = patches.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.ones((rows * (b + gap) - gap, columns * (b + gap) - gap))
    low = patches.min(axis=(1, 2), keepdims=True)
    high = patches.max(axis=(1, 2), keepdims=True)
    stretched = (patches - low) / np.maximum(high - low, 1e-12)
    for index, patch in enumerate(stretched):
        r, c = divmod(index, columns)
        grid[r * (b + gap): r * (b + gap) + b, c * (b + gap): c * (b + gap) + b] = patch
    return grid


def demo_run(image: str, sigma: float, seed: int, model) -> dict:
    """``gmdm demo``: scikit-image's picture ``image`` as gray, with Gaussian noise of level ``sigma`` (0-1 scale)
    from ``seed``, denoised by EB-PA: the three images, the noisy and denoised PSNRs and the seconds taken."""
    import time

    from skimage import data

    from .denoisers import denoise_array, psnr
    from .image_io import to_gray

    clean = to_gray(getattr(data, image)() / 255.0)
    noisy = clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape)
    started = time.perf_counter()
    denoised = denoise_array(model, noisy, sigma)
    return {"clean": clean, "noisy": noisy, "denoised": denoised, "noisy_psnr": psnr(noisy, clean),
            "denoised_psnr": psnr(denoised, clean), "seconds": time.perf_counter() - started}
