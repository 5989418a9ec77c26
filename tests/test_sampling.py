"""Sampling (Sec. 4.2): exact patch draws follow the model; whole-image Langevin runs."""

import math

import numpy as np
import pytest
import torch

from conftest import DEVICES, random_model
from gmdm_cli.sampling import langevin_schedule, patch_covariance, sample_image, sample_patches


def _mixture_cdf(z, weights, means, std):
    return sum(w * 0.5 * (1 + math.erf((z - m) / (std * math.sqrt(2)))) for w, m in zip(weights, means))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_sampled_responses_follow_the_experts(sigma, device):
    """Kolmogorov-Smirnov: <k_j, sample> ~ psi_j(., t) for a few experts (seeded, n = 4000)."""
    model = random_model(patch_size=3, num_components=15, seed=30)
    generator = torch.Generator(device).manual_seed(31)
    samples = sample_patches(model.to(device), 4000, sigma, generator).cpu().reshape(4000, 9)
    model = model.cpu()
    weights = torch.softmax(model.logits, 1).detach().numpy()
    means = model.means.numpy()
    std = model.expert_variances(sigma**2 / 2).detach().sqrt().numpy()
    responses = (samples @ model.filters.detach().T).numpy()
    critical = 1.95 / math.sqrt(4000)  # KS at the 0.1% level: 8 tests per device, each stream its own draws
    for j in range(0, 8, 2):
        z = np.sort(responses[:, j])
        cdf = np.array([_mixture_cdf(v, weights[j], means, std[j]) for v in z])
        statistic = max(np.max(np.arange(1, 4001) / 4000 - cdf), np.max(cdf - np.arange(4000) / 4000))
        assert statistic < critical, (j, statistic)
    # and a wrong time would be detected: the same responses against psi_j at a much larger t
    wrong = model.expert_variances(sigma**2 / 2 + 0.05).detach().sqrt().numpy()
    z = np.sort(responses[:, 0])
    cdf = np.array([_mixture_cdf(v, weights[0], means, wrong[0]) for v in z])
    assert max(np.max(np.arange(1, 4001) / 4000 - cdf), np.max(cdf - np.arange(4000) / 4000)) > critical


def test_sample_covariance_matches_the_model():
    model = random_model(patch_size=3, num_components=15, seed=32)
    sigma = 0.05
    samples = sample_patches(model, 200_000, sigma, torch.Generator().manual_seed(33)).reshape(-1, 9)
    empirical = torch.cov(samples.T)
    expected = patch_covariance(model, sigma)
    assert torch.allclose(empirical, expected, atol=0.02 * expected.abs().max().item())
    assert torch.allclose(samples.mean(), torch.tensor(0.5, dtype=samples.dtype), atol=5e-3)


def test_langevin_schedule_decreases_and_sampling_runs():
    schedule = langevin_schedule(0.3, 0.02, 5)
    assert schedule[0] == pytest.approx(0.3) and schedule[-1] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(schedule, schedule[1:]))
    model = random_model(patch_size=3, num_components=15, seed=34).float()
    images = sample_image(model, 16, 12, count=2, generator=torch.Generator().manual_seed(35),
                          schedule=schedule, steps=3)
    assert images.shape == (2, 1, 16, 12) and torch.isfinite(images).all()
