"""Experts at a fixed diffusion time, tabulated: fast and within a stated tolerance of the exact model.

At a fixed ``t`` every expert is a smooth 1-D function of its response: ``-log psi_j(z, t)`` and
``d/dz log psi_j(z, t)`` vary on the scale ``sigma_j(t) >= sigma_0`` (Theorem 2). We sample both exactly
(float64, all ``L`` components) with their derivatives on a coarse uniform grid per expert over
``[-gamma - margin sigma_j, gamma + margin sigma_j]``, resample them by cubic Hermite interpolation (error
``O(h^4)``) onto ``G`` points per expert with spacing ``h_j <= resolution * sigma_j(t)``, and interpolate
linearly there: the interpolation error of a function with second derivative ``f''`` is at most
``h^2 |f''| / 8``, i.e. errors of order ``resolution^2 / 8`` relative to the functions' natural scales
(``1 / sigma_j`` for the score). Responses off the grid are rare (it spans the
means plus ``margin`` standard deviations); they are evaluated exactly.

The ``(J, G)`` tables are read by two gathers (the value at the point left of each response and the step to
the next) and an interpolation, a few passes over the responses on CPU and CUDA instead of ``L`` exponentials
per response.
:func:`expert_table` keeps the tables of recent ``(model, t)`` pairs, so denoising many images at one noise
level builds them once.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .kinds import GMDM


def exact_values(log_weights: torch.Tensor, means: torch.Tensor, z: torch.Tensor, owner: torch.Tensor,
                 variances: torch.Tensor, derivatives: bool = False, third: bool = False) -> tuple[torch.Tensor, ...]:
    """Exact ``-log psi_j(z)`` and ``d/dz log psi_j(z)`` in float64 for responses ``z`` ``(m,)`` of the experts
    ``owner`` ``(m,)``, each with its own variance ``v`` (``variances`` ``(m,)``, float64: ``sigma_0^2 + 2 t
    ||k_j||^2``), from the experts' ``log_weights`` ``(J, L)`` and the components' ``means`` ``(L,)`` (float64);
    with ``derivatives`` also ``d^2/dz^2 log psi_j(z) = (Var[mu | z] / v - 1) / v``,
    with ``third`` also ``d^3/dz^3 log psi_j(z) = kappa_3[mu | z] / v^3`` (the third cumulant: ``log psi_j``
    is ``-z^2 / 2v`` plus the cumulant generating function of the means at ``z / v``).

    Only the components within ``B`` standard deviations of ``z`` are summed, ``B^2 / 2`` being 40 nats more
    than the spread of the expert's log-weights: every component left out weighs less than ``e^-40`` times
    the nearest one (whose mean is within half a spacing of ``z``, or far beyond the ends),
    far below float64's resolution. At small ``t`` that is a fifth of the ``L`` components (all of them once
    the band would hold a half)."""
    results = [[], [], [], []]
    count = len(means)
    spacing = float(means[1] - means[0])
    spread = (log_weights.amax(1) - log_weights.amin(1)).clamp_min(0)  # (J,)
    reach = torch.ceil(torch.sqrt(2 * (spread[owner] + 40) * variances) / spacing).long() + 1  # (m,)
    for chunk in torch.split(torch.arange(len(z), device=z.device), max(1, (1 << 22) // count)):
        experts = owner[chunk]
        half = int(reach[chunk].max())
        zc, v = z[chunk, None].double(), variances[chunk, None]  # (m, 1)
        if 4 * half < count:  # the band of components around each z
            nearest = torch.round((zc - means[0]) / spacing).long().clamp(0, count - 1)  # (m, 1)
            index = nearest + torch.arange(-half, half + 1, device=z.device)  # (m, 2 half + 1)
            inside = (index >= 0) & (index < count)
            index = index.clamp(0, count - 1)
            centres = means[index]
            weights = log_weights[experts[:, None], index].masked_fill(~inside, -math.inf)
        else:  # all of them
            centres, weights = means, log_weights[experts]
        offsets = centres - zc  # (m, band or L): the moments about z (shift-invariant cumulants)
        logits = weights - offsets**2 / (2 * v)
        peak = logits.amax(1, keepdim=True)
        posterior = torch.exp(logits - peak)  # unnormalised
        total = posterior.sum(1)
        weighted = posterior * offsets
        first = weighted.sum(1) / total  # E[mu - z | z]
        weighted *= offsets
        second = weighted.sum(1) / total
        third_moment = (weighted * offsets).sum(1) / total if third else None
        v = v[:, 0]
        results[0].append((0.5 * torch.log(2 * math.pi * v) - peak[:, 0] - torch.log(total)))
        results[1].append(first / v)
        if derivatives:
            results[2].append(((second - first**2) / v - 1) / v)
        if third:
            results[3].append((third_moment - 3 * first * second + 2 * first**3) / v**3)
    count = 2 + derivatives + third
    return tuple(torch.cat(r) if r else z.new_zeros(0, dtype=torch.float64) for r in results[:count])


class ExpertTable:
    """``-log psi_j(., t)`` and ``d/dz log psi_j(., t)`` of every expert at one time ``t``, tabulated."""

    def __init__(self, model: GMDM, t: float, resolution: float = 0.02, margin: float = 10.0,
                 exact_resolution: float = 0.1):
        dtype = model.logits.dtype
        self.t, self.margin = float(t), margin
        self.variances64 = model.sigma0**2 + 2 * self.t * model.filter_norms2().detach().double()  # (J,)
        self.log_weights = torch.log_softmax(model.logits.detach().double(), dim=1)  # (J, L)
        self.means = model.means.double()
        std = self.variances64.sqrt()
        self.low, width = -model.gamma - margin * std, 2 * model.gamma + 2 * margin * std
        self.high = self.low + width
        # exact values and derivatives on each expert's own grid (spacing <= exact_resolution * sigma_j) ...
        counts = torch.ceil(width / (exact_resolution * std)).long() + 1  # (J,)
        points = int(torch.ceil((width / (resolution * std)).max())) + 1
        owner, offsets, index = ragged_grid(counts)
        spacing = width / (counts - 1)
        energies, scores, curvatures, thirds = self._exact(self.low[owner] + spacing[owner] * index, owner,
                                                           derivatives=True, third=True)
        # ... resampled onto G points per expert (spacing <= resolution * sigma_j for all j), one rectangular (J, G)
        # table, by cubic Hermite interpolation with the exact derivatives (d/dz energy = -score): its error,
        # O(exact_resolution^4 / 384) relative, is far below that of the linear lookup
        self._grid = (counts, offsets, spacing, points, dtype)
        hermite = self._hermite()
        self.energies, self.scores = hermite(energies, -scores), hermite(scores, curvatures)
        # the curvatures' table on first use (posterior variances only): keep its grid values, not the basis
        self._curvature_grid, self.curvatures = (curvatures, thirds), None
        # position on expert j's grid: 0 at low_j, G - 1 at high_j; expert j's points start at j G
        self.points = points
        self.scale = ((points - 1) / width).to(dtype)[:, None]
        self.shift = (-self.low * (points - 1) / width).to(dtype)[:, None]
        index_dtype = torch.int32 if len(counts) * points < 2**31 else torch.int64
        self.offsets = (torch.arange(len(counts), device=std.device) * points).to(index_dtype)[:, None]

    def _hermite(self):
        """The resampling from the exact grid onto the table's points, ``hermite(values, slopes) -> (table, steps)``:
        the flat ``(J G,)`` table and the step from each point to the next (the last repeated, so that a position
        on the last point needs no special case)."""
        counts, offsets, spacing, points, dtype = self._grid
        position = (counts - 1)[:, None] / (points - 1) * torch.arange(points, dtype=torch.float64,
                                                                       device=counts.device)
        left = position.floor().long().minimum((counts - 2)[:, None])
        basis, left = hermite_basis(position - left, spacing[:, None]), left + offsets[:, None]

        def hermite(values: torch.Tensor, slopes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            table = sum(w * p for w, p in zip(basis, (values[left], slopes[left], values[left + 1], slopes[left + 1])))
            steps = table.diff(dim=1)
            return table.to(dtype).reshape(-1), torch.cat([steps, steps[:, -1:]], 1).to(dtype).reshape(-1)

        return hermite

    def _exact(self, z: torch.Tensor, owner: torch.Tensor, derivatives: bool = False,
               third: bool = False) -> tuple[torch.Tensor, ...]:
        """:func:`exact_values` of responses ``z`` ``(m,)`` of the experts ``owner`` ``(m,)`` at this table's time."""
        return exact_values(self.log_weights, self.means, z, owner, self.variances64[owner], derivatives, third)

    def _lookup(self, tables: dict, z: torch.Tensor, experts: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Interpolate each of ``tables`` (``{which: (values, steps)}``, ``which`` the index of the quantity in
        :meth:`_exact`) linearly at responses ``z`` (filter index in dimension 1: all experts, or those of the index
        tensor ``experts`` in its order), the position on the grid computed once for all; exact off the grid. Two
        gathers per table and a handful of element-wise passes (on the CPU 1.5x as fast as ``grid_sample`` on a
        one-row table per expert, which computes and checks a second coordinate)."""
        scale, shift, offsets, low_end, high_end = ((self.scale, self.shift, self.offsets, self.low, self.high)
                                                    if experts is None else
                                                    (self.scale[experts], self.shift[experts], self.offsets[experts],
                                                     self.low[experts], self.high[experts]))
        num_filters = z.shape[1]
        z = z.detach()  # tables are not differentiable
        flat = z.movedim(1, 0).reshape(num_filters, -1).contiguous()  # (J, M); a view when z has one image
        position = (flat * scale).add_(shift)
        index = position.to(offsets.dtype).clamp_(0, self.points - 1)  # truncation: the floor on the grid
        fraction = position.frac_().view(-1)
        index = index.add_(offsets).view(-1)
        results = []
        for values, steps in tables.values():
            value = values.index_select(0, index).addcmul_(fraction, steps.index_select(0, index))
            results.append(value.view(num_filters, *z.shape[:1], *z.shape[2:]).movedim(0, 1))
        low, high = flat.amin(1), flat.amax(1)  # on the CPU ~7x faster than aminmax(dim=1)
        if bool(((low < low_end.to(low)) | (high > high_end.to(high))).any()):
            shape = (1, -1) + (1,) * (z.dim() - 2)
            outside = torch.nonzero((z < low_end.to(z).view(shape)) | (z > high_end.to(z).view(shape)), as_tuple=True)
            owner = outside[1] if experts is None else experts.to(outside[1].device)[outside[1]]
            exact = self._exact(z[outside], owner, derivatives=2 in tables)
            results = [value.clone() for value in results]
            for value, which in zip(results, tables):
                value[outside] = exact[which].to(value.dtype)
        return results

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """``d/dz log psi_j(z, t)`` for responses with the filter index in dimension 1."""
        return self._lookup({1: self.scores}, z)[0]

    def curvature(self, z: torch.Tensor) -> torch.Tensor:
        """``d^2/dz^2 log psi_j(z, t)``, tabulated on first use: exact values on the table's points, read linearly."""
        return self._lookup({2: self.curvature_table()}, z)[0]

    def score_and_curvature(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`score` and :meth:`curvature` at once (the position on the grid found once)."""
        return tuple(self._lookup({1: self.scores, 2: self.curvature_table()}, z))

    def curvature_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The curvatures' table (values and steps), built on first use like the others: cubic Hermite on the exact
        grid, with the exact third derivatives."""
        if self.curvatures is None:
            self.curvatures = self._hermite()(*self._curvature_grid)
            self._curvature_grid = None
        return self.curvatures

    def energy(self, z: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        """``-log psi_j(z, t)`` for responses with the filter index in dimension 1 (of the experts ``experts``,
        an index tensor, when given; default all)."""
        return self._lookup({0: self.energies}, z, experts)[0]

    @property
    def size(self) -> int:
        """Number of tabulated points over all experts."""
        return self.scores[0].numel()



SCORE_RESOLUTION = 0.05  # a LadderScores' spacing over its expert's standard deviation at the lowest level
SCORE_TABLE_BYTES = 1 << 26  # the most one LadderScores holds; a wider ladder is split into several


class LadderScores:
    """The Tweedie corrections ``c_jk(z) = sigma_k^2 d/dz log psi_j(z, t_k)`` of every expert at ``K``
    consecutive levels ``sigma_k`` of a ladder (``2 t_k = sigma_k^2``), on one grid per expert that all levels
    share: what a noise map (one level per patch) needs.

    Expert ``j``'s grid spans ``[-reach_j, reach_j]``, ``reach_j = gamma + margin sigma_j(t_K)`` (the top
    level's, as :class:`ExpertTable`), with spacing ``h_j <= resolution sigma_j(t_1)`` (the lowest level's
    deviation: every level's function varies on a scale of at least that, Theorem 2); each expert's ``K`` rows
    (one per level, level-major) lie one after another. A response of a patch between levels ``k`` and ``k + 1``
    is read from the four values around it (two grid points, two levels): linear in the response (error
    ``resolution^2 / 8`` relative to the scale of the lowest level's score, less at the higher ones), then linear
    in ``log sigma`` between the levels; a patch on a rung (:func:`~gmdm_cli.denoisers.rung_times`, what EB-PA
    and HQS read) from the two of its level. Its position on the grid is found once for both levels, and there is no
    lookup per level: the cost of a noise map is that of one table. Level-major because a map's levels vary
    slowly over the image: the patches of a strip read two rows of each expert (tens of kB) rather than a strip
    of every row's values (481 x 321 image with signal-dependent noise, 25 levels, one thread: the reads 30-40 %
    faster than point-major, where the four values were 2 of every row's ``K``). The values come from the exact
    mixtures on a coarse grid per level (spacing ``exact_resolution sigma_j(t_k)``, values and derivatives),
    resampled by cubic Hermite interpolation. Responses beyond the reach (rare) are evaluated exactly. ``first``:
    where ``levels`` begin on the ladder they are part of (several tables may share one,
    :func:`~gmdm_cli.denoisers.ladder_scores`)."""

    def __init__(self, model: GMDM, levels: torch.Tensor, first: int = 0, curvatures: bool = False,
                 resolution: float = SCORE_RESOLUTION, margin: float = 10.0, exact_resolution: float = 0.25):
        device, dtype = model.logits.device, model.logits.dtype
        self.first = first  # where the levels begin on the ladder they are part of
        self.levels = levels.to(device, torch.float64)  # (K,)
        self.log_weights = torch.log_softmax(model.logits.detach().double(), dim=1)
        self.means = model.means.double()
        self.variances = level_variances(model, self.levels)  # (J, K)
        deviations = self.variances.sqrt()
        reach = model.gamma + margin * deviations[:, -1]  # (J,)
        counts = grid_counts(reach, resolution * deviations[:, 0])
        offsets = ragged_grid(counts)[1]
        experts = torch.arange(len(counts), device=device)
        columns = [resampled_exact(self.log_weights, self.means, experts, self.variances[:, k], reach, counts,
                                   exact_resolution * deviations[:, k], curvatures=curvatures)
                   for k in range(len(self.levels))]
        # sigma^2 times the scores and the curvatures (sigma^2 h varies less with the level than sigma^4 h:
        # interpolated in log sigma, 0.3 % from the exact instead of 1 %), level-major within each expert's block
        self.count = len(self.levels)
        owner, _, index = ragged_grid(counts)
        ranks = torch.arange(self.count, device=device)[:, None]
        where = ((offsets * self.count)[owner] + ranks * counts[owner] + index).view(-1)  # (K N,) of (level, point)
        tables = [torch.empty(where.numel(), dtype=dtype, device=device).index_copy_(
                      0, where, torch.stack([column[which] * self.levels[k] ** 2
                                             for k, column in enumerate(columns)]).to(dtype).view(-1))
                  for which in range(len(columns[0]))]
        self.values, self.curvatures = tables[0], (tables[1] if curvatures else None)
        self.reach = reach.to(dtype)
        spacing = 2 * reach / (counts - 1)
        self.inverse, self.shift = (1 / spacing).to(dtype)[:, None], (reach / spacing).to(dtype)[:, None]
        index_dtype = torch.int32 if self.values.numel() < 2**31 else torch.int64
        self.base = (offsets * self.count).to(index_dtype)[:, None]  # (J, 1): where expert j's rows start
        self.row = counts.to(index_dtype)[:, None]  # (J, 1): the length of expert j's rows
        self.high_end = ((counts - 1) * (1 - 1e-5)).to(dtype)[:, None]  # (J, 1): within the last cell

    @staticmethod
    def size_of(model: GMDM, levels: torch.Tensor, resolution: float = SCORE_RESOLUTION,
                margin: float = 10.0) -> int:
        """The number of values a table of ``levels`` holds per quantity (before building it)."""
        deviations = level_variances(model, levels[[0, -1]]).sqrt()
        counts = grid_counts(model.gamma + margin * deviations[:, 1], resolution * deviations[:, 0])
        return int(counts.sum()) * len(levels)

    def corrections(self, z: torch.Tensor, level: torch.Tensor, fraction: torch.Tensor | None,
                    curvatures: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(1 - f) c_jk(z) + f c_j(k+1)(z)`` of responses ``z`` ``(J, P)`` of patches between the levels ``k =
        level`` ``(P,)`` (``0 <= k <= K - 2``) and ``k + 1``, a fraction ``f = fraction`` ``(P,)`` of the way;
        ``fraction=None``: ``c_jk(z)``, each patch on its level ``k`` (``0 <= k <= K - 1``; half the reads). With
        ``curvatures`` (a table built with them) also ``sigma^2 d^2/dz^2 log psi_j`` interpolated alike."""
        z = z.detach()
        # the position on the grid, kept within it (the last cell's far end 1e-5 of a cell short; exact off it)
        position = torch.addcmul(self.shift, z, self.inverse).clamp_min_(0)
        position = torch.minimum(position, self.high_end, out=position)  # (clamp with tensor bounds is 5x slower)
        left = position.to(self.base.dtype)
        step = position.frac_().view(-1)
        row = left.add_(self.base).addcmul_(level.to(self.base.dtype)[None], self.row)  # level k's row (J, P)
        rows = [part.view(-1) for part in ([row] if fraction is None else [row, row + self.row])]  # and k + 1's

        def read(values: torch.Tensor) -> torch.Tensor:  # linear in z at levels k (and k + 1, then between them)
            found = [torch.lerp(values.index_select(0, row), values[1:].index_select(0, row), step).view(z.shape)
                     for row in rows]
            return found[0] if fraction is None else torch.lerp(*found, fraction.to(z.dtype))

        results = [read(self.values)] + ([read(self.curvatures)] if curvatures else [])
        reach = self.reach[:, None]
        if bool(((z.amin(1, keepdim=True) < -reach) | (z.amax(1, keepdim=True) > reach)).any()):
            experts, patches = torch.nonzero(z.abs() > reach, as_tuple=True)
            k = level[patches].to(experts.device)
            shifts = (0,) if fraction is None else (0, 1)
            ends = [exact_values(self.log_weights, self.means, z[experts, patches], experts,
                                 self.variances[experts, k + shift], derivatives=curvatures) for shift in shifts]
            for which, result in enumerate(results):
                scaled = [end[1 + which] * self.levels[k + shift] ** 2 for shift, end in zip(shifts, ends)]
                result[experts, patches] = (scaled[0] if fraction is None else
                                            torch.lerp(*scaled, fraction[patches].double())).to(result.dtype)
        return tuple(results) if curvatures else results[0]


def level_variances(model: GMDM, levels: torch.Tensor) -> torch.Tensor:
    """``sigma_j^2(t_k) = sigma_0^2 + sigma_k^2 ||k_j||^2`` (Theorem 2, ``2 t_k = sigma_k^2``) of every expert at
    ``levels`` ``(K,)``: ``(J, K)``, float64, on the model's device."""
    levels = levels.to(model.logits.device, torch.float64)
    return model.sigma0**2 + model.filter_norms2().detach().double()[:, None] * levels**2


def hermite_basis(s: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The cubic Hermite weights of the value and slope at a cell's left end, then at its right end, at the fraction
    ``s`` of the way across a cell ``h`` wide."""
    return (2 * s**3 - 3 * s**2 + 1, (s**3 - 2 * s**2 + s) * h, 3 * s**2 - 2 * s**3, (s**3 - s**2) * h)


def grid_counts(reach: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """Points of uniform grids over ``[-reach_j, reach_j]`` with spacing at most ``spacing_j`` ``(J,)`` (at least 2)."""
    return torch.ceil(2 * reach / spacing).long().clamp_min(1) + 1


def ragged_grid(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grids of ``counts`` ``(J,)`` points laid end to end: each point's expert and index on its grid, and where
    each grid starts: ``(owner, offsets, index)``."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    return owner, offsets, torch.arange(int(counts.sum()), device=counts.device) - offsets[owner]


def resampled_exact(log_weights: torch.Tensor, means: torch.Tensor, experts: torch.Tensor, variances: torch.Tensor,
                    reach: torch.Tensor, counts: torch.Tensor, spacing: torch.Tensor, energies: bool = False,
                    curvatures: bool = False) -> tuple[torch.Tensor, ...]:
    """The exact scores ``d/dz log psi_j`` (with ``energies`` first the energies ``-log psi_j``, with
    ``curvatures`` last the curvatures ``d^2/dz^2 log psi_j``) of the
    ``experts`` ``(J,)`` (model indices) at one level (``variances`` ``(J,)``) on uniform grids of ``counts``
    points over ``[-reach_j, reach_j]``, laid end to end: evaluated on coarser grids with spacing at most
    ``spacing`` ``(J,)`` (never more points than the fine grid) with their derivatives, and resampled by cubic
    Hermite interpolation (error ``O(h^4)``: each function varies on the scale of its expert's deviation)."""
    coarse = torch.minimum(grid_counts(reach, spacing), counts)
    coarse_owner, coarse_offsets, coarse_index = ragged_grid(coarse)
    step = 2 * reach / (coarse - 1)
    z = -reach[coarse_owner] + step[coarse_owner] * coarse_index
    energy, score, curvature, *third = exact_values(log_weights, means, z, experts[coarse_owner],
                                                    variances[coarse_owner], derivatives=True, third=curvatures)
    owner, _, index = ragged_grid(counts)
    position = index / (counts - 1)[owner] * (coarse - 1)[owner]
    left = position.floor().long().minimum((coarse - 2)[owner])
    basis, left = hermite_basis(position - left, step[owner]), left + coarse_offsets[owner]

    def hermite(values: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
        return sum(w * v for w, v in zip(basis, (values[left], slopes[left], values[left + 1], slopes[left + 1])))

    return ((hermite(energy, -score),) if energies else ()) + (hermite(score, curvature),) + (
        (hermite(curvature, third[0]),) if curvatures else ())


LADDER_RESOLUTION = 0.5  # a LadderTable's spacing over its expert's standard deviation at the lowest level
EXACT_LADDER_RESOLUTION = 0.25  # the spacing of each level's exact values over its own deviation


ENERGY_CHUNK = {"cpu": 1 << 18, "cuda": 1 << 24}  # responses per chunk of :meth:`LadderTable.energies`, by device


class LadderTable:
    """The energies ``-log psi_j(z, t_k)`` of some experts at every level ``sigma_k`` of a ladder
    (``t_k = sigma_k^2 / 2``), tabulated in the response and summed over the experts: what a noise estimate needs
    at every site of an image.

    Every expert has one uniform grid over ``[-reach_j, reach_j]`` holding all ``K`` levels' energies and slopes
    in a row, with spacing ``h_j = resolution * sigma_j(t_1)``: every level's function varies on a scale of at
    least the lowest level's standard deviation ``sigma_j(t_1)`` (Theorem 2). A response is read by cubic Hermite
    interpolation (error ``O(resolution^4)``: within 1e-4 nats of the exact mixtures near the argmin on
    camera at sigma 5-100, closer than the per-level tables) of the rows either side of it, all levels at once,
    and the experts are summed in the same pass (an embedding bag): the position on the grid is found once per
    response instead of once per level, 5-10x faster than one :class:`ExpertTable` per level (each level's values
    come from the exact mixtures on a grid of a quarter of its own deviation, :func:`resampled_exact`). Beyond the reach
    (at most ``gamma`` plus 10 of the top level's standard deviations: such a response is hundreds of nats
    above the typical at every level) the energy grows as the outermost component's Gaussian tail,
    ``((|z| - gamma)^2 - (reach_j - gamma)^2) / (2 v_jk)``, within a few 1e-3 of its value."""

    def __init__(self, model: GMDM, experts, levels: torch.Tensor, reach: torch.Tensor,
                 resolution: float = LADDER_RESOLUTION):
        device, dtype = model.logits.device, model.logits.dtype
        self.experts, self.gamma = list(experts), float(model.gamma)
        index = torch.as_tensor(self.experts, device=device)
        self.variances = level_variances(model, levels)[index]  # (J, K)
        self.cap = self.gamma + 10 * self.variances[:, -1].sqrt()  # (J,): the tail beyond is one component's
        self.reach = torch.minimum(reach.to(device, torch.float64), self.cap)
        deviations = self.variances.sqrt()
        counts = grid_counts(self.reach, resolution * deviations[:, 0])  # (J,)
        self.spacing = 2 * self.reach / (counts - 1)
        owner, self.offsets, _ = ragged_grid(counts)  # offsets (J,): where each expert's rows start
        log_weights = torch.log_softmax(model.logits.detach().double(), dim=1)
        # each level exact on a grid of a quarter of its own deviations (the lowest: the table's points), resampled
        columns = [resampled_exact(log_weights, model.means.double(), index, self.variances[:, k], self.reach,
                                   counts, EXACT_LADDER_RESOLUTION * deviations[:, k], energies=True)
                   for k in range(len(levels))]
        energies = torch.stack([energy for energy, _ in columns], 1)  # (N, K)
        slopes = -torch.stack([score for _, score in columns], 1) * self.spacing[owner, None]  # d/dz energy times h
        self.rows = torch.cat([energies, slopes]).to(dtype)  # (2 N, K): energies, then slopes
        self.counts, self.total = counts, int(counts.sum())

    def covers(self, largest: torch.Tensor) -> bool:
        """Whether the grids reach every response up to ``largest`` ``(J,)`` (``|z|``), or as far as they go."""
        return bool(((largest <= self.reach) | (self.reach >= self.cap)).all())

    def energies(self, z: torch.Tensor, part: slice = slice(None)) -> torch.Tensor:
        """``sum_j -log psi_j(z_j, t_k)`` of responses ``z`` ``(J, ...)`` (this table's experts in order) at every
        level (those of ``part`` of them; the cost goes with their number): ``(K, ...)`` in the table's dtype.

        Read in chunks of about :data:`ENERGY_CHUNK` responses (on the CPU 2^18): each chunk's positions, Hermite
        weights and the indices of its four rows (four times the responses) are a few MB that the next chunk reuses,
        where the whole image's at once were tens of MB of fresh memory for every call, whose first touch cost more
        than the arithmetic (481 x 321 image, 40 experts at 24 levels, 2 threads: 36-46 ms at once, 16-22 ms in
        chunks); on a GPU larger chunks keep the kernels few."""
        shape, count = z.shape[1:], z.shape[0]
        responses = z.reshape(count, -1).T.to(self.rows.dtype)  # (M, J)
        reach, spacing = (value.to(responses.dtype) for value in (self.reach, self.spacing))
        last = (self.counts - 2).to(responses.dtype)  # the last cell's left end
        starts = self.offsets.int()
        rows = torch.tensor([0, 1, self.total, self.total + 1], dtype=torch.int32, device=z.device)[:, None]
        table = self.rows if part == slice(None) else self.rows[:, part].contiguous()
        inverse = (1 / self.variances[:, part]).to(responses.dtype)  # (J, K): the tails' curvatures
        summed = responses.new_empty(len(responses), table.shape[1])  # (M, K)
        size = max(1, ENERGY_CHUNK.get(z.device.type, ENERGY_CHUNK["cpu"]) // max(count, 1))
        for first in range(0, len(responses), size):
            flat = responses[first:first + size].contiguous()
            position = flat.clamp(-reach, reach).add_(reach).div_(spacing)
            left = torch.minimum(position.floor(), last)
            s = position.sub_(left)
            index = (left.int() + starts)[:, None] + rows  # (m, 4, J): energies, then slopes
            # the cubic Hermite basis, written in place: h00 = (1 + 2s)(1 - s)^2, h01 = 1 - h00, h10 = s (1 - s)^2,
            # h11 = s^2 (s - 1)
            weights, rest = torch.empty_like(index, dtype=flat.dtype), 1 - s
            rest2 = rest * rest
            torch.addcmul(rest2, s, rest2, value=2, out=weights[:, 0])
            torch.sub(1, weights[:, 0], out=weights[:, 1])
            torch.mul(s, rest2, out=weights[:, 2])
            torch.mul(s * s, rest, out=weights[:, 3]).neg_()
            part_sum = summed[first:first + size]
            part_sum.copy_(F.embedding_bag(index.view(len(flat), -1), table, mode="sum",
                                           per_sample_weights=weights.view(len(flat), -1)))
            beyond = flat.abs() > reach
            if bool(beyond.any()):  # the outermost component's Gaussian tail from the grid's end
                tail = torch.where(beyond, ((flat.abs() - self.gamma) ** 2 - (reach - self.gamma) ** 2) / 2, 0)
                part_sum.addmm_(tail, inverse)
        return summed.T.contiguous().reshape(-1, *shape)


def parameters_key(model: GMDM) -> tuple:
    """What a cached table of ``model`` depends on: its dtype and device, and where its parameters are and how
    often they were changed in place (training, projection, loading other weights)."""
    return (model.logits.dtype, model.logits.device,
            *(value for parameter in model.parameters() for value in (parameter.data_ptr(), parameter._version)))

_ladders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ladder_table(model: GMDM, experts, levels: torch.Tensor, largest: torch.Tensor) -> LadderTable:
    """The :class:`LadderTable` of ``model``'s ``experts`` at ``levels`` whose grids reach responses up to
    ``largest`` ``(J,)``, kept per model (like :func:`expert_table`); when a response is beyond the kept one's
    reach, a new one reaches ``2^(n/4) gamma``, the first such length beyond it (at least ``2 gamma``, at most
    where the tail takes over), and at least ``2^(1/2)`` times the kept reach for every expert: the channels of a
    colour image and the next images of a batch, whose largest responses differ a little, rebuild it rarely (a
    build of all experts' table costs ~10 EB-PA passes)."""
    key = (tuple(experts), levels.cpu().numpy().tobytes(), *parameters_key(model))
    tables = _ladders.setdefault(model, OrderedDict())
    table = tables.get(key)
    largest = largest.double().to(model.logits.device)
    if table is None or not table.covers(largest):
        gamma = float(model.gamma)
        reach = gamma * 2 ** (torch.ceil(4 * torch.log2((1.01 * largest / gamma).clamp_min(2))) / 4)
        if table is not None:
            reach = torch.maximum(reach, 2**0.5 * table.reach)
        table = tables[key] = LadderTable(model, experts, levels, reach)
        if len(tables) > 4:  # a few sets of experts (the quiet ones, all)
            tables.popitem(last=False)
    tables.move_to_end(key)
    return table


_CACHE_SIZE = 128  # every level of an HQS or restoration schedule fits
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def expert_table(model: GMDM, t: float) -> ExpertTable:
    """The :class:`ExpertTable` of ``model`` at time ``t``, built once and kept for the most recent
    ``_CACHE_SIZE`` times of each model; any change to the model's parameters (in place or replaced,
    dtype or device) builds new tables."""
    key = (float(t), *parameters_key(model))
    tables = _cache.setdefault(model, OrderedDict())
    if key in tables:
        tables.move_to_end(key)
        return tables[key]
    table = tables[key] = ExpertTable(model, t)
    if len(tables) > _CACHE_SIZE:
        tables.popitem(last=False)
    return table
