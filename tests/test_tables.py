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


def test_ladder_table_is_the_exact_sum_of_expert_energies_at_every_level():
    """LadderTable: sum_j -log psi_j(z_j, sigma_k^2 / 2) at every level of a ladder by cubic Hermite rows, against
    the exact float64 mixtures (expert_log_density), for responses inside the grids and beyond their reach (the
    outermost component's Gaussian tail); a response beyond the kept table's reach makes a wider one, which is
    kept."""
    from gmdm_cli.tables import ladder_table

    model = random_model(patch_size=3, num_components=31, seed=52)
    with torch.no_grad():
        model.filters.mul_(torch.linspace(0.2, 5, 8, dtype=torch.float64)[:, None])  # small and large norms
    experts, levels = [1, 4, 6], torch.logspace(-2.5, -0.3, 12, dtype=torch.float64)
    z = torch.randn(8, 40, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(53)) * 0.8
    ordinary = ladder_table(model, experts, levels, z[experts].abs().amax((1, 2)))
    z[:, 0, :5] = torch.tensor([-60.0, -9.0, 3.5, 9.0, 60.0])  # far beyond every level's mixture
    table = ladder_table(model, experts, levels, z[experts].abs().amax((1, 2)))
    assert table is not ordinary and bool((table.reach > ordinary.reach).all())  # wider grids were made
    assert bool((table.reach < 60).all())  # and the tail from their ends beyond
    assert ladder_table(model, experts, levels, 0.5 * z[experts].abs().amax((1, 2))) is table  # kept
    with torch.no_grad():
        exact = torch.stack([-expert_log_density(model, z[None], float(s) ** 2 / 2)[0, experts].sum(0)
                             for s in levels])
    found = table.energies(z[experts])
    assert found.shape == exact.shape
    inside = (z[experts].abs() <= table.reach[:, None, None]).all(0).expand_as(exact)
    assert (found - exact)[inside].abs().max() < 2e-3  # three experts, ~1e-3 of a nat each at most
    assert ((found - exact).abs() / exact.abs())[~inside].max() < 5e-3  # hundreds of nats above any minimum


def test_ladder_scores_read_every_level_pair_as_the_exact_mixtures():
    """LadderScores: the correction sigma_k^2 d/dz log psi_j of a patch between two ladder levels, interpolated
    linearly in the fraction between them, within 2e-3 of its scale sigma^2 / sigma_j(t) of the exact values
    (the grid's linear interpolation), on the grids, off them (evaluated exactly) and at their ends."""
    from gmdm_cli.denoisers import LADDER_LEVELS
    from gmdm_cli.tables import LadderScores

    model = random_model(patch_size=3, num_components=31, seed=56)
    with torch.no_grad():
        model.filters.mul_(torch.linspace(0.2, 5, 8, dtype=torch.float64)[:, None])  # small and large norms
    levels = LADDER_LEVELS[30:52]  # sigma 0.008-0.1
    table = LadderScores(model, levels)
    generator = torch.Generator().manual_seed(57)
    count = 3000
    level = torch.randint(0, len(levels) - 1, (count,), generator=generator)
    fraction = torch.rand(count, generator=generator, dtype=torch.float64)
    fraction[:50] = 0.0
    fraction[50:100] = 1.0
    deviations = table.variances.sqrt()  # (J, K)
    z = torch.randn(8, count, generator=generator, dtype=torch.float64) * (3 * deviations[:, level] + 0.5)
    z[:, :3] = torch.stack([-table.reach, table.reach, 1.5 * table.reach], 1).double()  # the ends, and beyond
    found = table.corrections(z, level, fraction)
    ends = []
    for shift in (0, 1):  # the exact corrections at the levels below and above each patch
        values = torch.empty(8, count, dtype=torch.float64)
        for k in torch.unique(level + shift).tolist():
            chosen = level + shift == k
            with torch.no_grad():
                score = expert_score(model, z[:, chosen].T.contiguous(), float(levels[k]) ** 2 / 2)  # (n, J)
            values[:, chosen] = score.T * levels[k] ** 2
        ends.append(values)
    expected = torch.lerp(ends[0], ends[1], fraction)
    scale = levels[level] ** 2 / deviations[:, level]
    assert ((found - expected).abs() / scale).max() < 2e-3
