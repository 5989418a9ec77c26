"""The band GMDM (the convolutional model of Sec. 3.2, critically sampled): an orthonormal band transform
with the ideal pass bands of Eqs. 16-17, the diffusion equation, normalisation, score and Tweedie."""

import torch

from gmdm_cli.band_model import (BandGMDM, _dct_matrix, band_coefficients, band_denoise, band_energy, band_image,
                                 band_matrix, band_score, band_tweedie)


def random_band_model(bands=2, num_components=15, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = BandGMDM.initial(bands, num_components, dtype=torch.float64)
    with torch.no_grad():
        model.logits.copy_(torch.randn(model.logits.shape, generator=generator, dtype=torch.float64))
    return model


def test_band_matrix_is_orthonormal_with_ideal_pass_bands():
    size, bands = 12, 3
    a = band_matrix(size, bands)
    assert torch.allclose(a @ a.T, torch.eye(size, dtype=torch.float64), atol=1e-12)
    dct = _dct_matrix(size)
    n = size // bands
    for m in range(bands):
        rows = a[m * n:(m + 1) * n]
        # the band's projector is the ideal pass band of DCT frequencies m n ... (m + 1) n - 1, magnitude 1
        mask = torch.zeros(size, dtype=torch.float64)
        mask[m * n:(m + 1) * n] = 1
        assert torch.allclose(rows.T @ rows, dct.T @ torch.diag(mask) @ dct, atol=1e-12)


def test_coefficients_and_image_are_inverse_and_orthonormal():
    model = random_band_model(bands=4)
    image = torch.rand(2, 1, 16, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = band_coefficients(model, image)
    assert c.shape == (2, 16, 4, 3)
    assert torch.allclose(band_image(model, c), image, atol=1e-12)
    assert torch.allclose(c.pow(2).sum((1, 2, 3)), image.pow(2).sum((1, 2, 3)), atol=1e-12)  # Parseval
    # band (0, 0) is the coarse image: a constant image lives there only
    flat = band_coefficients(model, torch.full((1, 1, 16, 12), 0.3, dtype=torch.float64))
    assert flat[:, 1:].abs().max() < 1e-12 and flat[:, 0].abs().min() > 0


def test_score_is_the_gradient_of_the_log_density():
    model = random_band_model(bands=2, seed=2)
    image = (0.3 * torch.randn(1, 1, 6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    image.requires_grad_(True)
    (gradient,) = torch.autograd.grad(-band_energy(model, image, 0.02).sum(), image)
    with torch.no_grad():
        assert torch.allclose(band_score(model, image, 0.02), gradient, atol=1e-10)


def test_density_solves_the_diffusion_equation():
    """d/dt f = Laplacian f for f = exp(-band_energy), by float64 autograd on a 4x4 image."""
    model = random_band_model(bands=2, seed=4)
    x = (0.2 * torch.randn(16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)).requires_grad_(True)
    for t_value in (0.01, 0.05):
        t = torch.tensor(t_value, dtype=torch.float64, requires_grad=True)
        density = lambda x, t: torch.exp(-band_energy(model, x.view(1, 1, 4, 4), t)[0])
        (d_dt,) = torch.autograd.grad(density(x, t), t)
        (gradient,) = torch.autograd.grad(density(x, t), x, create_graph=True)
        laplacian = sum(torch.autograd.grad(gradient[i], x, retain_graph=True)[0][i] for i in range(16))
        assert torch.isclose(d_dt, laplacian, rtol=1e-8), (float(d_dt), float(laplacian))


def test_density_integrates_to_one_on_the_modelled_subspace():
    """2x2 images with 2x2 bands: three modelled coefficients; integrate f over the zero-mean pixel subspace
    (an arbitrary orthonormal basis of it, not the model's) on a grid."""
    model = random_band_model(bands=2, num_components=9, seed=6)
    basis, _ = torch.linalg.qr(torch.cat([torch.full((4, 1), 0.5, dtype=torch.float64),
                                          torch.randn(4, 3, generator=torch.Generator().manual_seed(7),
                                                      dtype=torch.float64)], 1))
    zero_mean = basis[:, 1:]  # (4, 3), orthonormal, orthogonal to the constant image
    radius, points = 3.2, 64
    axis = torch.linspace(-radius, radius, points, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).view(-1, 3)
    images = (grid @ zero_mean.T + 0.4).view(-1, 1, 2, 2)
    with torch.no_grad():
        total = torch.exp(-band_energy(model, images, 0.1)).sum() * (axis[1] - axis[0]) ** 3
    assert abs(float(total) - 1) < 1e-3


def test_tweedie_is_the_posterior_mean_of_each_coefficient():
    """Per coefficient, x + 2t psi'/psi equals the posterior mean of the clean coefficient under the mixture
    prior at t = 0, computed directly."""
    model = random_band_model(bands=2, num_components=11, seed=8)
    image = 0.3 * torch.randn(1, 1, 4, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    t = 0.03
    with torch.no_grad():
        estimate = band_coefficients(model, band_tweedie(model, image, t))[0, 1:].reshape(3, -1)
        y = band_coefficients(model, image)[0, 1:].reshape(3, -1)
        weights = torch.softmax(model.logits, 1)
        prior, noise = model.sigma0**2, 2 * t
        # component l: c ~ N(mu_l, sigma0^2), y | c ~ N(c, 2t): posterior of l and E[c | y, l]
        log_r = torch.log(weights)[:, None] - (y[..., None] - model.means) ** 2 / (2 * (prior + noise))
        r = torch.softmax(log_r, -1)
        mean_given_l = (noise * model.means + prior * y[..., None]) / (prior + noise)
        assert torch.allclose(estimate, (r * mean_given_l).sum(-1), atol=1e-12)


def test_tweedie_with_one_time_per_cell_shrinks_each_coefficient_at_its_own_time():
    """A time per lattice cell (heteroscedastic noise): every coefficient of the cell is the posterior mean at
    that cell's time; one time everywhere is the single-time estimate."""
    model = random_band_model(bands=2, num_components=11, seed=15)
    image = 0.3 * torch.randn(1, 1, 4, 6, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    times = torch.tensor([[0.001, 0.01, 0.05], [0.02, 0.003, 0.08]], dtype=torch.float64)[None, None]
    with torch.no_grad():
        per_cell = band_coefficients(model, band_tweedie(model, image, times))
        for t in times.flatten().tolist():
            cells = times[0, 0] == t
            single = band_coefficients(model, band_tweedie(model, image, t))
            assert torch.allclose(per_cell[0, :, cells], single[0, :, cells], atol=1e-12)
        assert torch.allclose(band_tweedie(model, image, torch.full_like(times, 0.02)),
                              band_tweedie(model, image, 0.02), atol=1e-12)


def test_conv_model_denoises_with_a_noise_map_better_than_with_one_level():
    """Two noise levels side by side: EB-PA (cycle-spun Tweedie) and HQS of the shipped conv model with the
    true map beat the same method at the RMS level; a constant map gives the single-level result."""
    import numpy as np
    from skimage import data

    from gmdm_cli.checkpoint import load_model
    from gmdm_cli.denoisers import denoise_array, psnr

    model = load_model("conv")
    clean = data.camera()[100:228, 100:228] / 255.0
    sigma_map = np.where(np.arange(128) < 64, 10 / 255, 40 / 255)[None, :] * np.ones((128, 1))
    noisy = clean + sigma_map * np.random.default_rng(17).standard_normal(clean.shape)
    rms = float(np.sqrt(np.mean(sigma_map**2)))
    for method in ("ebpa", "hqs"):
        with_map = psnr(denoise_array(model, noisy, sigma_map, method), clean)
        with_rms = psnr(denoise_array(model, noisy, rms, method), clean)
        assert with_map > with_rms + 0.3, (method, with_map, with_rms)
    constant = denoise_array(model, noisy, np.full(clean.shape, rms))
    assert np.abs(constant - denoise_array(model, noisy, rms)).max() < 2e-3  # exact mixtures vs tables


def test_cycle_spinning_keeps_constants_for_any_image_size():
    """A constant image has no coefficient outside band (0, 0); symmetric experts have no score at 0."""
    model = random_band_model(bands=4, seed=10)
    with torch.no_grad():
        model.logits.copy_(model.logits + model.logits.flip(1))
    for height, width in ((13, 10), (3, 5)):  # smaller than the bands: mirrored as often as needed
        constant = torch.full((height, width), 0.7, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(band_denoise(model, constant, 0.1), constant, atol=1e-12)


def test_conv_model_trains_denoises_and_estimates_noise_through_the_cli(tmp_path):
    """gmdm train --model-type conv, then gmdm denoise and estimate-noise with the checkpoint; the trained
    model denoises better than the untrained one, which keeps only the coarse band."""
    import json

    import imageio.v3 as iio
    import numpy as np
    from click.testing import CliRunner
    from skimage import data

    from gmdm_cli.checkpoint import load_model, read_checkpoint
    from gmdm_cli.cli import cli
    from gmdm_cli.denoisers import denoise_array, psnr

    folder = tmp_path / "images"
    folder.mkdir()
    for i, picture in enumerate((data.camera(), data.moon(), data.coins())):
        iio.imwrite(folder / f"{i}.png", picture[:128, :128])
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(folder), "-o", str(tmp_path / "conv.pt"), "--model-type", "conv",
                                 "--bands", "4", "--steps", "150", "--learning-rate", "0.03", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    payload = read_checkpoint(tmp_path / "conv.pt")
    assert payload["format"] == "gmdm-band" and payload["metadata"]["bands"] == 4
    assert payload["metadata"]["crop_size"] == 32 and payload["training"]["config"]["batch_size"] == 16
    bad = runner.invoke(cli, ["train", str(folder), "-o", str(tmp_path / "x.pt"), "--bands", "4"])
    assert bad.exit_code == 2 and "--bands goes with --model-type conv" in bad.output

    clean = data.astronaut()[100:228, 150:278, 1] / 255.0
    noisy = clean + 25 / 255 * np.random.default_rng(12).standard_normal(clean.shape)
    np.save(tmp_path / "noisy.npy", noisy)
    result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "out.npy"),
                                 "--sigma", "25", "--model", str(tmp_path / "conv.pt")])
    assert result.exit_code == 0, result.output
    trained = psnr(np.load(tmp_path / "out.npy"), clean)
    untrained = psnr(denoise_array(BandGMDM.initial(4), noisy, 25 / 255), clean)
    assert trained > psnr(noisy, clean) + 5 and trained > untrained + 1, (trained, untrained, psnr(noisy, clean))
    assert np.allclose(np.load(tmp_path / "out.npy"),
                       denoise_array(load_model(tmp_path / "conv.pt"), noisy, 25 / 255), atol=1e-6)

    result = runner.invoke(cli, ["estimate-noise", str(tmp_path / "noisy.npy"), "--model", str(tmp_path / "conv.pt"),
                                 "--json", "--map", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert 15 < record["sigma"] < 35 and 10 < record["map_mean"] < 40
    assert iio.imread(record["noise_map_tif"]).shape == clean.shape
    result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "blind.npy"),
                                 "--blind", "--method", "hqs", "--noise-map", str(tmp_path / "map.npy"),
                                 "--model", str(tmp_path / "conv.pt")])
    assert result.exit_code == 0, result.output
    saved_map = np.load(tmp_path / "map.npy")
    assert 10 < np.median(saved_map) < 40
    assert np.allclose(np.load(tmp_path / "blind.npy"),
                       denoise_array(load_model(tmp_path / "conv.pt"), noisy, saved_map / 255, "hqs"), atol=1e-5)
    assert psnr(np.load(tmp_path / "blind.npy"), clean) > psnr(noisy, clean) + 3
    refused = runner.invoke(cli, ["sample", "-o", str(tmp_path / "s.png"), "--model", str(tmp_path / "conv.pt")])
    assert refused.exit_code == 1 and "works with patch models" in refused.output
    sampled = runner.invoke(cli, ["sample", "-o", str(tmp_path / "s.npy"), "--size", "24x32", "--steps", "1",
                                  "--model", str(tmp_path / "conv.pt")])  # whole images: any kind of model
    assert sampled.exit_code == 0, sampled.output
    assert np.load(tmp_path / "s.npy").shape == (1, 24, 32) and np.isfinite(np.load(tmp_path / "s.npy")).all()


def test_tabulated_band_denoising_matches_the_exact_model():
    from gmdm_cli.denoisers import psnr

    model = random_band_model(bands=4, num_components=31, seed=13)
    clean = torch.linspace(0.2, 0.8, 40, dtype=torch.float64)[:, None] * torch.ones(40, 36, dtype=torch.float64)
    noisy = clean + 0.1 * torch.randn(40, 36, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    with torch.no_grad():
        exact = band_denoise(model, noisy, 0.1, exact=True)
        tabulated = band_denoise(model, noisy, 0.1)
    assert (exact - tabulated).abs().max() < 1e-3
    assert abs(psnr(exact.numpy(), clean.numpy()) - psnr(tabulated.numpy(), clean.numpy())) < 0.01
