"""Algorithm 1: the projection onto zero-mean, pairwise-orthogonal filters (Eq. 19)."""

import pytest
import torch

from gmdm_cli.projection import orthogonal_projection


def _random_filters(num_filters=8, pixels=9, seed=0):
    return torch.randn(num_filters, pixels, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / 3


def _is_feasible(filters, atol=1e-10):
    gram = filters @ filters.T
    off_diagonal = gram - torch.diag(torch.diag(gram))
    return off_diagonal.abs().max() < atol and filters.sum(1).abs().max() < atol


@pytest.mark.parametrize("steps", [3, 10])
def test_projection_meets_the_constraints(steps):
    projected = orthogonal_projection(_random_filters(), steps)
    assert _is_feasible(projected)
    assert (projected.norm(dim=1) > 0).all()


def test_projection_is_no_farther_than_random_feasible_candidates():
    filters = _random_filters(seed=1)
    centred = filters - filters.mean(1, keepdim=True)
    distance = (orthogonal_projection(filters, 3) - filters).norm()
    generator = torch.Generator().manual_seed(2)
    # Feasible candidates: orthonormal zero-mean rows (a QR of centred noise) with positive
    # scales; the best scales for given rows are the projections of the filters on them.
    for _ in range(200):
        noise = torch.randn(9, 8, generator=generator, dtype=torch.float64)
        rows = torch.linalg.qr(noise - noise.mean(0))[0].T  # (8, 9), orthonormal, zero-mean
        scales = (rows * centred).sum(1).clamp_min(0)
        candidate = scales[:, None] * rows
        assert _is_feasible(candidate)
        assert distance <= (candidate - filters).norm() + 1e-12


def test_projection_is_locally_optimal():
    """Small feasible perturbations of the converged projection never get closer to K."""
    filters = _random_filters(seed=3)
    projected = orthogonal_projection(filters, 50)
    distance = (projected - filters).norm()
    norms = projected.norm(dim=1, keepdim=True)
    generator = torch.Generator().manual_seed(4)
    for _ in range(200):
        skew = 1e-3 * torch.randn(8, 8, generator=generator, dtype=torch.float64)
        rotation = torch.linalg.matrix_exp(skew - skew.T)
        # rotating the orthonormal rows among themselves keeps them zero-mean and orthonormal
        rows = rotation @ (projected / norms)
        scale = norms * (1 + 1e-3 * torch.randn(8, 1, generator=generator, dtype=torch.float64))
        candidate = scale * rows
        assert _is_feasible(candidate, atol=1e-9)
        assert distance <= (candidate - filters).norm() + 1e-12


def test_projection_keeps_feasible_filters():
    feasible = orthogonal_projection(_random_filters(seed=5), 10)
    assert torch.allclose(orthogonal_projection(feasible, 3), feasible, atol=1e-10)


def test_projection_keeps_float32():
    projected = orthogonal_projection(_random_filters().float(), 3)
    assert projected.dtype == torch.float32
    assert _is_feasible(projected.double(), atol=1e-5)
