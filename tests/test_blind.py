"""Blind noise models (gmdm_cli.blind): which noise explains an image, and the levels it implies."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gmdm_cli
from gmdm_cli.blind import MAP_FLOOR, MAP_RADIUS, estimate_blind, fit_nlf, nlf_levels
from gmdm_cli.noise import image_sites
from gmdm_cli.sites import local_levels
from gmdm_cli.checkpoint import load_model
from gmdm_cli.cli import cli
from gmdm_cli.noise import estimate_noise
from gmdm_cli.sites import clipped_pixels


@pytest.fixture(scope="module")
def model():
    return load_model("7x7")


def _noisy(clean, std, seed):
    return clean + std * np.random.default_rng(seed).standard_normal(clean.shape)


def test_texture_alone_does_not_make_the_typical_level_spread(model):
    """Weak constant noise (3/255) over an image half smooth, half grass: the quiet experts' typical local level
    is 1.75x the global one (texture read as noise), which alone would choose the map (5 dB worse here); with the
    texture taken out as in the map, the typical level is not spread, and one level is kept."""
    from skimage import data

    from gmdm_cli.blind import choose
    from gmdm_cli.denoisers import denoise_array, psnr

    image = np.tile(np.linspace(0.3, 0.6, 256)[:, None], (1, 256))
    image[:, 128:] = data.grass()[:256, :128] / 255.0
    noisy = _noisy(image, 3 / 255, 1)
    estimate = estimate_blind(model, noisy)
    assert estimate.model == "constant", (estimate.gains, estimate.typical, estimate.sigma)
    assert choose(estimate.gains, estimate.sigma, estimate.typical) == "map"  # without the texture correction
    known = psnr(denoise_array(model, noisy, 3 / 255), image)
    assert psnr(denoise_array(model, noisy, estimate.sigma_map), image) > known - 0.1


def test_noise_level_function_fit_recovers_a_and_b(model):
    """Poisson-Gaussian noise sigma^2 = a x + b on a flat-ish image spanning the intensities: a within 10 %; b
    within 10 % at a read noise of 12.75/255, within 25 % at 8/255, where the prior reads part of a weak noise on
    a texture-free image as the texture it expects (flat patches with sigma 5 read as 4.2)."""
    rows, columns = np.mgrid[0:256, 0:256] / 255
    clean = 0.1 + 0.8 * columns + 0.02 * np.sin(6 * rows)  # smooth: no texture to read as noise
    for a, b, b_tolerance in ((0.01, 0.0025, 0.1), (0.004, 0.001, 0.25)):
        noisy = _noisy(clean, np.sqrt(a * clean + b), 1)
        sites = image_sites(model, torch.as_tensor(noisy, dtype=torch.float32))
        (fitted_a, fitted_b), curve = fit_nlf(sites, local_levels(sites, MAP_RADIUS))
        assert abs(fitted_a - a) < 0.1 * a and abs(fitted_b - b) < b_tolerance * b, (fitted_a, fitted_b)
        assert len(curve) == 16 and all(0 < s < 0.2 for _, s, _ in curve)


@pytest.mark.parametrize("kind, expected", [("constant", "constant"), ("signal", "nlf"), ("step", "map"),
                                            ("ramp", "map"), ("fine-checkerboard", "constant")])
def test_auto_chooses_the_noise_model_of_each_kind(model, camera, kind, expected):
    """Constant noise keeps one level; signal-dependent noise gets the noise-level function; noise that changes
    over the image gets the (texture-corrected) map. A checkerboard of 8-pixel squares varies faster than any map can
    follow (and the true map gains nothing over one level there): one level."""
    rows, columns = np.mgrid[0:camera.shape[0], 0:camera.shape[1]]
    std = {"constant": np.full(camera.shape, 0.08), "signal": np.sqrt(0.01 * camera + 0.0004),
           "step": np.where(columns < camera.shape[1] // 2, 0.04, 0.16),
           "ramp": 0.02 + 0.18 * columns / columns.max(),
           "fine-checkerboard": np.where((rows // 8 + columns // 8) % 2 == 0, 0.1, 0.2)}[kind]
    noisy = _noisy(camera, std, 2)
    estimate = estimate_blind(model, noisy)
    assert estimate.model == expected, estimate.gains
    rmse = np.sqrt(np.mean((estimate.sigma_map - std) ** 2))
    if kind in ("constant", "step", "ramp"):
        assert rmse < 0.2 * np.sqrt(np.mean(std**2)), rmse
    if kind == "signal":  # the fitted function, lowered where the texture-corrected local levels are (to their floor)
        a, b = estimate.nlf
        assert abs(a - 0.01) < 0.25 * 0.01, (a, b)  # b: the flat-ish test above
        function = nlf_levels(model, torch.tensor(noisy, dtype=torch.float32), a, b).numpy()
        assert np.all(estimate.sigma_map <= np.maximum(function, MAP_FLOOR * estimate.sigma) + 1e-6)
        assert rmse < 0.35 * np.sqrt(np.mean(std**2)), rmse  # measured 0.30: the crop's texture lowers them
    if kind in ("step", "ramp"):  # far closer than the best single level, whose error is the truth's spread
        assert rmse < 0.4 * std.std(), (rmse, std.std())
    if kind == "fine-checkerboard":  # one level: about the best single level
        assert rmse < 1.05 * std.std(), (rmse, std.std())


@pytest.mark.parametrize("sigma", [5 / 255, 25 / 255])
def test_texture_correction_takes_out_what_texture_adds_to_the_local_levels(model, sigma):
    """Constant noise on an image whose right half is dense texture: the quiet experts' local levels read the
    texture as more noise (12.5 for 5, 28.5 for 25); the corrected ones come down towards the noise's (8.9,
    25.8), while on the smooth half, where all experts and the quiet ones agree, nothing changes."""
    from skimage import data

    from gmdm_cli.blind import all_expert_levels, texture_corrected

    image = np.tile(np.linspace(0.3, 0.6, 128)[:, None], (1, 128))
    image[:, 64:] = data.grass()[:128, :64] / 255.0
    sites = image_sites(model, torch.tensor(_noisy(image, sigma, 6), dtype=torch.float32))
    quiet = local_levels(sites, MAP_RADIUS)
    everything = all_expert_levels(model, sites, quiet)
    corrected = texture_corrected(quiet, everything, 0.0)
    middle = quiet.shape[1] // 2
    textured, smooth = (slice(middle + 4, None), slice(None, middle - 4))
    assert abs(corrected[:, textured].median() - sigma) < 0.6 * abs(quiet[:, textured].median() - sigma)
    assert torch.allclose(corrected[:, smooth].median(), quiet[:, smooth].median(), rtol=0.01)
    assert bool((corrected <= quiet + 1e-12).all())
    floored = texture_corrected(quiet, everything, 0.9 * sigma)
    assert bool((floored >= 0.9 * sigma - 1e-9).all())


def test_clipped_pixels_are_those_at_a_saturated_end():
    image = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.0, 0.7]])
    assert clipped_pixels(image).tolist() == [[True, False, True], [False, True, False]]
    assert not clipped_pixels(image - 0.1).any() and not clipped_pixels(image * 0.9)[0, 2]


@pytest.mark.parametrize("kind", ["constant", "signal"])
def test_estimates_stay_right_on_clipped_8_bit_files(model, kind):
    """Noise added, then clipped and rounded to 8 bits, on an image with saturated regions: the global level
    and the noise-level function leave the saturated patches out (before, the flattest windows were the
    saturated ones and sigma 25 read as 16.6 on the camera)."""
    rows, columns = np.mgrid[0:256, 0:256] / 255
    clean = np.clip(1.4 * columns - 0.2 + 0.05 * np.sin(9 * rows), 0, 1)  # black and white bands at the sides
    std = np.full(clean.shape, 25 / 255) if kind == "constant" else np.sqrt(0.01 * clean + 0.0004)
    noisy = _noisy(clean, std, 4)
    clipped = np.round(255 * np.clip(noisy, 0, 1)) / 255
    if kind == "constant":
        assert abs(255 * estimate_noise(model, clipped)[0] - 25) < 1.5
    else:
        a, b = estimate_blind(model, clipped, "nlf").nlf
        assert abs(a - 0.01) < 0.0015 and abs(b - 0.0004) < 0.0002, (a, b)


def test_colour_blind_estimates_give_every_channel_its_own_noise(model):
    rows, columns = np.mgrid[0:128, 0:128] / 127
    clean = np.stack([0.2 + 0.6 * columns, 0.5 + 0.1 * rows, 0.8 - 0.6 * columns], -1)
    levels = np.sqrt(np.array([0.01, 0.004, 0.002]) * clean + 0.0001)
    noisy = _noisy(clean, levels, 5)
    sigma_map, estimates = gmdm_cli.noise.estimate_noise(model, noisy, noise_map=True)[1], \
        gmdm_cli.estimate_noise_model(noisy, model=model)
    assert sigma_map.shape == clean.shape and len(estimates) == 3
    for k, a in enumerate((0.01, 0.004, 0.002)):
        assert abs(estimates[k].nlf[0] - a) < 0.25 * a, (k, estimates[k].nlf)
    assert np.sqrt(np.mean((sigma_map - levels) ** 2)) < 0.01
    denoised = gmdm_cli.denoise(noisy, blind=True, model=model)
    assert np.mean((denoised - clean) ** 2) < 0.3 * np.mean((noisy - clean) ** 2)


def test_estimate_noise_cli_reports_the_noise_model_and_the_nlf(tmp_path, camera):
    pytest.importorskip("matplotlib")
    noisy = _noisy(camera, np.sqrt(0.01 * camera + 0.0004), 6)
    np.save(tmp_path / "a.npy", noisy)
    result = CliRunner().invoke(cli, ["estimate-noise", str(tmp_path / "a.npy"), "--json", "--nlf",
                                      "--plot", str(tmp_path / "nlf.png")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert record["noise_model"] == "nlf" and abs(record["nlf"]["a"] - 0.01) < 0.002
    assert len(record["nlf"]["curve"]) == 16 and (tmp_path / "nlf.png").stat().st_size > 0
    text = CliRunner().invoke(cli, ["estimate-noise", str(tmp_path / "a.npy"), "--nlf"])
    assert "noise model nlf" in text.output and "noise-level function: sigma^2 = " in text.output
    forced = CliRunner().invoke(cli, ["denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "out.npy"), "--blind",
                                      "--noise-model", "map", "--json"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.output.strip().splitlines()[-1])["noise_model"] == "map"
    usage = CliRunner().invoke(cli, ["denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "b.npy"), "--sigma",
                                     "10", "--noise-model", "nlf"])
    assert usage.exit_code == 2 and "--noise-model goes with --blind" in usage.output


def test_all_experts_levels_from_a_table_of_the_levels_needed_match_the_whole_ladders(model, monkeypatch):
    """The texture correction reads the other experts' energies from a table of the levels it needs (a coarser grid
    than the whole ladder's, whose bottom sets it): the same local levels as from the whole ladder's table, within
    the tables' interpolation."""
    from gmdm_cli import blind

    from skimage import data

    clean = data.astronaut()[:128, :128].mean(-1) / 255.0
    noisy = _noisy(clean, np.sqrt(0.01 * clean + 0.0004), 8)
    sites = image_sites(model, torch.as_tensor(noisy, dtype=torch.float32))
    quiet = local_levels(sites, MAP_RADIUS)
    found = blind.all_expert_levels(model, sites, quiet)
    monkeypatch.setattr(blind, "TABLE_ALIGNMENT", 10**6)  # a table of the whole ladder, as before
    whole = blind.all_expert_levels(model, sites, quiet)
    assert len(sites.levels) > 30 and float(quiet.min()) > 3 * float(sites.levels[0])  # the tables differ
    assert torch.allclose(found, whole, rtol=2e-4)  # the tables' interpolation, ~1e-4 nats


