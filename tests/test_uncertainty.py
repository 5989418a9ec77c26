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
