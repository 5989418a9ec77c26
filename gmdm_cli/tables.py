"""Experts at a fixed diffusion time, tabulated: fast and within a stated tolerance of the exact model.

At a fixed ``t`` every expert is a smooth 1-D function of its response: ``-log psi_j(z, t)`` and
``d/dz log psi_j(z, t)`` vary on the scale ``sigma_j(t) >= sigma_0``. We sample both exactly (float64,
all ``L`` components) on a uniform grid per expert with spacing ``h_j = resolution * sigma_j(t)`` over
``[-gamma - 10 sigma_j, gamma + 10 sigma_j]`` and interpolate linearly: the interpolation error of a
function with second derivative ``f''`` is at most ``h^2 |f''| / 8``, i.e. relative errors of order
``resolution^2 / 8``. Beyond the grid only the outermost component matters (its neighbours are more
than 10 standard deviations further away), so the expert is a single Gaussian there and both
functions are continued exactly: the score linearly with slope ``-1 / sigma_j^2``, the energy
quadratically.

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
        exact = PatchGMDM(model.filters.detach().double(), model.logits.detach().double(), model.gamma).to(device)
        variances = exact.expert_variances(float(t))  # (J,)
        std = variances.sqrt()
        low = -model.gamma - margin * std
        counts = torch.ceil((2 * model.gamma + 2 * margin * std) / (resolution * std)).long() + 1  # (J,)
        step = (2 * model.gamma + 2 * margin * std) / (counts - 1)
        offsets = torch.cumsum(counts, 0) - counts
        # one ragged grid: expert j owns entries offsets[j] .. offsets[j] + counts[j] - 1
        owner = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
        position = torch.arange(int(counts.sum()), device=device) - offsets[owner]
        grid = low[owner] + step[owner] * position
        log_weights = torch.log_softmax(exact.logits, dim=1)
        energy, score = [], []
        for chunk in torch.split(torch.arange(len(grid), device=device), 1 << 15):
            z, v = grid[chunk, None], variances[owner[chunk], None]  # (P, 1)
            logits = log_weights[owner[chunk]] - (z - exact.means) ** 2 / (2 * v)  # (P, L)
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            energy.append((0.5 * torch.log(2 * math.pi * v) - lse)[:, 0])
            score.append(((torch.exp(logits - lse) @ exact.means)[:, None] - z)[:, 0] / v[:, 0])
        energy, score = torch.cat(energy), torch.cat(score)
        self.t = float(t)
        self.low, self.step, self.counts, self.offsets = low.to(dtype), step.to(dtype), counts, offsets
        self.variances = variances.to(dtype)
        self.energies, self.scores = energy.to(dtype), score.to(dtype)

    def _locate(self, z: torch.Tensor):
        """Flat table index of the left neighbour, interpolation weight, and the excess beyond the grid."""
        shape = (1, -1) + (1,) * (z.dim() - 2)
        low, step = self.low.view(shape), self.step.view(shape)
        last = (self.counts - 1).view(shape)
        position = (z - low) / step
        inside = position.clamp(min=0).minimum(last.to(z.dtype))
        left = inside.floor().long().minimum(last - 1)
        weight = inside - left
        excess = (position - inside) * step  # z minus its clamped value: nonzero only off the grid
        return left + self.offsets.view(shape), weight, excess

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """``d/dz log psi_j(z, t)`` for responses with the filter index in dimension 1."""
        index, weight, excess = self._locate(z)
        table = self.scores
        value = torch.lerp(table.take(index), table.take(index + 1), weight)
        return value - excess / self.variances.view((1, -1) + (1,) * (z.dim() - 2))

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """``-log psi_j(z, t)`` for responses with the filter index in dimension 1."""
        index, weight, excess = self._locate(z)
        left, right = self.energies.take(index), self.energies.take(index + 1)
        value = torch.lerp(left, right, weight)
        slope = -torch.lerp(self.scores.take(index), self.scores.take(index + 1), weight)
        variances = self.variances.view((1, -1) + (1,) * (z.dim() - 2))
        return value + excess * slope + excess**2 / (2 * variances)

    @property
    def size(self) -> int:
        """Number of tabulated points over all experts."""
        return int(self.counts.sum())
