"""Denoising with a patch GMDM: empirical-Bayes patch averaging (EB-PA, Sec. 4.3).

EB-PA applies Tweedie's formula (Eq. 3) to every overlapping ``b x b`` patch (stride 1) and
averages the patch estimates at each pixel. Since the score is linear in the filters this is

    x = y + sigma^2 * conv_transpose2d(dlog psi(conv2d(y, K), t), K) / C,    t = sigma^2 / 2,

with ``C`` the number of patches covering each pixel; the patch matrix is never formed.
The patch means are left unchanged (the filters are zero-mean), as in the paper.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from .choices import BOUNDARIES, METHODS
from .kinds import GMDM
from .model import (PatchGMDM, expert_curvature, expert_score, image_shape, image_patch_scores, image_responses,
                    patch_counts, patch_sum, time_from_sigma)
from .tables import SCORE_TABLE_BYTES, ExpertTable, LadderScores, expert_table, parameters_key
from .tiling import automatic_tile, map_strip_blocks, tiled


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` or ``(N, 1, H, W)`` as ``(N, 1, H, W)``."""
    if image.dim() == 2:
        return image[None, None]
    if image.dim() == 4 and image.shape[1] == 1:
        return image
    raise ValueError(f"expected an (H, W) or (N, 1, H, W) image tensor, got shape {tuple(image.shape)}")




def _prepare(model: PatchGMDM, noisy: torch.Tensor, sigma, boundary: str):
    """Validate; return the ``(N, 1, H, W)`` batch (mirrored by ``b - 1`` for ``"reflect"``), sigma as a
    tensor, and the crop that undoes the padding."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary '{boundary}' (choose from {', '.join(BOUNDARIES)})")
    batch = _as_batch(noisy)
    b = model.patch_size
    height, width = image_shape(batch.shape, b, f"the {b}x{b} patches of the model")
    sigma = torch.as_tensor(sigma, dtype=batch.dtype, device=batch.device)
    if boundary == "valid":
        return batch, sigma, (slice(None), slice(None))
    if sigma.dim() > 0:
        raise ValueError("boundary 'reflect' takes a single sigma, not a per-patch map")
    pad = min(b - 1, height - 1, width - 1)  # reflection needs pad < size
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    return padded, sigma, (slice(pad, pad + height), slice(pad, pad + width))


def _patch_scores(model: PatchGMDM, batch: torch.Tensor, t: torch.Tensor, table: ExpertTable | None) -> torch.Tensor:
    """Expert scores of every patch, ``(N, J, H-b+1, W-b+1)``: read from ``table`` (one ``t``), else exact
    (also per-patch times)."""
    if table is None:
        return image_patch_scores(model, batch, t)
    return table.score(image_responses(model, batch))


def _patch_scores_and_curvatures(model: PatchGMDM, batch: torch.Tensor, t: torch.Tensor,
                                 table: ExpertTable | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_patch_scores` and the experts' curvatures ``d^2/dz^2 log psi_j`` of every patch, the responses
    computed once (and with ``table`` read at one position)."""
    z = image_responses(model, batch)
    if table is None:
        return expert_score(model, z, t), expert_curvature(model, z, t)
    return table.score_and_curvature(z)


LADDER_LEVELS = torch.logspace(-3, 0, 97, dtype=torch.float64)  # sigma: 0.001 to 1, 7.5 % apart


