"""CPU and CUDA compute the same thing (float32 rounding apart); skipped where no CUDA device exists."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmdm_cli.checkpoint import load_model
from gmdm_cli.cli import cli
from gmdm_cli.denoisers import denoise_array
from gmdm_cli.noise import estimate_noise
from gmdm_cli.training import dsm_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def noisy():
    from skimage import data

    clean = data.camera()[100:260, 150:350].astype(np.float64) / 255
    return clean + 0.1 * np.random.default_rng(70).standard_normal(clean.shape)


@pytest.mark.parametrize("name", ["7x7", "15x15", "conv"])
@pytest.mark.parametrize("method", ["ebpa", "hqs"])
def test_denoising_agrees_within_1e4(noisy, name, method):
    cpu, cuda = load_model(name), load_model(name, device="cuda")
    for sigma in (0.1, np.full(noisy.shape, 0.1) + 0.05 * (np.arange(noisy.shape[1]) > 100)):
        expected = denoise_array(cpu, noisy, sigma, method)
        got = denoise_array(cuda, noisy, sigma, method)
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("name", ["7x7", "conv"])
def test_noise_estimates_agree(noisy, name):
    cpu, cuda = load_model(name), load_model(name, device="cuda")
    sigma_cpu, map_cpu = estimate_noise(cpu, noisy, noise_map=True)
    sigma_cuda, map_cuda = estimate_noise(cuda, noisy, noise_map=True)
    assert abs(sigma_cpu - sigma_cuda) <= 1e-4
    assert np.abs(map_cpu - map_cuda).max() <= 1e-3  # argmins over a grid of levels, refined by a parabola


@pytest.mark.parametrize("name", ["7x7", "15x15"])
def test_training_loss_and_gradients_agree(name):
    generator = torch.Generator().manual_seed(71)
    cpu = load_model(name)
    clean = 0.2 * torch.rand(512, cpu.patch_size**2, generator=generator)
    sigma = 0.4 * torch.rand(512, generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    results = []
    for device in ("cpu", "cuda"):
        model = load_model(name, device=device)
        loss = dsm_loss(model, clean.to(device), sigma.to(device), noise.to(device))
        loss.backward()
        results.append([loss.detach().cpu(), model.filters.grad.cpu(), model.logits.grad.cpu()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max())


def test_denoise_command_on_cuda_equals_cpu(tmp_path, noisy):
    np.save(tmp_path / "noisy.npy", noisy)
    outputs = {}
    for device in ("cpu", "cuda"):
        (tmp_path / device).mkdir()
        result = CliRunner().invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "--output-dir", str(tmp_path / device),
                                          "--sigma", "25.5", "--device", device])
        assert result.exit_code == 0, result.output
        outputs[device] = np.load(tmp_path / device / "noisy.npy")
    assert np.abs(outputs["cuda"] - outputs["cpu"]).max() <= 1e-4


@pytest.mark.parametrize("task", ["blur", "mask", "scale"])
def test_restoration_agrees(noisy, task):
    from gmdm_cli.restoration import gaussian_kernel, restore_array

    cpu, cuda = load_model("7x7"), load_model("7x7", device="cuda")
    image = np.clip(noisy, 0, 1)
    forward = {"blur": {"kernel": gaussian_kernel(1.6), "sigma": 0.1},
               "mask": {"mask": np.random.default_rng(71).random(image.shape) > 0.5},
               "scale": {"scale": 2}}[task]
    assert np.abs(restore_array(cuda, image, **forward) - restore_array(cpu, image, **forward)).max() <= 1e-3


def test_posterior_samples_agree(noisy):
    from gmdm_cli.sampling import posterior_samples_array

    cpu, cuda = load_model("7x7"), load_model("7x7", device="cuda")
    # the same seeds draw different numbers on the two devices: compare what does not depend on them
    drawn = [posterior_samples_array(model, noisy, 0.1, 4, seed=1) for model in (cpu, cuda)]
    assert abs(drawn[0].mean() - drawn[1].mean()) < 1e-3
    assert abs(drawn[0].std(0).mean() - drawn[1].std(0).mean()) < 0.1 * drawn[0].std(0).mean()


def test_sure_level_agrees(noisy):
    """SURE's risks on the GPU match the CPU's: the same level within 1 % (a near tie of two ladder levels may refine
    the least from the other side)."""
    from gmdm_cli.sure import sure_level

    levels = [sure_level(load_model("7x7", device=device), torch.as_tensor(noisy, dtype=torch.float32), 0.1)
              for device in ("cpu", "cuda")]
    assert abs(levels[1] - levels[0]) <= 1e-2 * levels[0]

