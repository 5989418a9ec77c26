"""The mathematics of the patch GMDM (Sec. 3.1): diffusion, normalisation, score, Tweedie."""

import math

import numpy as np
import pytest
import torch

from conftest import random_model
from gmdm_cli.model import (
    PatchGMDM,
    _PosteriorMean,
    expert_log_density,
    expert_score,
    patch_energy,
    patch_score,
    patch_tweedie,
)


def test_expert_variances_follow_theorem_2(small_model):
    t = torch.tensor([0.0, 0.01, 0.3], dtype=torch.float64)
    variances = small_model.expert_variances(t)  # (3, J)
    norms2 = small_model.filters.pow(2).sum(1)
    expected = small_model.sigma0**2 + 2 * t[:, None] * norms2
    assert torch.allclose(variances, expected)
    assert small_model.sigma0 == pytest.approx(2 / (small_model.num_components - 1))


def test_density_satisfies_the_diffusion_equation():
    """d/dt f(p, t) = Laplacian_p f(p, t) (Eq. 1) at random patches and times, by autograd."""
    model = random_model(patch_size=2, num_components=7, seed=1)
    generator = torch.Generator().manual_seed(2)
    for _ in range(5):
        p = (0.4 * torch.randn(4, generator=generator, dtype=torch.float64)).requires_grad_()
        t = torch.tensor(0.002 + 0.05 * torch.rand(1, generator=generator).item(), dtype=torch.float64,
                         requires_grad=True)
        density = torch.exp(-patch_energy(model, p[None], t))[0]
        (d_dt,) = torch.autograd.grad(density, t, retain_graph=True)
        (gradient,) = torch.autograd.grad(density, p, create_graph=True)
        laplacian = sum(torch.autograd.grad(gradient[i], p, retain_graph=True)[0][i] for i in range(4))
        assert d_dt.item() == pytest.approx(laplacian.item(), rel=1e-8, abs=1e-10)
        assert abs(d_dt.item()) > 1e-6  # the check is not vacuous


def _zero_mean_basis(pixels):
    """Orthonormal basis (pixels, pixels - 1) of the zero-mean subspace."""
    centring = np.eye(pixels) - 1 / pixels
    u, _, _ = np.linalg.svd(centring)
    return torch.tensor(u[:, : pixels - 1])


@pytest.mark.parametrize("t", [0.0, 0.02])
def test_density_integrates_to_one_on_the_zero_mean_subspace(t):
    """Z^{-1} = prod_j ||k_j|| (not ||k_j||^2): integrate f over the 3-D subspace of 2x2 patches."""
    model = random_model(patch_size=2, num_components=5, seed=3)
    with torch.no_grad():  # norms far from 1, so the two candidate constants differ a lot
        norms = torch.tensor([[0.7], [1.3], [2.1]], dtype=torch.float64)
        model.filters.copy_(model.filters / model.filters.norm(dim=1, keepdim=True) * norms)
    basis = _zero_mean_basis(4)  # (4, 3)
    axis = torch.linspace(-4, 4, 161, dtype=torch.float64)
    step = axis[1] - axis[0]
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        density = torch.exp(-patch_energy(model, grid @ basis.T, t))
    integral = density.sum().item() * step.item() ** 3
    assert integral == pytest.approx(1.0, abs=2e-3)
    # With Z^{-1} = prod ||k_j||^2 the integral would be prod ||k_j|| = 1.91 instead.
    assert integral * norms.prod().item() == pytest.approx(1.911, abs=5e-3)


def test_expert_score_is_the_derivative_of_the_log_density(small_model):
    generator = torch.Generator().manual_seed(4)
    z = (0.5 * torch.randn(6, small_model.filters.shape[0], generator=generator, dtype=torch.float64))
    t = torch.rand(6, generator=generator, dtype=torch.float64) * 0.05
    z.requires_grad_()
    (derivative,) = torch.autograd.grad(expert_log_density(small_model, z, t).sum(), z)
    assert torch.allclose(expert_score(small_model, z.detach(), t), derivative, atol=1e-9)