def ladder_position(levels: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``sigma`` falls on a geometric ladder ``levels`` (clamped to its ends): the index of the level below
    and the fraction of the way, in ``log sigma``, to the next one; for linear interpolation in ``log sigma``."""
    log_levels = levels.log()
    position = (sigma.clamp(levels[0], levels[-1]).log() - log_levels[0]) / (log_levels[1] - log_levels[0])
    position = position.clamp(0, len(levels) - 1 - 1e-9)
    lower = position.floor().long()
    return lower, position - lower


LADDER_ALIGNMENT = 4  # a map's ladder begins and ends at a multiple of this many levels (30 % in sigma)


def aligned_span(start: int, end: int, alignment: int, limit: int) -> tuple[int, int]:
    """``start`` down and ``end`` up to multiples of ``alignment``, ``end`` at most ``limit``: the ends of a cached
    table of levels, so that the next images, whose levels differ a little, find the same table."""
    return start // alignment * alignment, min(-(-end // alignment) * alignment, limit)


def ladder_scores(model: PatchGMDM, t: torch.Tensor, curvatures: bool = False) -> list[LadderScores]:
    """The :class:`~gmdm_cli.tables.LadderScores` of the :data:`LADDER_LEVELS` that the times ``t`` need
    (``first``: the index of each one's lowest level; the next begins at the last level of one, so that every
    patch's pair of levels is in one of them), in as few tables as keep each under
    :data:`~gmdm_cli.tables.SCORE_TABLE_BYTES`. The ends are widened to multiples of :data:`LADDER_ALIGNMENT`
    levels, and a kept ladder that holds the levels needed and at most that many more at either end is read
    instead of a new one: the iterations of HQS, the tiles and channels of an image and the next images of a
    batch, whose levels differ a little, share the tables (a build costs ~10 EB-PA passes). ``curvatures``: with
    the curvatures' tables too (posterior variances)."""
    sigma = (2 * t).clamp_min(0).sqrt()
    low, high = float(sigma.min()), float(sigma.max())
    below = int(torch.searchsorted(LADDER_LEVELS, torch.tensor(low, dtype=torch.float64))) - 1
    above = int(torch.searchsorted(LADDER_LEVELS, torch.tensor(high, dtype=torch.float64))) + 1
    first, last = max(below, 0), min(above, len(LADDER_LEVELS) - 1)
    ladders = _ladders.setdefault(model, OrderedDict())
    parameters = parameters_key(model)
    for key in reversed(ladders):
        (start, end, with_curvatures), kept = key[:3], key[3:]
        if (kept == parameters and start <= first and end >= last and (with_curvatures or not curvatures)
                and first - start <= LADDER_ALIGNMENT and end - last <= LADDER_ALIGNMENT):
            ladders.move_to_end(key)
            return ladders[key]
    first, last = aligned_span(first, last, LADDER_ALIGNMENT, len(LADDER_LEVELS) - 1)
    element = model.logits.element_size()
    parts = 1
    while True:  # equal parts of the levels, as few as fit
        bounds = [first + round(k * (last - first) / parts) for k in range(parts + 1)]
        if all(LadderScores.size_of(model, LADDER_LEVELS[a:b + 1]) * element * (1 + curvatures) <= SCORE_TABLE_BYTES
               for a, b in zip(bounds, bounds[1:])) or min(np.diff(bounds)) <= 1:
            break
        parts += 1
    key = (first, last, curvatures, *parameters)
    ladders[key] = [LadderScores(model, LADDER_LEVELS[a:b + 1], a, curvatures) for a, b in zip(bounds, bounds[1:])]
    if len(ladders) > 4:
        ladders.popitem(last=False)
    return ladders[key]


_ladders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the last few ladders of each model


def ladder_terms(ladder: list[LadderScores], z: torch.Tensor, sigma: torch.Tensor,
                 curvatures: bool = False, on_rungs: bool = False) -> tuple[torch.Tensor, ...]:
    """The corrections ``sigma_i^2 dlog psi_j(z_ij, t_i)`` of responses ``z`` ``(J, P)`` of patches at levels
    ``sigma`` ``(P,)`` (and with ``curvatures`` ``sigma_i^2 d^2 log psi_j``), from ``ladder`` (:func:`ladder_scores`):
    each interpolated linearly in ``log sigma`` between the two levels around the patch's own (levels 7.5 % apart:
    relative error ~1e-3, far below the noise; ``tests/test_denoisers.py`` checks it against the exact mixtures),
    both read from one :class:`~gmdm_cli.tables.LadderScores` (what the posterior's moments read; EB-PA and HQS
    put each patch on a rung first, :func:`rung_times`). Where the patches need several of the ladder's
    tables, they are grouped by table (sorted once). ``on_rungs``: every level is one of the ladder's
    (:func:`rung_times`), read there alone (half the reads)."""
    levels = LADDER_LEVELS.to(sigma.device)
    lower, fraction = ladder_position(levels, sigma.double())
    if on_rungs:  # the nearest rung: the levels are rungs up to rounding
        lower, fraction = lower + (fraction > 0.5), None
    lower = lower.clamp(ladder[0].first, ladder[-1].first + ladder[-1].count - 2 + on_rungs)  # within the tables
    tables = ladder
    if len(ladder) > 1:
        starts = torch.tensor([table.first for table in ladder[1:]], device=lower.device)
        which = torch.searchsorted(starts, lower, right=True)  # the table whose levels hold k and k + 1
        used = int(which.min()), int(which.max())
        tables, which = ladder[used[0]:used[1] + 1], which - used[0]
    if len(tables) == 1:
        results = tables[0].corrections(z, lower - tables[0].first, fraction, curvatures)
        return results if curvatures else (results,)
    order = torch.argsort(which)
    grouped, lower = z.index_select(1, order), lower[order]
    fraction = None if on_rungs else fraction[order]
    results = [torch.empty_like(grouped) for _ in range(1 + curvatures)]
    begin = 0
    for table, count in zip(tables, torch.bincount(which, minlength=len(tables)).tolist()):
        part = slice(begin, begin + count)
        if count:
            found = table.corrections(grouped[:, part], lower[part] - table.first,
                                      None if on_rungs else fraction[part], curvatures)
            for result, value in zip(results, found if curvatures else (found,)):
                result[:, part] = value
        begin += count
    return tuple(torch.empty_like(result).index_copy_(1, order, result) for result in results)


def ladder_corrections(model: PatchGMDM, batch: torch.Tensor, t: torch.Tensor, ladder: list[LadderScores],
                       curvatures: bool = False, on_rungs: bool = False) -> tuple[torch.Tensor, ...]:
    """:func:`ladder_terms` of every patch of ``batch`` at its time ``t`` ``(N, 1, h, w)``: the per-patch Tweedie
    corrections ``2 t_i dlog psi_j(<k_j, P_i y>, t_i)`` ``(N, J, h, w)`` (and with ``curvatures`` ``2 t_i
    d^2 log psi_j``); ``on_rungs``: times of :func:`rung_times`."""
    z = image_responses(model, batch)  # (N, J, h, w)
    sigma = (2 * t).clamp_min(0).sqrt().expand(z.shape[0], 1, *z.shape[2:]).reshape(-1)
    terms = ladder_terms(ladder, z.movedim(1, 0).reshape(z.shape[1], -1), sigma, curvatures, on_rungs)
    return tuple(term.view(z.shape[1], z.shape[0], *z.shape[2:]).movedim(0, 1) for term in terms)


DITHER = torch.tensor([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]],
                      dtype=torch.float64).add_(0.5) / 16
"""The thresholds of :func:`rung_times`: a 4 x 4 Bayer matrix, ``(m + 1/2) / 16``."""


def rung_times(t: torch.Tensor) -> torch.Tensor:
    """Per-patch times ``t`` ``(N, 1, h, w)`` moved to a rung of :data:`LADDER_LEVELS` either side of their level
    (in ``log sigma``), the upper one where the fraction of the way to it exceeds the patch's threshold of a 4 x 4
    ordered-dither pattern (:data:`DITHER`, thresholds ``(m + 1/2) / 16``) laid over the patch positions: every
    4 x 4 block of patches at one level puts the share of its patches on the upper rung that the fraction says
    (to 1/16), so that a pixel's average over the ``b^2`` patches that cover it matches the interpolation between
    the rungs, while each patch reads one rung's tables (half the reads of interpolating it)."""
    lower, fraction = ladder_position(LADDER_LEVELS.to(t.device), (2 * t).clamp_min(0).sqrt().double())
    rows, columns = t.shape[-2:]
    thresholds = DITHER.to(t.device).repeat(-(-rows // 4), -(-columns // 4))[:rows, :columns]
    return (LADDER_LEVELS.to(t.device)[lower + (fraction > thresholds)] ** 2 / 2).to(t.dtype)


def precision_weights(model: PatchGMDM, curvatures: torch.Tensor, t: torch.Tensor, power: float) -> torch.Tensor:
    """Every patch's weight ``(tr Cov_i / sigma^2)^-power`` ``(N, 1, h, w)`` from its experts' curvatures
    ``h_ij = d^2/dz^2 log psi_j`` ``(N, J, h, w)`` at one time ``t``: Tweedie's second-order identity gives the
    patch's posterior covariance ``Cov_i = sigma^2 (I + sigma^2 sum_j k_j k_j^T h_ij)``, ``sigma^2 = 2t``, whose
    trace over the ``a = b^2`` pixels is ``sigma^2 (a + sigma^2 sum_j ||k_j||^2 h_ij)`` (Corollary 2.1: the responses
    are independent 1-D mixtures). The flat (DC) direction keeps the variance ``sigma^2``, so the trace is at
    least ``sigma^2`` and the weights at most 1 (no overflow at any power; rounding below 1 counts as 1)."""
    norms2 = model.filter_norms2().detach().view(1, -1, 1, 1)
    traces = (curvatures * norms2).sum(1, keepdim=True).mul_(2 * t).add_(model.patch_size**2)
    return traces.clamp_min_(1).pow_(-power)


def tweedie_average(model: PatchGMDM, images: torch.Tensor, t, exact: bool = False,
                    tile: int | None = None, ladder: list[LadderScores] | None = None,
                    weighting: float = 0.0) -> torch.Tensor:
    """The patch-averaged Tweedie correction ``(1/C) sum_i P_i^T 2t_i grad log f(P_i x, t_i)`` (Eq. 3 on
    every overlapping patch, stride 1, averaged at each pixel), ``(N, 1, H, W) -> (N, 1, H, W)``.

    ``t`` is a number or one time per patch ``(N, 1, H-b+1, W-b+1)``. EB-PA adds it to the image; divided
    by ``2t`` it is the patch-averaged score of HQS and Langevin sampling. Computed in tiles of
    ``tile x tile`` pixels (``None``: :func:`~gmdm_cli.tiling.automatic_tile`; ``0``: in one piece) on the
    model's device with the same result; ``images`` may stay on another device. Within a tile, the patch
    sums of strips of rows are added up in place, blocks of strips on the CPU's threads
    (:func:`~gmdm_cli.tiling.map_strip_blocks`); the result does not depend on it beyond rounding. Per-patch times
    are read from ``ladder`` (:func:`ladder_scores` of times that include these; default: of these).

    ``weighting`` ``q > 0`` (one ``t`` only): the patch estimates are averaged with the weights
    ``(tr Cov_i / sigma^2)^-q`` of :func:`precision_weights` instead of equally, ``sum_i w_i P_i^T 2t grad log
    f(P_i x, t) / sum_i w_i P_i^T 1``: patches whose posterior is sharp count more (BM3D's aggregation weights
    from the model's own posterior; ``benchmarks/results/aggregation.md``). The restoration's prior step uses it
    (:data:`~gmdm_cli.restoration.SCHEDULES`).
    """
    b, device = model.patch_size, model.filters.device
    t = torch.as_tensor(t, dtype=images.dtype, device=images.device)
    if weighting and t.dim() > 0:
        raise ValueError("precision weighting takes one time t, not one per patch")
    tile = automatic_tile(model.num_filters, b - 1) if tile is None else tile
    if t.dim() > 0 and not exact:  # a map: on the ladder's rungs, dithered in the image's own patch positions
        t = rung_times(t)
        if ladder is None:  # its tables, for every tile, built before the workers share them
            ladder = ladder_scores(model, t.to(device))

    def block_sum(x: torch.Tensor, times: torch.Tensor, table: ExpertTable | None, block) -> tuple[int, torch.Tensor]:
        """The patch sums of a block of strips ``(N, 1, rows, W)``; weighted: ``(N, 2, rows, W)``, those of the
        weighted scores and of the weights."""
        first = block[0][0]
        summed = x.new_zeros(x.shape[0], 2 if weighting else 1, block[-1][1] - first + b - 1, x.shape[-1])
        for top, bottom, strip in block:
            rows = slice(top - first, bottom - first + b - 1)
            if weighting:
                scores, curvatures = _patch_scores_and_curvatures(model, strip, times, table)
                weights = precision_weights(model, curvatures, times, weighting)
                scores = scores.mul_(weights)
                # sum_i w_i P_i^T 1: every pixel's b x b window of weights (a pooling; 8x faster than a 1-channel
                # conv_transpose2d, and summed directly: running sums would cancel weights ~1e-10 of their neighbours')
                summed[:, 1:, rows] += F.avg_pool2d(F.pad(weights, (b - 1,) * 4), b, stride=1).mul_(b * b)
            elif times.dim() == 0:
                scores = _patch_scores(model, strip, times, table)
            else:
                strip_times = times[..., top:bottom, :x.shape[-1] - b + 1]
                scores = (_patch_scores(model, strip, strip_times, None).mul_(2 * strip_times) if exact
                          else ladder_corrections(model, strip, strip_times, ladder, on_rungs=True)[0])
            summed[:, :1, rows] += patch_sum(model, scores)
        return first, summed

    def correction(x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        # tabulated experts for one t unless exact (built here, before the workers share them)
        table = None if exact or times.dim() > 0 else expert_table(model, float(times))
        if weighting and table is not None:  # tabulate the curvatures now, before the worker threads share the table
            table.curvature_table()
        summed = x.new_zeros(x.shape[0], 2 if weighting else 1, *x.shape[-2:])
        for first, part in map_strip_blocks(model, x, lambda block: block_sum(x, times, table, block)):
            summed[..., first:first + part.shape[-2], :] += part
        summed = summed[:, :1] / summed[:, 1:] if weighting else summed.div_(patch_counts(model, summed))
        # one t: scale the (J times smaller) average instead of the scores
        return summed.mul_(2 * times) if times.dim() == 0 else summed

    if t.dim() == 0:
        return tiled(lambda x: correction(x, t.to(x.device)), images, b - 1, tile, device=device)
    # per-patch times, indexed by the patch's top-left pixel: padded to the image's shape to tile alike
    return tiled(correction, images, b - 1, tile, (F.pad(t, (0, b - 1, 0, b - 1)),), device)


def ebpa(model: PatchGMDM, noisy: torch.Tensor, sigma, boundary: str = "valid", exact: bool = False,
         tile: int | None = None) -> torch.Tensor:
    """EB-PA estimate of ``noisy`` (``(H, W)`` or ``(N, 1, H, W)``, [0, 1] scale) at noise level
    ``sigma`` (same scale): a number, or, with ``boundary="valid"``, one value per patch
    ``(N, 1, H-b+1, W-b+1)``.

    ``boundary="valid"`` uses the patches inside the image only (the paper's setting: pixels
    near the border are covered by fewer patches); ``"reflect"`` mirrors the image by ``b - 1``
    pixels first, so every pixel is covered by ``b^2`` patches, and crops the result.
    With a single ``sigma`` the experts are evaluated through an :class:`ExpertTable` (interpolated,
    relative error ~1e-4) unless ``exact``; per-patch maps through the tables of a ladder of levels
    (:func:`ladder_corrections`), or the exact mixtures with ``exact``.
    ``tile``: see :func:`tweedie_average`. Returns a tensor shaped like ``noisy``; not clipped.
    """
    batch, sigma, (rows, columns) = _prepare(model, noisy, sigma, boundary)
    estimate = tweedie_average(model, batch, time_from_sigma(sigma), exact, tile).add_(batch)
    return estimate[..., rows, columns].reshape(noisy.shape)


def ebpa_posterior(model: PatchGMDM, noisy: torch.Tensor, sigma, tile: int | None = None,
                   exact: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EB-PA's estimate of ``noisy`` (``(H, W)`` or ``(N, 1, H, W)``, ``boundary="valid"``) at ``sigma`` (a number,
    or one level per patch ``(N, 1, H-b+1, W-b+1)``) and the two parts of its per-pixel posterior variance (the
    patches' own, their disagreement), each shaped like ``noisy``.

    Tweedie's second-order identity gives every patch's posterior covariance, ``Cov[x_i | y_i] = sigma_i^2 (I +
    sigma_i^2 grad^2 log f(y_i, t_i))`` with ``grad^2 log f = sum_j k_j k_j^T h_j(z_ij)``, ``h_j = d^2/dz^2 log
    psi_j`` (:func:`~gmdm_cli.model.expert_curvature`). Since ``I = u u^T + sum_j k_j k_j^T / ||k_j||^2`` (``u`` the
    unit DC vector, which the prior leaves flat), its diagonal at position ``m`` of the patch is
    ``sigma_i^2 (1/a + sum_j k_j[m]^2 (1 / ||k_j||^2 + sigma_i^2 h_j(z_ij)))``. Patch averaging takes the mean of
    the ``C`` patch estimates ``m_i(n)`` covering pixel ``n``; their posteriors, pooled as an equal mixture,
    have the variance (law of total variance)

        ``v(n) = (1/C) sum_i [Cov_i]_(m, m) + (1/C) sum_i (m_i(n) - xhat(n))^2``,

    the mean of the patches' own variances plus their disagreement (the two parts returned). Per patch position
    the diagonal (the squared filters against the curvatures) and the correction ``sum_j k_j sigma_i^2 s_ij`` are
    two small matrix products; the corrections, the diagonals and the squared corrections are put back in place
    by one fold (col2im). Experts from tables (for one ``sigma`` an :class:`~gmdm_cli.tables.ExpertTable`, for maps
    the ladder's :class:`~gmdm_cli.tables.LadderScores` with their curvatures), exact with ``exact``; in tiles like
    :func:`tweedie_average`, strips of rows on the CPU's threads within a tile.
    """
    batch, sigma, _ = _prepare(model, noisy, sigma, "valid")
    b, device = model.patch_size, model.filters.device
    t = time_from_sigma(sigma)
    tile = automatic_tile(model.num_filters, b - 1) if tile is None else tile

    squares = model.filters.pow(2).T.contiguous()  # (a, J): k_j[m]^2
    flat = 1 / b**2 + squares @ (1 / model.filter_norms2())  # (a,)

    def strip_sums(strip: torch.Tensor, times: torch.Tensor, table: ExpertTable | None) -> torch.Tensor:
        """``sum_i P_i^T`` of the corrections, of the own variances and of the squared corrections of the patches
        of one strip of rows, ``(N, 3, rows + b - 1, W)``: one fold (col2im) of the three per-position maps."""
        if table is not None:  # one level: scaled after the fold
            scores, curvatures = _patch_scores_and_curvatures(model, strip, times, table)
        elif exact:  # per patch: sigma_i^2 s_ij and sigma_i^2 h_ij
            scores, curvatures = (value * (2 * times) for value in
                                  _patch_scores_and_curvatures(model, strip, times, None))
        else:
            scores, curvatures = ladder_corrections(model, strip, times, ladder, curvatures=True)
        count, sites = scores.shape[0], scores.shape[2] * scores.shape[3]
        variance = (2 * times).expand(count, 1, *scores.shape[2:]).reshape(count, sites)  # sigma_i^2 of every patch
        parts = scores.new_empty(count, 3, b * b, sites)  # written in place: no temporaries, no concatenation
        for n in range(count):
            # per patch and position m: the correction sigma_i^2 sum_j k_j[m] s_ij, and the own variance
            # [Cov_i]_(m, m) = sigma_i^2 (1/a + sum_j k_j[m]^2 / ||k_j||^2) + sigma_i^4 sum_j k_j[m]^2 h_ij
            torch.matmul(model.filters.T, scores[n].reshape(-1, sites), out=parts[n, 0])
            torch.matmul(squares, curvatures[n].reshape(-1, sites), out=parts[n, 1])
            if times.dim():  # sigma_i^2 (sigma_i^2 sum_j k_j[m]^2 h_ij + 1/a + ...)
                parts[n, 1].addr_(flat, variance[n].new_ones(sites)).mul_(variance[n])
            else:  # scaled after the fold
                parts[n, 1].addr_(flat, variance[n].reciprocal())
        torch.mul(parts[:, 0], parts[:, 0], out=parts[:, 2])
        sums = F.fold(parts.view(count, -1, sites), strip.shape[-2:], b)
        if not times.dim():  # one level: scaled after the fold, on 3 channels instead of 3a
            sums.mul_(torch.stack([2 * times, (2 * times) ** 2, (2 * times) ** 2]).view(1, 3, 1, 1))
        return sums

    def moments(x: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        """The estimate's correction and the two variance parts of a tile, its strips' sums added up (blocks of
        strips on the CPU's threads, each into its own buffer)."""
        table = None if maps else expert_table(model, float(t))
        if table is not None:  # tabulate the curvatures now, before the worker threads share the table
            table.curvature_table()

        def block_sums(block) -> tuple[int, torch.Tensor]:
            first = block[0][0]
            summed = x.new_zeros(x.shape[0], 3, block[-1][1] - first + b - 1, x.shape[-1])
            for top, bottom, strip in block:
                times = maps[0][..., top:bottom, :x.shape[-1] - b + 1] if maps else t.to(x.device)
                summed[..., top - first:bottom - first + b - 1, :] += strip_sums(strip, times, table)
            return first, summed

        total = x.new_zeros(x.shape[0], 3, *x.shape[-2:])
        for first, part in map_strip_blocks(model, x, block_sums):
            total[..., first:first + part.shape[-2], :] += part
        total /= patch_counts(model, x)
        mean = total[:, :1]
        return torch.cat([mean, total[:, 1:2].clamp_min(0), (total[:, 2:] - mean**2).clamp_min(0)], 1)

    maps = () if t.dim() == 0 else (F.pad(t, (0, b - 1, 0, b - 1)),)
    # a map's tables with their curvatures, for every tile, built before the workers share them
    ladder = ladder_scores(model, t.to(device), curvatures=True) if maps and not exact else None
    with torch.no_grad():
        result = tiled(moments, batch, b - 1, tile, maps, device)
    return tuple(part.reshape(noisy.shape) for part in (batch + result[:, :1], result[:, 1:2], result[:, 2:]))


HQS_ITERATIONS, HQS_START, HQS_END, HQS_DATA_WEIGHT = 6, 0.25, 1 / 128, 9.0  # tuned on BSDS400 crops


def hqs_schedule(iterations: int = HQS_ITERATIONS, start: float = HQS_START, end: float = HQS_END) -> list[float]:
    """Diffusion times of HQS relative to the noise variance, ``t / sigma^2``: geometric from ``start / 2`` down to
    ``end / 2`` (``beta = 1 / (2t)`` grows from ``start^-1 / sigma^2`` to ``end^-1 / sigma^2``), strictly
    decreasing. Every HQS function takes its schedule in this form."""
    if iterations == 1:
        return [start / 2]
    ratio = (end / start) ** (1 / (iterations - 1))
    return [start / 2 * ratio**k for k in range(iterations)]


def hqs(model: PatchGMDM, noisy: torch.Tensor, sigma, schedule: list[float] | None = None,
        data_weight: float | None = None, boundary: str = "valid", exact: bool = False,
        tile: int | None = None) -> torch.Tensor:
    """Half-quadratic splitting (Zoran & Weiss; Sec. 4.3): minimise
    ``(lambda/2)||x - y||^2 - sum_i log f(P_i x, t)`` by alternating, for each ``t`` of ``schedule``,

    * ``z_i = P_i x + 2t grad log f(P_i x, t)`` (one Tweedie step on every patch),
    * ``x = (lambda y + beta sum_i P_i^T z_i) / (lambda + beta C)``, ``beta = 1 / (2t)``,
      ``lambda = data_weight / sigma^2``.

    Since ``sum_i P_i^T z_i = C (x + tweedie_average(x, t))``, the pixel update is the weighted mean of ``y`` and
    the EB-PA estimate of ``x`` at time ``t``, with weights ``lambda / beta = 2 data_weight t / sigma^2`` and ``C``:
    they depend on ``t`` relative to ``sigma^2`` only. So ``sigma`` may also be one value per patch
    ``(N, 1, H-b+1, W-b+1)`` (heteroscedastic noise, ``boundary="valid"``): every patch then runs the schedule
    scaled by its own ``sigma^2`` (``schedule``: times relative to ``sigma^2``, :func:`hqs_schedule`), which is the
    update above at every
    pixel whose covering patches share one ``sigma`` and its natural extension (each patch's Tweedie step at its
    own time) where the map varies. Default schedule: :func:`hqs_schedule`. The prior sums over all
    overlapping patches, so it counts every pixel about ``b^2`` times; ``data_weight`` rebalances the
    data term (EPLL uses ``lambda = N / sigma^2``, N pixels per patch). With ``data_weight = 1`` the prior
    dominates and HQS over-smooths (it then loses to EB-PA). Each Tweedie step removes noise of level
    ``sqrt(2t)`` whether or not it is still there, so more iterations of the same range over-smooth: the
    schedule and the data weight go together. The defaults (6 steps from ``0.25 sigma^2 / 2`` to
    ``sigma^2 / 256``, data weight 9) are the best mean gain over EB-PA of 162 settings on centre crops of 12
    BSDS400 training images at sigma 15/25/50/100 (``benchmarks/tune_hqs.py``,
    ``benchmarks/results/hqs-tuning.md``).
    ``tile``: see :func:`tweedie_average` (each iteration is tiled, so the halo stays ``b - 1``).
    """
    batch, sigma, (rows, columns) = _prepare(model, noisy, sigma, boundary)
    relative = hqs_schedule() if schedule is None else schedule
    weight = HQS_DATA_WEIGHT if data_weight is None else data_weight
    variance = float(sigma) ** 2 if sigma.dim() == 0 else sigma**2
    # a map: one ladder of tables for the times of every iteration (each iteration's would be another table)
    ladder = (ladder_scores(model, torch.stack([min(relative) * variance.min(), max(relative) * variance.max()]))
              if sigma.dim() > 0 and not exact else None)
    estimate = lambda x, r: x + tweedie_average(model, x, r * variance, exact, tile, ladder)
    x = hqs_updates(batch, relative, weight, patch_counts(model, batch), estimate)
    return x[..., rows, columns].reshape(noisy.shape)


def hqs_updates(noisy: torch.Tensor, relative: list[float], data_weight: float, counts, estimate) -> torch.Tensor:
    """The HQS pixel updates ``x = (lambda y + beta C estimate(x, r)) / (lambda + beta C)`` for the times
    ``r sigma^2`` of ``relative`` (``lambda / beta = 2 data_weight r``); ``estimate(x, r)`` is the prior's
    Tweedie estimate of ``x`` at that time, ``C`` how often the prior counts each pixel."""
    x = noisy
    for r in relative:
        ratio = 2 * data_weight * r  # lambda / beta
        x = (ratio * noisy + counts * estimate(x, r)) / (ratio + counts)
    return x




def psnr(estimate, clean) -> float:
    """PSNR in dB of ``estimate`` clipped to [0, 1] against ``clean`` (the project's protocol)."""
    import numpy as np

    return float(10 * np.log10(1 / np.mean((np.clip(estimate, 0, 1) - clean) ** 2)))


def ebpa_std(model: PatchGMDM, noisy: torch.Tensor, sigma, tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """EB-PA's estimate of one gray channel ``(H, W)`` at ``sigma`` (a number or a per-pixel map ``(H, W)``) and its
    posterior std per pixel: the two parts of :func:`ebpa_posterior` combined by the model's uncertainty
    calibration when its checkpoint carries one (:func:`gmdm_cli.calibration.calibrate_uncertainty`), else their
    sum."""
    estimate, own, spread = ebpa_posterior(model, noisy, _patch_levels(model, noisy, sigma), tile)
    curve = model.metadata.get("uncertainty_calibration")
    if not curve:
        return estimate, (own + spread).sqrt()
    import numpy as np

    level = torch.as_tensor(sigma, dtype=own.dtype, device=own.device)
    position = torch.log(level).cpu().numpy()
    alpha, p, q = (torch.as_tensor(np.interp(position, np.log(curve["sigma"]), curve[key]), dtype=own.dtype,
                                   device=own.device) for key in ("alpha", "own", "spread"))
    variance2 = level**2
    calibrated = variance2 * torch.exp(alpha) * (own / variance2).clamp_min(1e-12) ** p \
        * (spread / variance2).clamp_min(1e-12) ** q
    return estimate, calibrated.sqrt()


def _patch_levels(model: PatchGMDM, noisy: torch.Tensor, sigma):
    """A per-pixel map ``(H, W)`` as the level of every patch, ``(1, 1, H-b+1, W-b+1)``: that of its centre pixel;
    a single level as it is."""
    if torch.as_tensor(sigma).dim() == 0:
        return sigma
    b, half = model.patch_size, model.patch_size // 2
    return sigma[half:noisy.shape[0] - b + 1 + half, half:noisy.shape[1] - b + 1 + half][None, None]


def noise_level_problem(sigma, scale: float = 1.0) -> str | None:
    """What is wrong with noise levels ``sigma`` (a number or a map) on a scale whose top is ``scale`` (1: the
    [0, 1] scale; 255), or None: every level must lie in ``(0, scale]``."""
    import numpy as np

    values = np.asarray(sigma, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if np.isfinite(values).all() and low > 0 and high <= scale:
        return None
    return f"values must lie in (0, {scale:g}] (found {low:g} to {high:g})"


def patch_denoise(model: PatchGMDM, noisy: torch.Tensor, sigma, method: str = "ebpa", iterations: int | None = None,
                  boundary: str = "valid", tile: int | None = None, return_std: bool = False):
    """One gray channel ``(H, W)`` by :func:`ebpa` or :func:`hqs` (``iterations`` steps of :func:`hqs_schedule`,
    default ``HQS_ITERATIONS``) at ``sigma``: a number, or a per-pixel map ``(H, W)`` (every patch at the level of
    its centre pixel, ``boundary="valid"``). ``return_std``: also the posterior std (:func:`ebpa_std`; EB-PA with
    ``boundary="valid"`` only)."""
    if return_std:
        if method != "ebpa" or boundary != "valid":
            raise ValueError("the posterior std goes with EB-PA and boundary 'valid'")
        return ebpa_std(model, noisy, sigma, tile)
    schedule = hqs_schedule(iterations or HQS_ITERATIONS)
    if torch.as_tensor(sigma).dim() > 0 and boundary != "valid":
        raise ValueError("a per-pixel noise map works with boundary 'valid'")
    sigma = _patch_levels(model, noisy, sigma)
    if method == "ebpa":
        return ebpa(model, noisy, sigma, boundary, tile=tile)
    return hqs(model, noisy, sigma, schedule, boundary=boundary, tile=tile)


def denoise_array(model: GMDM, image, sigma, method: str = "ebpa", boundary: str = "valid",
                  tile: int | None = None, colour: str = "rgb", iterations: int | None = None, return_std: bool = False):
    """Denoise a numpy image on the [0, 1] scale at noise level ``sigma`` (same scale), with any kind of model
    (:meth:`gmdm_cli.kinds.GMDM.denoise`).

    ``sigma`` is a number, or a per-pixel map ``(H, W)`` (heteroscedastic noise; EB-PA or HQS with every
    patch at the level of its centre pixel, ``boundary="valid"``), for a colour image also ``(H, W, 3)``, one
    map per RGB channel (the noise of each colour space channel follows,
    :func:`~gmdm_cli.colour.channel_noise_levels`). Gray ``(H, W)`` (and gray + alpha ``(H, W, 2)``) images are
    denoised directly; colour ``(H, W, 3|4)`` images in the channels of ``colour`` (see :mod:`gmdm_cli.colour`),
    each at its own noise level, alpha passed through. ``iterations``: HQS steps of :func:`hqs_schedule` over the
    model's default range (default: ``HQS_ITERATIONS`` for patch models, ``BAND_HQS_ITERATIONS`` for band
    models). The image stays in host memory; tiles (``tile``, see :func:`tweedie_average`) run on the model's
    device. A band (conv) model (:mod:`gmdm_cli.band_model`) mirrors the borders itself and works on whole
    images (``boundary`` and ``tile`` do not apply; a map sets the level of every lattice cell, see
    :func:`~gmdm_cli.band_model.band_denoise`). Returns float64 numpy, unclipped; with ``return_std`` also the
    posterior std of every pixel (:func:`ebpa_std`; ``(H, W)`` or ``(H, W, 3)``, no alpha).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    channels, levels, gray, alpha = channel_inputs(model, image, sigma, colour)
    with torch.no_grad():
        parts = [model.denoise(channel, level, method, iterations, boundary, tile, return_std)
                 for channel, level in zip(channels, levels)]
    return _assembled([part if return_std else (part,) for part in parts], gray, colour, alpha, return_std)


def channel_inputs(model: GMDM, image, sigma, colour: str):
    """What the gray prior works on for a numpy image on the [0, 1] scale with noise levels ``sigma`` (a number or a
    map, as :func:`denoise_array` takes them): its channels as tensors ``(H, W)`` in ``model``'s dtype (gray: one;
    colour: those of ``colour``), the noise level of each (a number, also for a map that holds one level, or a map
    tensor ``(H, W)``), whether it is gray,
    and its alpha channel (or None)."""
    import numpy as np

    from .colour import noise_gains, to_channels
    from .image_io import split_alpha

    problem = noise_level_problem(sigma)
    if problem:
        raise ValueError(f"noise levels {problem}")
    image, alpha = split_alpha(np.asarray(image))
    gray = image.ndim == 2
    channels = image[..., None] if gray else to_channels(image, colour)
    gains = np.ones(1) if gray else noise_gains(colour)
    maps = None if np.ndim(sigma) == 0 else channel_maps(np.asarray(sigma, dtype=np.float64), image, colour)
    dtype = model.logits.dtype
    levels = [float(sigma) * gains[k] if maps is None else _channel_level(maps[..., k], dtype)
              for k in range(len(gains))]
    return [torch.as_tensor(channels[..., k], dtype=dtype) for k in range(len(gains))], levels, gray, alpha


def single_level(levels) -> float | None:
    """The one level a map (an array) holds when all its values are equal, else None."""
    levels = np.asarray(levels)
    first = float(levels.flat[0])
    return first if bool((levels == first).all()) else None


def _channel_level(levels, dtype):
    """A channel's map ``(H, W)`` as a tensor, or as one number when it holds one level (one table, not a ladder)."""
    level = single_level(levels)
    return torch.as_tensor(levels, dtype=dtype) if level is None else level


def _assembled(parts, gray: bool, colour: str, alpha, return_std: bool):
    """:func:`denoise_array`'s result from its channels' ``(estimate[, std])`` tensors: back in RGB, alpha
    joined, and the std of each RGB channel."""
    import numpy as np

    from .colour import from_channel_variances, from_channels
    from .image_io import join_alpha

    result = np.stack([part[0].double().cpu().numpy() for part in parts], -1)
    output = result[..., 0] if gray else from_channels(result, colour)
    if not np.all(np.isfinite(output)):
        raise ValueError("the result is not finite (the image's values are too far outside [0, 1])")
    if not return_std:
        return join_alpha(output, alpha)
    stds = np.stack([part[1].double().cpu().numpy() for part in parts], -1)
    return join_alpha(output, alpha), stds[..., 0] if gray else np.sqrt(from_channel_variances(stds**2, colour))


def channel_maps(sigma, image, colour: str):
    """Per-pixel noise levels ``(H, W, C)`` of the channels that :func:`denoise_array` denoises, from a map
    ``(H, W)`` (the same level in every RGB channel) or, for a colour image, ``(H, W, 3)`` (one per RGB channel)."""
    import numpy as np

    from .colour import channel_noise_levels

    gray = image.ndim == 2
    if sigma.shape[:2] != image.shape[:2] or sigma.ndim > 3 or (sigma.ndim == 3 and (gray or sigma.shape[2] != 3)):
        expected = f"{image.shape[:2]}" + ("" if gray else f" or {image.shape[:2] + (3,)}")
        raise ValueError(f"noise map of shape {sigma.shape} does not match the image (expected {expected})")
    if gray:
        return sigma[..., None]
    rgb = sigma if sigma.ndim == 3 else np.repeat(sigma[..., None], 3, -1)
    return channel_noise_levels(rgb, colour)
