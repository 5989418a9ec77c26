"""Appendix B's NMSE: small for data drawn from the model, large for data that is not."""

import torch

from conftest import random_model
from gmdm_cli.diagnostics import nmse, patch_grid
from gmdm_cli.sampling import sample_patches


def test_nmse_is_small_on_model_samples_and_large_on_other_data():
    model = random_model(patch_size=3, num_components=15, seed=40)
    generator = torch.Generator().manual_seed(41)
    own = sample_patches(model, 50_000, 0.0, generator).reshape(-1, 9)
    other = 0.5 * torch.rand(50_000, 9, generator=generator, dtype=torch.float64)
    for sigma in (0.0, 0.05):
        fit = nmse(model, own, sigma, bins=51, generator=generator)
        misfit = nmse(model, other, sigma, bins=51, generator=generator)
        for kappa in fit:
            assert fit[kappa] < 0.05 and misfit[kappa] > 10 * fit[kappa]


def test_patch_grid_tiles_and_stretches():
    patches = torch.arange(5 * 4, dtype=torch.float64).view(5, 2, 2).numpy()
    grid = patch_grid(patches, columns=3, gap=1)
    assert grid.shape == (2 * 3 - 1, 3 * 3 - 1)
    assert grid[0, 0] == 0 and grid[1, 1] == 1 and grid[0, 2] == 1  # stretched patch, white gap
