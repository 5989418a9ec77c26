"""EB-PA's level by Stein's unbiased risk estimate (gmdm_cli.sure): the divergence, the unbiasedness, the choice."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gmdm_cli
from gmdm_cli.checkpoint import load_model
from gmdm_cli.cli import cli
from gmdm_cli.denoisers import denoise_array, ebpa, psnr
from gmdm_cli.sure import crops, stein_risks, sure_level, sure_levels
from tests.conftest import random_model


@pytest.fixture(scope="module")
def model():
    return load_model("7x7")


def _noisy(clean, sigma, seed):
    return clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape)


def test_the_risk_is_the_residual_plus_the_divergence_of_the_autograd_jacobian():
    """``stein_risks`` (tabulated curvatures, the divergence from the squared filters) against ``||D(y) - y||^2 +
    2 v (tr J - N)`` with the trace of the exact EB-PA's Jacobian by autograd, image borders included."""
    model = random_model(patch_size=3, seed=2)
    y = torch.rand(1, 1, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sigma, level = 0.2, 0.3

    def denoised(x):
        return ebpa(model, x.view(1, 1, 9, 11), level, exact=True).flatten()

    jacobian = torch.autograd.functional.jacobian(denoised, y.flatten())
    residual = float((denoised(y.flatten()) - y.flatten()).detach().square().sum())
    expected = residual + 2 * sigma**2 * (float(jacobian.trace()) - y.numel())
    with torch.no_grad():
        found = stein_risks(model, y, sigma, [level])[0]
    assert found == pytest.approx(expected, rel=1e-3)
    # the divergence is a large part of it: leaving it out would fail by far
    assert abs(residual - expected) > 0.05 * abs(expected)


def test_sure_is_an_unbiased_estimate_of_the_squared_error(model, camera):
    """Over 24 noise draws, SURE (``stein_risks`` + N v) at a level 1.3x the noise's matches the true squared error
    of EB-PA within three standard errors of their paired difference; without the divergence term it is off by
    many."""
    sigma, level = 20 / 255, 26 / 255
    image = torch.as_tensor(camera, dtype=torch.float32)
    differences, without = [], []
    for seed in range(24):
        noisy = image + sigma * torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            risk = stein_risks(model, noisy[None, None], sigma, [level])[0] + noisy.numel() * sigma**2
            denoised = ebpa(model, noisy, level)
        error = float((denoised.double() - image.double()).square().sum())
        residual = float((denoised.double() - noisy.double()).square().sum())
        differences.append(risk - error)
        without.append(residual - noisy.numel() * sigma**2 - error)
    bound = 3 * np.std(differences, ddof=1) / np.sqrt(len(differences))
    assert abs(np.mean(differences)) < bound, (np.mean(differences), bound)
    assert abs(np.mean(without)) > 10 * bound


@pytest.mark.parametrize("name, direction", [("grass", "lower"), ("brick", "higher")])
def test_sure_finds_the_level_that_denoises_best(model, name, direction):
    """On a textured image (grass) the best EB-PA level is below sigma, on a smooth one (brick) above; SURE's level,
    from a quarter of the image, is within 0.02 dB of the best on a fine grid, 0.3 dB or more above sigma's."""
    from skimage import data

    clean = getattr(data, name)()[:128, :128] / 255.0
    sigma = 15 / 255
    noisy = _noisy(clean, sigma, 0)
    factors = np.exp(np.linspace(np.log(0.7), np.log(1.5), 12))
    scores = [psnr(denoise_array(model, noisy, f * sigma), clean) for f in factors]
    level = sure_level(model, torch.as_tensor(noisy, dtype=torch.float32), sigma)
    assert (level < sigma) == (direction == "lower")
    found = psnr(denoise_array(model, noisy, level), clean)
    assert found > max(scores) - 0.02, (level / sigma, factors[int(np.argmax(scores))])
    assert found > psnr(denoise_array(model, noisy, sigma), clean) + 0.3


def test_the_crops_are_spread_over_the_image_each_once():
    image = torch.arange(321 * 481, dtype=torch.float64).view(321, 481)
    picked = crops(image)
    assert picked.shape == (9, 1, 32, 32)  # 10 x 15 crops' area: one in 16
    corners = [divmod(int(crop[0, 0, 0]), 481) for crop in picked]
    assert len(set(corners)) == 9 and len({row for row, _ in corners}) >= 5 and len({col for _, col in corners}) >= 5
    for crop, (row, column) in zip(picked, corners):
        assert torch.equal(crop[0], image[row:row + 32, column:column + 32])
    assert crops(image[:40, :40]).shape == (1, 1, 32, 32)
    assert crops(image[:20, :100]).shape == (1, 1, 20, 100)  # smaller than a crop: the whole image


def test_blind_denoises_constant_noise_at_the_sure_level_of_the_estimate(model, camera):
    noisy = _noisy(camera, 0.1, 3)
    done = gmdm_cli.denoise(noisy, blind=True, model=model, return_noise=True)
    estimate = gmdm_cli.estimate_noise(noisy, model=model)
    assert done.estimates[0].model == "constant" and isinstance(done.levels, float)
    assert done.levels == sure_level(model, torch.as_tensor(noisy, dtype=torch.float32), estimate)
    assert np.array_equal(done.image, gmdm_cli.denoise(noisy, sigma=done.levels, model=model))
    assert np.array_equal(done.image, gmdm_cli.denoise(noisy, sigma=estimate, model=model, sure=True))
    # without SURE: denoising at the estimated sigma
    plain = gmdm_cli.denoise(noisy, blind=True, model=model, sure=False)
    assert np.array_equal(plain, gmdm_cli.denoise(noisy, sigma=estimate, model=model))


def test_sure_levels_of_a_colour_image_keep_a_channel_map_and_choose_the_single_levels(model):
    from skimage import data

    clean = data.astronaut()[100:196, 100:196] / 255.0
    sigma = np.stack([np.full(clean.shape[:2], 0.05), np.full(clean.shape[:2], 0.1),
                      np.linspace(0.02, 0.1, 96)[None, :].repeat(96, 0)], -1)
    noisy = _noisy(clean, sigma, 1)
    levels = sure_levels(model, noisy, sigma)
    assert levels.shape == clean.shape and np.array_equal(levels[..., 2], sigma[..., 2])
    for k in (0, 1):
        assert np.all(levels[..., k] == levels[0, 0, k])
        assert levels[0, 0, k] == sure_level(model, torch.as_tensor(noisy[..., k], dtype=torch.float32), sigma[0, 0, k])
    # a channel that holds one level is denoised with that level's table (as a gray image), not the ladder
    denoised = gmdm_cli.denoise(noisy, sigma=levels, model=model)
    assert np.array_equal(denoised[..., 0], gmdm_cli.denoise(noisy[..., 0], sigma=levels[0, 0, 0], model=model))
    with pytest.raises(ValueError, match="SURE chooses the level of EB-PA"):
        sure_levels(model, noisy, 0.05, method="hqs")
    with pytest.raises(ValueError, match="SURE chooses the level of EB-PA"):
        gmdm_cli.denoise(noisy, sigma=0.05, model=model, colour="opponent", sure=True)


def test_denoise_cli_sure_option(tmp_path, camera):
    np.save(tmp_path / "a.npy", _noisy(camera, 10 / 255, 7))
    result = CliRunner().invoke(cli, ["denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "b.npy"),
                                      "--sigma", "10", "--sure", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert 10 / 1.6 <= record["sure_level"] <= 10 * 1.6 and record["sure_level"] != 10
    plain = CliRunner().invoke(cli, ["denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "c.npy"), "--sigma", "10",
                                     "--json"])
    assert "sure_level" not in json.loads(plain.output.strip().splitlines()[-1])
    blind = CliRunner().invoke(cli, ["denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "d.npy"), "--blind"])
    assert blind.exit_code == 0 and "SURE level" in blind.output
    ramp = _noisy(camera, np.linspace(0.01, 0.2, camera.shape[1])[None, :], 8)  # a map: no SURE level to show
    np.save(tmp_path / "ramp.npy", ramp)
    mapped = CliRunner().invoke(cli, ["denoise", str(tmp_path / "ramp.npy"), "-o", str(tmp_path / "g.npy"), "--blind",
                                      "--json"])
    record = json.loads(mapped.output.strip().splitlines()[-1])
    assert record["noise_model"] == "map" and record["sure_level"] is None
    bad = CliRunner().invoke(cli, ["denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "e.npy"), "--sigma", "10",
                                   "--sure", "--method", "hqs"])
    assert bad.exit_code == 2 and "--sure goes with --method ebpa" in bad.output
    assert not (tmp_path / "e.npy").exists()
    conv = CliRunner().invoke(cli, ["denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "e.npy"), "--sigma", "10",
                                    "--sure", "--model", "conv"])
    assert conv.exit_code == 2 and "--sure goes with a patch model" in conv.output
    np.save(tmp_path / "tiny.npy", camera[:5, :5])  # smaller than a patch: the same one line as without --sure
    tiny = CliRunner().invoke(cli, ["denoise", str(tmp_path / "tiny.npy"), "-o", str(tmp_path / "f.npy"), "--sigma",
                                    "10", "--sure"])
    assert tiny.exit_code == 1 and "smaller than the 7x7 patches" in tiny.output and "Traceback" not in tiny.output
    assert not (tmp_path / "f.npy").exists()
