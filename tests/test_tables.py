"""The tabulated experts against the exact float64 mixtures."""

import numpy as np
import pytest
import torch

from conftest import random_model
from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import ebpa, psnr
from gmdm_cli.model import PatchGMDM, expert_log_density, expert_score
from gmdm_cli.tables import ExpertTable


@pytest.mark.parametrize("sigma", [0.0, 2 / 255, 25 / 255, 0.4])
def test_table_matches_exact_experts_inside_and_outside_the_grid(sigma):
    model = random_model(patch_size=3, num_components=31, seed=50)
    with torch.no_grad():
        model.filters.mul_(torch.linspace(0.2, 5, 8, dtype=torch.float64)[:, None])  # small and large norms
    table = ExpertTable(model.float(), sigma**2 / 2)
    exact = random_model(patch_size=3, num_components=31, seed=50)
    with torch.no_grad():
        exact.filters.mul_(torch.linspace(0.2, 5, 8, dtype=torch.float64)[:, None])
    z = torch.linspace(-6, 6, 20001, dtype=torch.float64)[:, None].expand(-1, 8).contiguous()
    with torch.no_grad():
        score = expert_score(exact, z, sigma**2 / 2)
        energy = -expert_log_density(exact, z, sigma**2 / 2)
    score_error = (table.score(z.float()).double() - score).abs()
    # explicit bound: 1e-3 of the score's scale 1/sigma_j(t), everywhere (including far outside)
    scale = 1 / exact.expert_variances(sigma**2 / 2).sqrt()
    assert (score_error / scale).max() < 1e-3
    energy_error = (table.energy(z.float()).double() - energy).abs() / energy.abs().clamp_min(1)
    assert energy_error.max() < 1e-4


def test_fast_ebpa_matches_the_exact_float64_model(camera):
    model = load_model("7x7")
    exact = PatchGMDM(model.filters.detach().double(), model.logits.detach().double())
    rng = np.random.default_rng(51)
    for sigma in (5 / 255, 25 / 255, 100 / 255):
        noisy = camera + sigma * rng.standard_normal(camera.shape)
        with torch.no_grad():
            fast = ebpa(model, torch.tensor(noisy, dtype=torch.float32), sigma).double().numpy()
            reference = ebpa(exact, torch.tensor(noisy), sigma, exact=True).numpy()
        assert np.abs(fast - reference).max() < 2e-4
        assert abs(psnr(fast, camera) - psnr(reference, camera)) < 0.01