def test_patch_score_is_the_gradient_of_minus_the_energy(small_model):
    generator = torch.Generator().manual_seed(5)
    p = torch.rand(4, 9, generator=generator, dtype=torch.float64).requires_grad_()
    (gradient,) = torch.autograd.grad(-patch_energy(small_model, p, 0.01).sum(), p)
    assert torch.allclose(patch_score(small_model, p.detach(), 0.01), gradient, atol=1e-9)


def test_posterior_mean_hand_written_gradients_match_autograd(small_model):
    generator = torch.Generator().manual_seed(6)
    num_filters = small_model.filters.shape[0]
    z = (0.4 * torch.randn(num_filters, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    variances = (1e-3 + 0.05 * torch.rand(num_filters, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    log_weights = torch.log_softmax(small_model.logits.detach(), 1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c: _PosteriorMean.apply(a, b, c, small_model.means), (z, variances, log_weights))


def _gm_posterior_mean(u, weights, means, variance, noise_variance):
    """E[U | U + N = u] for U ~ sum_l w_l N(means_l, variance), N ~ N(0, noise_variance)."""
    total = variance + noise_variance
    log_r = np.log(weights) - (u - means) ** 2 / (2 * total)
    r = np.exp(log_r - log_r.max())
    r /= r.sum()
    return np.sum(r * (means + variance / total * (u - means)))


def test_tweedie_equals_the_closed_form_posterior_mean():
    """In each filter direction u_j = <k_j, p>/||k_j|| the prior is a 1-D Gaussian mixture; the
    exact posterior mean under Gaussian noise must equal Tweedie's formula (Eq. 3)."""
    model = random_model(patch_size=2, num_components=9, seed=7)
    filters = model.filters.detach().numpy()
    norms = np.linalg.norm(filters, axis=1)
    weights = torch.softmax(model.logits.detach(), 1).numpy()
    means = model.means.numpy()
    sigma = 0.15
    generator = np.random.default_rng(8)
    noisy = generator.uniform(0, 1, size=(3, 4))
    estimate = patch_tweedie(model, torch.tensor(noisy), sigma**2 / 2).detach().numpy()
    for y, x_hat in zip(noisy, estimate):
        expected = np.full(4, y.mean())  # the DC component is left alone
        for k, norm, w in zip(filters, norms, weights):
            u = k @ y / norm
            expected += k / norm * _gm_posterior_mean(u, w, means / norm, model.sigma0**2 / norm**2, sigma**2)
        assert np.allclose(x_hat, expected, atol=1e-10)


def test_float32_matches_float64(small_model):
    generator = torch.Generator().manual_seed(9)
    p = torch.rand(50, 9, generator=generator, dtype=torch.float64)
    single = PatchGMDM(small_model.filters.detach().float(), small_model.logits.detach().float())
    reference = patch_tweedie(small_model, p, 0.005)
    assert torch.allclose(patch_tweedie(single, p.float(), 0.005).double(), reference, atol=1e-5)
    energy64 = patch_energy(small_model, p, 0.005)
    assert torch.allclose(patch_energy(single, p.float(), 0.005).double(), energy64, rtol=1e-5, atol=1e-4)


def test_initialisation_follows_section_4_1():
    model = PatchGMDM.initial(7, generator=torch.Generator().manual_seed(0))
    assert model.filters.shape == (48, 49) and model.logits.shape == (48, 125)
    assert model.means[0].item() == -1 and model.means[-1].item() == 1
    mu = model.means.double()
    expected = 0.1 * math.sqrt(1000) / (1 + 1000 * mu**2)
    assert torch.allclose(model.logits[0].double(), expected, atol=1e-6)
    assert model.filters.std().item() == pytest.approx(1 / 7, rel=0.05)