def test_texture_correction_from_every_second_site_of_the_other_experts(model):
    """The other experts' energies are read at every second site in each direction, each standing for its 2 x 2
    block in the windows' sums (whose every site the quiet experts read): on signal-dependent noise the
    all-experts local levels stay within 3 % at the median of reading every site (another sample of the same
    windows: 1.5-2 % on three scikit-image crops), and blind EB-PA with the corrected map within 0.05 dB.
    (Reading them at every site with the other experts' table of the whole ladder: a second, slower table.)"""
    from skimage import data

    from gmdm_cli import blind, sites as gmdm_sites
    from gmdm_cli.denoisers import denoise_array, psnr

    for clean in (data.camera()[100:292, 100:292] / 255.0,):
        noisy = _noisy(clean, np.sqrt(0.01 * clean + 0.0004), 21)
        sites = image_sites(model, torch.as_tensor(noisy, dtype=torch.float32))
        quiet = local_levels(sites, MAP_RADIUS)
        found = blind.all_expert_levels(model, sites, quiet)
        others = [j for j in range(model.num_filters) if j not in sites.experts]
        every = sites.energies + gmdm_sites.summed_energies(model, sites.responses, sites.levels, others)
        everywhere = local_levels(sites, MAP_RADIUS, every)
        assert 0 < float((found / everywhere - 1).abs().median()) < 0.03
        floor = MAP_FLOOR * float(quiet.min())
        denoised = [denoise_array(model, noisy, blind.pixel_levels(
                        model, sites, blind.texture_corrected(quiet, everything, floor)).numpy())
                    for everything in (found, everywhere)]
        assert abs(psnr(denoised[0], clean) - psnr(denoised[1], clean)) < 0.05
