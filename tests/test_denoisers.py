"""EB-PA (Sec. 4.3) in convolution form against explicit patch extraction and averaging."""

import numpy as np
import torch
import torch.nn.functional as F

from conftest import random_model
from gmdm_cli.denoisers import denoise_array, ebpa, hqs, tweedie_average
from gmdm_cli.model import expert_log_density, patch_tweedie


def _explicit_ebpa(model, image, sigma):
    """Extract every b x b patch, apply Tweedie to each, put them back and average."""
    b = model.patch_size
    batch = image[None, None]
    patches = F.unfold(batch, b)[0].T  # (num_patches, a), row-major patch pixels
    estimates = patch_tweedie(model, patches, sigma**2 / 2)
    summed = F.fold(estimates.T[None], image.shape, b)
    counts = F.fold(torch.ones_like(estimates).T[None], image.shape, b)
    return (summed / counts)[0, 0]


def test_ebpa_conv_equals_explicit_patch_averaging():
    model = random_model(patch_size=3, num_components=21, seed=11)
    image = torch.rand(13, 10, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    for sigma in (0.02, 0.1):
        with torch.no_grad():
            assert torch.allclose(ebpa(model, image, sigma, exact=True), _explicit_ebpa(model, image, sigma), atol=1e-12)


def test_precision_weighted_averaging_weighs_each_patch_by_its_posterior_covariance_from_the_hessian():
    """Each patch's Tweedie estimate weighted by (tr Cov_i / sigma^2)^-q, Cov_i = sigma^2 (I + sigma^2 H_i), H_i
    the Hessian of the patch's log-density at t (by autograd, not the experts' curvatures): the same average from
    the exact mixtures, from the tables (to their interpolation error) and in tiles; q -> 0 is EB-PA."""
    model = random_model(patch_size=3, num_components=21, seed=21)
    image = torch.rand(13, 10, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    sigma, power = 0.1, 3.0
    t, b = sigma**2 / 2, model.patch_size
    patches = F.unfold(image[None, None], b)[0].T
    with torch.no_grad():
        estimates = patch_tweedie(model, patches, t)

    def log_density(patch):
        return expert_log_density(model, (patch @ model.filters.T)[None], t).sum()

    traces = torch.stack([torch.trace(sigma**2 * (torch.eye(b * b, dtype=torch.float64)
                                                   + sigma**2 * torch.autograd.functional.hessian(log_density, p)))
                          for p in patches])
    weights = ((traces / sigma**2) ** -power)[:, None].expand_as(estimates)
    explicit = (F.fold((estimates * weights).T[None], image.shape, b) / F.fold(weights.T[None], image.shape, b))[0, 0]
    assert float(weights.max() / weights.min()) > 1.5  # the weights differ from patch to patch
    with torch.no_grad():
        batch = image[None, None]
        weighted = batch + tweedie_average(model, batch, t, exact=True, weighting=power)
        assert torch.allclose(weighted[0, 0], explicit, atol=1e-10)
        assert not torch.allclose(weighted, ebpa(model, batch, sigma, exact=True), atol=1e-4)
        tabulated = batch + tweedie_average(model, batch, t, weighting=power)
        assert torch.allclose(tabulated[0, 0], explicit, atol=2e-4 * sigma)
        tiled = batch + tweedie_average(model, batch, t, tile=6, weighting=power)
        assert torch.allclose(tiled, tabulated, atol=1e-12)
        plain = batch + tweedie_average(model, batch, t, exact=True, weighting=1e-12)
        assert torch.allclose(plain, ebpa(model, batch, sigma, exact=True), atol=1e-10)


def test_ebpa_preserves_the_mean_of_a_single_patch_image():
    """With one patch covering the image, EB-PA is Tweedie on it: the DC is untouched."""
    model = random_model(patch_size=3, seed=13)
    image = torch.rand(3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.isclose(ebpa(model, image, 0.1, exact=True).mean(), image.mean())
        assert torch.isclose(ebpa(model, image, 0.1).mean(), image.mean())


def test_ebpa_per_patch_sigma_equals_constant_sigma():
    model = random_model(patch_size=3, seed=14)
    image = torch.rand(1, 1, 9, 8, dtype=torch.float64)
    sigma_map = torch.full((1, 1, 7, 6), 0.07, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(ebpa(model, image, sigma_map, exact=True), ebpa(model, image, 0.07, exact=True),
                              atol=1e-14)


def _map_case(smooth: bool):
    """A noisy 40 x 36 image and its per-patch levels: random from e^-5 to e^-1 (the first rows on a rung), or a
    smooth field from 0.02 to 0.18."""
    generator = torch.Generator().manual_seed(41)
    clean = torch.rand(1, 1, 40, 36, generator=generator, dtype=torch.float64)
    if smooth:
        rows, columns = torch.meshgrid(*(torch.linspace(0, 1, n, dtype=torch.float64) for n in (34, 30)), indexing="ij")
        sigma = (0.02 * torch.exp(2 * columns + rows))[None, None]
    else:
        sigma = torch.exp(torch.empty(1, 1, 34, 30, dtype=torch.float64).uniform_(-5, -1, generator=generator))
        sigma[..., :4, :] = 0.1  # a rung of the ladder
    noise = F.pad(sigma, (3, 3, 3, 3), mode="replicate") * torch.randn(clean.shape, generator=generator,
                                                                       dtype=torch.float64)
    return clean + noise, sigma


def test_per_patch_levels_from_the_ladder_of_tables_match_the_exact_mixtures():
    """A map's levels read from the tables of a ladder of levels 7.5 % apart and interpolated in log sigma
    (denoisers.ladder_corrections, what the posterior's moments read): within 0.3 % of the exact correction, on
    levels between and on the rungs."""
    from gmdm_cli.checkpoint import load_model
    from gmdm_cli.denoisers import ebpa_posterior

    model = load_model("7x7", dtype=torch.float64)
    for smooth in (False, True):
        noisy, sigma = _map_case(smooth)
        with torch.no_grad():
            exact = ebpa(model, noisy, sigma, exact=True) - noisy
            ladder = ebpa_posterior(model, noisy, sigma)[0] - noisy
        assert (ladder - exact).abs().max() < 3e-3 * exact.abs().max()


def test_map_passes_put_every_patch_on_a_rung_by_ordered_dithering():
    """EB-PA and HQS with a map read each patch at one rung of the ladder either side of its level (half the
    reads): the upper one where the fraction of the way exceeds the patch's threshold of a 4 x 4 ordered-dither
    pattern, so that every 4 x 4 block of patches at one level holds round(16 f) upper rungs. The estimate stays
    within 0.6 % (RMS) and 2 % (largest) of the exact per-patch correction; on a level between two rungs the
    nearest rung would be off by 2-4 % (RMS) and shift the correction's energy by 4-7 %, the dithered ones by
    less than 1 % and 0.5 %. A map on the rungs is read as it is."""
    from skimage import data

    from gmdm_cli.checkpoint import load_model
    from gmdm_cli.denoisers import LADDER_LEVELS, ladder_position, rung_times

    for fraction in (0.1, 0.37, 0.5, 0.93):
        sigma = LADDER_LEVELS[40] ** (1 - fraction) * LADDER_LEVELS[41] ** fraction
        rungs = (2 * rung_times(torch.full((2, 1, 9, 13), sigma**2 / 2, dtype=torch.float64))).sqrt()
        upper = torch.isclose(rungs, LADDER_LEVELS[41].expand_as(rungs), rtol=1e-12)
        assert bool((upper | torch.isclose(rungs, LADDER_LEVELS[40].expand_as(rungs), rtol=1e-12)).all())
        blocks = F.avg_pool2d(upper[:, :, :8, :12].double(), 4) * 16  # the whole 4 x 4 blocks
        assert bool((blocks == round(16 * fraction)).all())
    noisy, sigma = _map_case(smooth=False)
    rungs = (2 * rung_times(sigma**2 / 2)).sqrt()
    lower, _ = ladder_position(LADDER_LEVELS, sigma)
    assert bool(((rungs >= LADDER_LEVELS[lower] * (1 - 1e-12))
                 & (rungs <= LADDER_LEVELS[lower + 1] * (1 + 1e-12))).all())
    assert torch.allclose((2 * rung_times(rungs**2 / 2)).sqrt(), rungs, rtol=1e-12)  # on the rungs: kept

    model = load_model("7x7", dtype=torch.float64)
    for smooth in (False, True):
        noisy, sigma = _map_case(smooth)
        with torch.no_grad():
            exact = ebpa(model, noisy, sigma, exact=True) - noisy
            dithered = ebpa(model, noisy, sigma) - noisy
        rms = float((dithered - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt())
        assert rms < 6e-3 and (dithered - exact).abs().max() < 2e-2 * exact.abs().max()

    clean = torch.tensor(data.camera()[100:164, 100:164] / 255.0)[None, None]
    generator = torch.Generator().manual_seed(5)
    for fraction in (0.3, 0.5):
        level = float(LADDER_LEVELS[40] ** (1 - fraction) * LADDER_LEVELS[41] ** fraction)
        noisy = clean + level * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        sigma = torch.full((1, 1, 58, 58), level, dtype=torch.float64)
        with torch.no_grad():
            exact = ebpa(model, noisy, sigma, exact=True) - noisy
            dithered = ebpa(model, noisy, sigma) - noisy
            nearest = ebpa(model, noisy, torch.full_like(sigma, float(LADDER_LEVELS[40 + (fraction >= 0.5)])),
                           exact=True) - noisy
        energy = exact.pow(2).mean()
        errors = [float((found - exact).pow(2).mean().sqrt() / energy.sqrt()) for found in (dithered, nearest)]
        shifts = [abs(float(found.pow(2).mean() / energy) - 1) for found in (dithered, nearest)]
        assert errors[0] < 0.01 < 0.02 < errors[1] and shifts[0] < 0.005 < 0.03 < shifts[1]


def test_a_maps_tables_span_its_levels_once_for_every_tile(monkeypatch):
    """A map's ladder of tables spans the levels of its patches (not the padding beyond the last patch, which
    once stretched a map of 0.03-0.1 down to the ladder's bottom: 67 levels instead of 20), built once for all
    tiles, and a wide ladder is split into tables that each hold every patch's pair of levels."""
    from gmdm_cli import denoisers, tables
    from gmdm_cli.denoisers import LADDER_LEVELS

    spans = []
    original = denoisers.ladder_scores

    def recorded(model, t):
        sigma = (2 * t).sqrt()
        spans.append((float(sigma.min()), float(sigma.max())))
        return original(model, t)

    monkeypatch.setattr(denoisers, "ladder_scores", recorded)
    model = random_model(patch_size=3, seed=19)
    image = torch.rand(1, 1, 30, 26, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    sigma = torch.linspace(0.03, 0.1, 24, dtype=torch.float64).expand(1, 1, 28, 24).contiguous()
    whole = ebpa(model, image, sigma, tile=0)
    assert torch.allclose(ebpa(model, image, sigma, tile=16), whole, atol=1e-12)
    below, above = (float(LADDER_LEVELS[int(torch.searchsorted(LADDER_LEVELS, torch.tensor(level, dtype=torch.float64)))
                                        - shift]) for level, shift in ((0.03, 1), (0.1, 0)))
    assert len(spans) == 2 and spans[0][0] >= below - 1e-9 and spans[0][1] <= above + 1e-9  # the rungs around
    monkeypatch.setattr(tables, "SCORE_TABLE_BYTES", 1)
    monkeypatch.setattr(denoisers, "SCORE_TABLE_BYTES", 1)
    ladder = original(model, torch.tensor([[0.001**2 / 2, 0.5]], dtype=torch.float64))
    assert len(ladder) > 2 and all(a.first + a.count - 1 == b.first for a, b in zip(ladder, ladder[1:]))
    wide = sigma * torch.linspace(0.1, 5, 24, dtype=torch.float64)  # the tables of all its patches' rungs
    assert torch.allclose(ebpa(model, image, wide, tile=0),
                          ebpa(model, image, (2 * denoisers.rung_times(wide**2 / 2)).sqrt(), exact=True),
                          rtol=0, atol=3e-3)


def test_maps_with_nearby_levels_share_the_ladders_tables():
    """The next image of a batch, whose map spans nearly the same levels, reads the kept tables (aligned ends);
    a map beyond them gets its own, which holds all its levels."""
    from gmdm_cli.denoisers import LADDER_LEVELS, ladder_scores

    model = random_model(patch_size=3, seed=21)
    times = lambda low, high: torch.tensor([low, high], dtype=torch.float64) ** 2 / 2  # noqa: E731
    ladder = ladder_scores(model, times(0.031, 0.1))
    assert ladder_scores(model, times(0.033, 0.095)) is ladder
    other = ladder_scores(model, times(0.01, 0.1))
    assert other is not ladder
    assert LADDER_LEVELS[other[0].first] <= 0.01 and LADDER_LEVELS[other[-1].first + other[-1].count - 1] >= 0.1
    assert other[0].first % 4 == 0


def test_hqs_of_a_map_reads_one_ladder_for_all_its_iterations(monkeypatch):
    """HQS with a noise map builds (or finds) one ladder of tables for the times of every iteration, not one per
    iteration, and its result equals the exact mixtures'."""
    from gmdm_cli import denoisers

    calls = []
    original = denoisers.ladder_scores
    monkeypatch.setattr(denoisers, "ladder_scores", lambda model, t: calls.append(t) or original(model, t))
    model = random_model(patch_size=3, seed=22)
    generator = torch.Generator().manual_seed(23)
    image = torch.rand(1, 1, 24, 22, generator=generator, dtype=torch.float64)
    sigma = 0.03 + 0.07 * torch.rand(1, 1, 22, 20, generator=generator, dtype=torch.float64)
    result = hqs(model, image, sigma)
    assert len(calls) == 1
    assert torch.allclose(result, hqs(model, image, sigma, exact=True), rtol=0, atol=2e-3)


def test_denoise_array_handles_colour_channels_and_alpha():
    model = random_model(patch_size=3, seed=15).float()
    rgba = np.random.default_rng(16).uniform(size=(12, 11, 4))
    result = denoise_array(model, rgba, 0.05)
    assert result.shape == rgba.shape
    assert np.array_equal(result[..., 3], rgba[..., 3])
    gray = denoise_array(model, rgba[..., 1], 0.05)
    assert np.allclose(result[..., 1], gray, atol=1e-6)


def test_reflect_boundary_equals_valid_ebpa_of_the_mirrored_image():
    model = random_model(patch_size=3, seed=17)
    image = torch.rand(10, 9, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    mirrored = F.pad(image[None, None], (2, 2, 2, 2), mode="reflect")[0, 0]
    with torch.no_grad():
        expected = ebpa(model, mirrored, 0.05, exact=True)[2:12, 2:11]
        assert torch.allclose(ebpa(model, image, 0.05, boundary="reflect", exact=True), expected, atol=1e-14)


def test_hqs_schedule_decreases_geometrically():
    from gmdm_cli.denoisers import hqs_schedule

    schedule = hqs_schedule(iterations=6, start=1.0, end=1 / 32)  # times relative to sigma^2
    assert schedule[0] == 1 / 2 and abs(schedule[-1] - 1 / 64) < 1e-15
    assert all(a > b for a, b in zip(schedule, schedule[1:]))
    ratios = [b / a for a, b in zip(schedule, schedule[1:])]
    assert max(ratios) - min(ratios) < 1e-12


def test_hqs_beats_ebpa_and_improves_monotonically(camera):
    from gmdm_cli.checkpoint import load_model
    from gmdm_cli.denoisers import hqs, hqs_schedule, psnr

    model = load_model("7x7")
    sigma = 25 / 255
    noisy = torch.tensor(camera + sigma * np.random.default_rng(19).standard_normal(camera.shape),
                         dtype=torch.float32)
    with torch.no_grad():
        baseline = psnr(ebpa(model, noisy, sigma).numpy(), camera)
        schedule = hqs_schedule()
        values = [psnr(hqs(model, noisy, sigma, schedule[:k]).numpy(), camera) for k in range(1, len(schedule) + 1)]
    assert values[-1] > baseline + 0.2
    assert all(b > a - 0.02 for a, b in zip(values, values[1:]))  # never diverges along the schedule


def test_hqs_with_a_constant_noise_map_equals_hqs_with_one_sigma():
    from gmdm_cli.denoisers import hqs

    model = random_model(patch_size=3, seed=20)
    image = torch.rand(1, 1, 9, 8, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    sigma_map = torch.full((1, 1, 7, 6), 0.07, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(hqs(model, image, sigma_map, exact=True), hqs(model, image, 0.07, exact=True), atol=1e-12)


def test_hqs_with_a_noise_map_beats_ebpa_with_it(camera):
    from gmdm_cli.checkpoint import load_model
    from gmdm_cli.denoisers import psnr

    model = load_model("7x7")
    truth = np.where(np.arange(camera.shape[1])[None, :] < 48, 10 / 255, 40 / 255) * np.ones_like(camera)
    noisy = camera + truth * np.random.default_rng(22).standard_normal(camera.shape)
    ebpa_psnr = psnr(denoise_array(model, noisy, truth), camera)
    hqs_psnr = psnr(denoise_array(model, noisy, truth, "hqs"), camera)
    assert hqs_psnr > ebpa_psnr + 0.2, (hqs_psnr, ebpa_psnr)


def _pooled_patch_posteriors(model, image, sigma):
    """Reference for :func:`ebpa_posterior`: every patch's posterior mean and covariance from autograd's gradient
    and Hessian of ``log f`` (Tweedie's first and second order), pooled at each pixel as an equal mixture."""
    from gmdm_cli.model import patch_energy

    b = model.patch_size
    height, width = image.shape
    sums = torch.zeros(3, height, width, dtype=torch.float64)  # variances, means, squared means
    counts = torch.zeros(height, width, dtype=torch.float64)
    for r in range(height - b + 1):
        for c in range(width - b + 1):
            patch = image[r:r + b, c:c + b].reshape(1, -1).clone().requires_grad_()
            gradient, = torch.autograd.grad(-patch_energy(model, patch, sigma**2 / 2).sum(), patch, create_graph=True)
            hessian = torch.stack([torch.autograd.grad(gradient[0, k], patch, retain_graph=True)[0][0]
                                   for k in range(b * b)])
            covariance = sigma**2 * (torch.eye(b * b, dtype=torch.float64) + sigma**2 * hessian)
            mean = (patch + sigma**2 * gradient)[0].detach()
            sums[:, r:r + b, c:c + b] += torch.stack([torch.diagonal(covariance), mean, mean**2]).view(3, b, b)
            counts[r:r + b, c:c + b] += 1
    variance, mean, square = sums / counts
    return mean, variance, variance + square - mean**2


def test_ebpa_posterior_variance_is_tweedies_second_order_pooled_over_patches():
    from gmdm_cli.denoisers import ebpa_posterior

    model = random_model(patch_size=3, num_components=15, seed=30)
    image = torch.rand(7, 6, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    sigma = 0.1
    mean, own, pooled = _pooled_patch_posteriors(model, image, sigma)
    levels = torch.full((1, 1, 5, 4), sigma, dtype=torch.float64)  # a map, exact: the exact experts
    estimate, own_part, spread_part = ebpa_posterior(model, image, levels, tile=0, exact=True)
    assert torch.allclose(estimate, mean, atol=1e-12) and torch.allclose(own_part, own, atol=1e-12)
    assert torch.allclose(own_part + spread_part, pooled, atol=1e-12)
    tabulated = sum(ebpa_posterior(model, image, sigma, tile=4)[1:])  # one sigma: tables, in tiles
    assert torch.allclose(tabulated, pooled, rtol=1e-4, atol=1e-9)


def test_ebpa_posterior_variance_matches_the_error_of_exact_prior_draws():
    """Monte-Carlo: patches drawn exactly from the prior (Corollary 2.1) plus noise; a single patch's posterior
    variance, averaged over draws, is the mean squared error of its posterior mean."""
    from gmdm_cli.denoisers import ebpa_posterior
    from gmdm_cli.sampling import sample_patches

    model = random_model(patch_size=3, num_components=15, seed=32)
    generator = torch.Generator().manual_seed(33)
    sigma = 0.1
    clean = sample_patches(model, 20000, 0.0, generator)
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    estimate, variance, spread = ebpa_posterior(model, noisy[:, None], sigma, tile=0)
    assert float(spread.abs().max()) < 1e-12  # one patch: nothing to disagree with
    ratio = ((estimate[:, 0] - clean) ** 2).mean(0) / variance[:, 0].mean(0)
    assert float((ratio - 1).abs().max()) < 0.05  # 20 000 draws: about 1 % standard error per pixel
