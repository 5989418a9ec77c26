"""Experts at a fixed diffusion time, tabulated: fast and within a stated tolerance of the exact model.

At a fixed ``t`` every expert is a smooth 1-D function of its response: ``-log psi_j(z, t)`` and
``d/dz log psi_j(z, t)`` vary on the scale ``sigma_j(t) >= sigma_0``. We sample both exactly (float64,
all ``L`` components) on a uniform grid per expert with spacing ``h_j = resolution * sigma_j(t)`` over
``[-gamma - margin sigma_j, gamma + margin sigma_j]`` and interpolate linearly: the interpolation error
of a function with second derivative ``f''`` is at most ``h^2 |f''| / 8``, i.e. errors of order
``resolution^2 / 8`` relative to the functions' natural scales (``1 / sigma_j`` for the score).
Responses off the grid are rare (it spans the means plus ``margin`` standard deviations); they are
evaluated exactly.

A lookup costs a few elementwise passes over the responses instead of ``L`` exponentials each.
"""

from __future__ import annotations

import math

import torch

from .model import PatchGMDM


class ExpertTable:
    """``-log psi_j(., t)`` and ``d/dz log psi_j(., t)`` of every expert at one time ``t``, tabulated."""

    def __init__(self, model: PatchGMDM, t: float, resolution: float = 0.02, margin: float = 10.0):
        dtype, device = model.filters.dtype, model.filters.device
        filters = model.filters.detach().double()
        self.t = float(t)
        self.variances64 = model.sigma0**2 + 2 * self.t * filters.pow(2).sum(1)  # (J,), Theorem 2
        self.log_weights = torch.log_softmax(model.logits.detach().double(), dim=1)  # (J, L)
        self.means = model.means.double()
        std = self.variances64.sqrt()
        width = 2 * model.gamma + 2 * margin * std
        counts = torch.ceil(width / (resolution * std)).long() + 1  # (J,)
        low, step = -model.gamma - margin * std, width / (counts - 1)
        offsets = torch.cumsum(counts, 0) - counts
        # one ragged grid: expert j owns entries offsets[j] .. offsets[j] + counts[j] - 1
        owner = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
        grid = low[owner] + step[owner] * (torch.arange(int(counts.sum()), device=device) - offsets[owner])
        energies, scores = self._exact(grid, owner)
        self.low, self.step = low.to(dtype), step.to(dtype)
        self.counts, self.offsets = counts, offsets
        self.energies, self.scores = energies.to(dtype), scores.to(dtype)

    def _exact(self, z: torch.Tensor, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``-log psi_j(z)`` and ``d/dz log psi_j(z)`` in float64 for responses ``z`` of experts ``owner``."""
        energies, scores = [], []
        for chunk in torch.split(torch.arange(len(z), device=z.device), 1 << 15):
            zc, v = z[chunk, None].double(), self.variances64[owner[chunk], None]  # (P, 1)
            logits = self.log_weights[owner[chunk]] - (zc - self.means) ** 2 / (2 * v)  # (P, L)
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            energies.append((0.5 * torch.log(2 * math.pi * v) - lse)[:, 0])
            scores.append(((torch.exp(logits - lse) @ self.means)[:, None] - zc)[:, 0] / v[:, 0])
        if not energies:
            return z.new_zeros(0, dtype=torch.float64), z.new_zeros(0, dtype=torch.float64)
        return torch.cat(energies), torch.cat(scores)

    def _lookup(self, table: torch.Tensor, z: torch.Tensor, which: int) -> torch.Tensor:
        """Interpolate ``table`` at responses ``z`` (filter index in dimension 1); exact off the grid."""
        shape = (1, -1) + (1,) * (z.dim() - 2)
        position = (z - self.low.view(shape)) / self.step.view(shape)
        last = (self.counts - 1).view(shape)
        left = position.floor().long().clamp(min=0).minimum(last - 1)
        weight = position - left
        index = left + self.offsets.view(shape)
        value = torch.lerp(table.take(index), table.take(index + 1), weight)
        outside = (position < 0) | (position > last)
        if outside.any():
            owner = torch.nonzero(outside)[:, 1]
            value[outside] = self._exact(z[outside], owner)[which].to(value.dtype)
        return value

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """``d/dz log psi_j(z, t)`` for responses with the filter index in dimension 1."""
        return self._lookup(self.scores, z, 1)

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """``-log psi_j(z, t)`` for responses with the filter index in dimension 1."""
        return self._lookup(self.energies, z, 0)

    @property
    def size(self) -> int:
        """Number of tabulated points over all experts."""
        return int(self.counts.sum())
