"""Posterior uncertainty of EB-PA: the calibrated std through the API and the CLI, and its calibration."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gmdm_cli
from conftest import random_model
from gmdm_cli.cli import cli
from gmdm_cli.denoisers import ebpa_posterior, ebpa_std
from gmdm_cli.image_io import read_image, write_image


def test_calibrated_std_is_the_stored_power_law_of_the_two_parts():
    model = random_model(patch_size=3, num_components=15, seed=40)
    image = torch.rand(12, 10, generator=torch.Generator().manual_seed(41), dtype=torch.float64)
    sigma = 0.08
    _, own, spread = ebpa_posterior(model, image, sigma, tile=0)
    assert torch.allclose(ebpa_std(model, image, sigma, tile=0)[1] ** 2, own + spread)  # uncalibrated: the sum
    model.metadata["uncertainty_calibration"] = {"sigma": [0.04, 0.16], "alpha": [0.2, 0.6], "own": [1.0, 1.4],
                                                 "spread": [0.2, 0.6]}
    alpha, p, q = 0.4, 1.2, 0.4  # sigma 0.08 lies halfway between in log sigma
    expected = sigma**2 * np.exp(alpha) * (own / sigma**2).clamp_min(1e-12) ** p * (spread / sigma**2).clamp_min(1e-12) ** q
    assert torch.allclose(ebpa_std(model, image, sigma, tile=0)[1] ** 2, expected, rtol=1e-10)


def test_posterior_of_a_noise_map_from_the_ladder_matches_the_exact_mixtures():
    """A map's posterior (the estimate and both variance parts) read from the ladder's tables with their
    curvatures: within 0.5 % of the exact mixtures' (the levels' interpolation in log sigma); one level through
    the map path equals the one-level path."""
    from gmdm_cli.checkpoint import load_model

    model = load_model("7x7", dtype=torch.float64)
    generator = torch.Generator().manual_seed(42)
    clean = torch.rand(1, 1, 40, 36, generator=generator, dtype=torch.float64)
    sigma = torch.exp(torch.empty(1, 1, 34, 30, dtype=torch.float64).uniform_(-4, -1.5, generator=generator))
    noisy = clean + torch.nn.functional.pad(sigma, (3, 3, 3, 3), mode="replicate") * torch.randn(
        clean.shape, generator=generator, dtype=torch.float64)
    for found, exact in zip(ebpa_posterior(model, noisy, sigma), ebpa_posterior(model, noisy, sigma, exact=True)):
        assert (found - exact).abs().max() < 5e-3 * exact.abs().max()
    flat = torch.full_like(sigma, 0.05)
    for one, mapped in zip(ebpa_posterior(model, noisy, 0.05), ebpa_posterior(model, noisy, flat, exact=True)):
        assert torch.allclose(one, mapped, rtol=0, atol=1e-5 * mapped.abs().max())


def test_api_returns_the_std_for_gray_colour_maps_and_blind(camera):
    noisy = camera + 20 / 255 * np.random.default_rng(0).standard_normal(camera.shape)
    denoised, std = gmdm_cli.denoise(noisy, sigma=20 / 255, return_std=True)
    assert np.allclose(denoised, gmdm_cli.denoise(noisy, sigma=20 / 255), atol=1e-6) and std.shape == camera.shape
    assert np.all(std > 0) and 2 / 255 < np.median(std) < 20 / 255
    rgb = np.stack([noisy, noisy.T, noisy[::-1]], -1)
    for colour in ("rgb", "opponent"):
        assert gmdm_cli.denoise(rgb, sigma=20 / 255, colour=colour, return_std=True)[1].shape == rgb.shape
    ramp = np.tile(np.linspace(5, 40, camera.shape[1]) / 255, (camera.shape[0], 1))
    assert np.isfinite(gmdm_cli.denoise(noisy, sigma=ramp, return_std=True)[1]).all()
    assert gmdm_cli.denoise(noisy, blind=True, return_noise=True, return_std=True).std.shape == camera.shape
    with pytest.raises(ValueError, match="goes with EB-PA"):
        gmdm_cli.denoise(noisy, sigma=20 / 255, method="hqs", return_std=True)
    with pytest.raises(ValueError, match="needs a patch model"):
        gmdm_cli.denoise(noisy, sigma=20 / 255, model="conv", return_std=True)


def test_shipped_7x7_std_is_calibrated_on_a_held_out_picture(camera):
    """The shipped 7x7 model carries an uncertainty calibration (BSDS400); on scikit-image's camera (in neither
    set) the RMS error over the pixels of each half of the predicted std is within 25 % of the RMS prediction."""
    from skimage import data

    clean = data.camera() / 255.0
    noisy = clean + 25 / 255 * np.random.default_rng(3).standard_normal(clean.shape)
    denoised, std = gmdm_cli.denoise(noisy, sigma=25 / 255, return_std=True)
    low = std <= np.median(std)
    for part in (low, ~low):
        ratio = np.sqrt(np.mean((denoised[part] - clean[part]) ** 2)) / np.sqrt(np.mean(std[part] ** 2))
        assert abs(np.log(ratio)) < 0.22, ratio


def test_cli_writes_the_uncertainty_and_refuses_what_it_cannot(tmp_path, monkeypatch, camera):
    monkeypatch.chdir(tmp_path)
    write_image("in.png", camera)
    runner = CliRunner()
    result = runner.invoke(cli, ["denoise", "in.png", "-o", "out.png", "--sigma", "20", "--uncertainty", "std.tif",
                                 "--json"])
    assert result.exit_code == 0, result.output
    std, info = read_image("std.tif")
    assert info.dtype == np.float32 and std.shape == camera.shape and 2 < np.median(std) < 20  # 0-255 units
    assert '"uncertainty": "std.tif"' in result.stdout
    assert runner.invoke(cli, ["denoise", "in.png", "-o", "o2.png", "--sigma", "20", "--uncertainty",
                               "std.png"]).exit_code == 0
    assert read_image("std.png")[0].ndim == 3  # the colour-mapped picture with its scale bar
    for extra in (["--method", "hqs"], ["--uncertainty", "std.jpg"]):
        bad = runner.invoke(cli, ["denoise", "in.png", "-o", "o3.png", "--sigma", "20", "--uncertainty", "s.npy",
                                  *extra])
        assert bad.exit_code == 2 and "--uncertainty" in bad.stderr
    bad = runner.invoke(cli, ["denoise", "in.png", "-o", "o4.png", "--sigma", "20", "--uncertainty", "o4.png"])
    assert bad.exit_code == 2 and "would be written to the same file" in bad.stderr


def test_calibrate_uncertainty_stores_a_curve_the_model_then_uses(tmp_path, monkeypatch, camera):
    from gmdm_cli.checkpoint import load_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    write_image("images/a.png", camera)
    write_image("images/b.png", camera.T)
    result = CliRunner().invoke(cli, ["calibrate", "7x7", "images", "-o", "cal.pt", "--uncertainty",
                                      "--levels", "10,30"])
    assert result.exit_code == 0, result.output
    curve = load_model("cal.pt").metadata["uncertainty_calibration"]
    assert curve["sigma"] == [10 / 255, 30 / 255] and len(curve["alpha"]) == 2 and curve["images"] == 2
    assert load_model("cal.pt").metadata["noise_calibration"] == load_model("7x7").metadata["noise_calibration"]


class _GaussianPrior:
    """A stand-in model whose prior is exactly Gaussian, ``x ~ N(mu, s^2)`` on every pixel independently: its
    Tweedie correction at time ``t`` is exact, ``2t (mu - x) / (s^2 + 2t)``, and so is the posterior."""

    kind = "gaussian"

    def __init__(self, mu: float, s: float):
        self.mu, self.s = mu, s
        self.logits = torch.zeros(1, dtype=torch.float64)

    def tweedie_correction(self, images, t):
        return 2 * t * (self.mu - images) / (self.s**2 + 2 * t)


def test_posterior_samples_follow_the_exact_law_of_a_gaussian_prior():
    """With an exact Gaussian prior the annealed dynamics target ``x_tau | y``, Gaussian with precision
    ``1/(s^2 + tau^2) + 1/(sigma^2 - tau^2)``; the final Tweedie step maps it to ``E[x | x_tau]``, a known linear
    function. With small steps the draws of 4096 independent pixels must match that law's mean and variance (a
    likelihood term of the wrong sign or scale, or a wrong noise scale, misses by far more than the tolerance).
    Small steps relax slowly where the prior is broad (here s >> tau): many of them."""
    from gmdm_cli.sampling import posterior_samples

    mu, s, sigma, end = 0.3, 0.2, 0.15, 0.05
    prior = _GaussianPrior(mu, s)
    y = torch.full((64, 64), 0.7, dtype=torch.float64)
    draws = posterior_samples(prior, y, sigma, 2, seed=5, levels=12, steps=1000, delta=0.02, end=end)
    tau2, v_y = (end * sigma) ** 2, 0.7
    precision = 1 / (s**2 + tau2) + 1 / (sigma**2 - tau2)
    mean_tau = (mu / (s**2 + tau2) + v_y / (sigma**2 - tau2)) / precision
    shrink = s**2 / (s**2 + tau2)
    expected_mean = mu + shrink * (mean_tau - mu)
    expected_var = shrink**2 / precision
    # the exact posterior of x for comparison: the end step leaves it almost unchanged
    assert abs(expected_mean - (s**2 * v_y + sigma**2 * mu) / (s**2 + sigma**2)) < 0.01
    values = draws.flatten()
    assert abs(float(values.mean()) - expected_mean) < 4 * np.sqrt(expected_var / values.numel())
    assert abs(float(values.var()) / expected_var - 1) < 0.06  # sampling error ~2 %, step bias ~1 %
    again = posterior_samples(prior, y, sigma, 1, seed=6, levels=12, steps=1000, delta=0.02, end=end)
    assert torch.equal(again[0], draws[1])  # sample k from seed + k, whatever the count


def test_posterior_samples_of_a_picture_average_to_ebpa_and_spread_like_the_std(camera):
    """On a held-out picture the mean of 8 samples approaches EB-PA (its squared error exceeds the posterior
    mean's by the posterior variance over 8: about 0.5 dB), and the samples' spread is near the predicted std."""
    from gmdm_cli.denoisers import psnr

    clean = camera[:96, :96]
    noisy = clean + 25 / 255 * np.random.default_rng(7).standard_normal(clean.shape)
    denoised, std = gmdm_cli.denoise(noisy, sigma=25 / 255, return_std=True)
    samples = gmdm_cli.posterior_samples(noisy, 8, sigma=25 / 255)
    assert samples.shape == (8, 96, 96)
    assert psnr(samples.mean(0), clean) > psnr(denoised, clean) - 0.8
    assert psnr(samples.mean(0), clean) > psnr(samples[0], clean) + 1.5  # they differ: averaging helps
    ratio = samples.std(0, ddof=1).mean() / std.mean()
    assert 0.7 < ratio < 1.3, ratio


def test_posterior_samples_of_colour_maps_and_blind(camera):
    crop = camera[:40, :48]
    rgba = np.stack([crop, crop[::-1], crop[:, ::-1], np.full_like(crop, 0.5)], -1)
    noisy = rgba.copy()
    noisy[..., :3] += 0.05 * np.random.default_rng(1).standard_normal(crop.shape + (3,))
    samples = gmdm_cli.posterior_samples(noisy, 2, sigma=0.05, seed=3)
    assert samples.shape == (2, 40, 48, 4) and np.all(samples[..., 3] == 0.5)
    assert not np.allclose(samples[0], samples[1])
    ramp = np.tile(np.linspace(0.02, 0.1, 48), (40, 1))
    gray = crop + ramp * np.random.default_rng(2).standard_normal(crop.shape)
    assert np.isfinite(gmdm_cli.posterior_samples(gray, 1, sigma=ramp)).all()
    assert gmdm_cli.posterior_samples(gray, 1, blind=True).shape == (1, 40, 48)
    with pytest.raises(ValueError, match="need a patch model"):
        gmdm_cli.posterior_samples(gray, 1, sigma=ramp, model="conv")
    with pytest.raises(ValueError, match="at least 1"):
        gmdm_cli.posterior_samples(gray, 0, sigma=0.05)


def test_cli_writes_posterior_samples(tmp_path, monkeypatch, camera):
    import json

    monkeypatch.chdir(tmp_path)
    clean = camera[:64, :64]
    write_image("noisy.npy", clean + 20 / 255 * np.random.default_rng(4).standard_normal(clean.shape))
    runner = CliRunner()
    result = runner.invoke(cli, ["denoise", "noisy.npy", "--sigma", "20", "--samples", "3", "--seed", "9",
                                 "--output-dir", "out", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["samples"] == [f"out/noisy-sample-{k}.npy" for k in (1, 2, 3)] and record["samples_spread_mean"] > 1
    draws = np.stack([read_image(path)[0] for path in record["samples"]])
    noisy = read_image("noisy.npy")[0]
    assert np.allclose(draws, gmdm_cli.posterior_samples(noisy, 3, sigma=20 / 255, seed=9), atol=1e-6)
    again = runner.invoke(cli, ["denoise", "noisy.npy", "--sigma", "20", "--samples", "3", "--output-dir", "out"])
    assert again.exit_code == 1 and "exists" in again.output  # nothing overwritten without --overwrite
    write_image("other.npy", clean)
    for arguments in (["-o", "x.npy"], ["--output-dir", "o2", "other.npy"]):
        refused = runner.invoke(cli, ["denoise", "noisy.npy", "--sigma", "20", "--samples", "2", *arguments])
        assert refused.exit_code == 2 and "--samples goes with --output-dir and a single input" in refused.output
