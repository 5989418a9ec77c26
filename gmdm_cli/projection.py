"""Projection of filters onto zero-mean, pairwise-orthogonal sets (Sec. 4.1.1, Algorithm 1)."""

from __future__ import annotations

import torch


def orthogonal_projection(filters: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Nearest zero-mean filters with pairwise orthogonal rows, ``proj_O`` of Eq. (19).

    ``filters`` is ``(J, a)`` with the filters ``k_j`` as rows, i.e. ``K^T`` in the paper's
    notation. The mean of every filter is removed first (the model leaves the patch mean
    alone, Eq. 10); then Algorithm 1 alternates, starting from ``D = Id``,

    * ``O = U`` from the polar decomposition ``U P = D K^T`` (an SVD: ``U = W V^T``),
    * ``D_ii = ((O^T K)_ii)_+``,

    for ``steps - 1`` rounds, and returns ``O D`` (as rows, ``(J, a)``). Works in the input's
    dtype; a float64 SVD is used internally for float32 input.
    """
    if steps < 2:
        raise ValueError("Algorithm 1 needs at least 2 steps")
    dtype = filters.dtype
    k_t = filters.to(torch.float64 if dtype == torch.float32 else dtype)
    k_t = k_t - k_t.mean(dim=1, keepdim=True)  # (J, a), rows zero-mean
    scales = torch.ones(k_t.shape[0], dtype=k_t.dtype, device=k_t.device)  # diag(D)
    for _ in range(steps - 1):
        left, _, right_t = torch.linalg.svd(scales[:, None] * k_t, full_matrices=False)
        rows = left @ right_t  # O^T: (J, a), orthonormal rows
        scales = (rows * k_t).sum(1).clamp_min(0)  # ((O^T K)_ii)_+
    return (scales[:, None] * rows).to(dtype)
