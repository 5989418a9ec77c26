"""Training: patch sampling, the DSM loss and its hand-written gradients, resuming."""

import numpy as np
import pytest
import torch

from conftest import DEVICES, random_model
from gmdm_cli.checkpoint import read_checkpoint
from gmdm_cli.model import _log_mixture
from gmdm_cli.projection import orthogonal_projection
from gmdm_cli.training import (
    PatchSampler,
    TrainingConfig,
    TrainingDataError,
    dsm_loss,
    find_images,
    run_training,
)


def _synthetic_images(count=3, seed=0):
    """Smooth random images with edges: piecewise-constant blobs, slightly blurred."""
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        image = np.zeros((40 + 4 * i, 48), dtype=np.float32)
        for _ in range(6):
            r, c = rng.integers(0, 40, 2)
            image[r:r + rng.integers(5, 20), c:c + rng.integers(5, 20)] = rng.uniform()
        images.append(gaussian(image, 1.0).astype(np.float32))
    return images


def _write_images(folder, images):
    import imageio.v3 as iio

    folder.mkdir(exist_ok=True)
    for i, image in enumerate(images):
        iio.imwrite(folder / f"img{i}.png", np.round(image * 255).astype(np.uint8))
    return folder


@pytest.mark.parametrize("device", DEVICES)
def test_sampled_patches_are_transformed_crops_of_the_images(device):
    images = _synthetic_images()
    sampler = PatchSampler(images, 4, device)
    patches = sampler.sample(200, torch.Generator(device).manual_seed(0)).cpu().numpy().reshape(-1, 4, 4)
    crops = {image[r:r + 4, c:c + 4].tobytes() for image in images
             for r in range(image.shape[0] - 3) for c in range(image.shape[1] - 3)}
    for patch in patches:
        variants = [np.rot90(patch, k) for k in range(4)]
        variants += [v.T for v in variants]
        assert any(np.ascontiguousarray(v).tobytes() in crops for v in variants)
    # all 8 orientations occur: a horizontal ramp appears both as rows and as columns
    ramp = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (30, 1))
    ramp_patches = PatchSampler([ramp], 3, device).sample(400, torch.Generator(device).manual_seed(1))
    ramp_patches = ramp_patches.cpu().numpy().reshape(-1, 3, 3)
    row_varying = np.abs(np.diff(ramp_patches, axis=2)).mean() > 0.01
    column_varying = np.abs(np.diff(ramp_patches, axis=1)).mean() > 0.01
    assert row_varying and column_varying


def _autograd_dsm_loss(model, clean, sigma, noise, loss):
    """Eq. (4) with the score written out via autograd of the log density (no hand-written parts)."""
    noisy = (clean + sigma[:, None] * noise).requires_grad_()
    t = sigma**2 / 2
    z = noisy @ model.filters.T
    variances = model.expert_variances(t)
    log_weights = torch.log_softmax(model.logits, 1)
    log_density = _log_mixture(z.T, variances.T, log_weights, model.means).sum()
    (score,) = torch.autograd.grad(log_density, noisy, create_graph=True)
    residual = noisy + sigma[:, None] ** 2 * score - clean
    if loss == "noise":  # the noise-prediction form: n + sigma * score, written without dividing by sigma
        return (noise + sigma[:, None] * score).pow(2).mean()
    return residual.pow(2).mean() if loss == "squared" else residual.norm(dim=1).mean()


@pytest.mark.parametrize("loss", ["norm", "squared", "noise"])
def test_dsm_gradients_match_autograd(loss):
    model = random_model(patch_size=3, num_components=15, seed=20)
    generator = torch.Generator().manual_seed(21)
    clean = torch.rand(64, 9, generator=generator, dtype=torch.float64)
    sigma = 0.4 * torch.rand(64, generator=generator, dtype=torch.float64)
    noise = torch.randn(64, 9, generator=generator, dtype=torch.float64)
    fast = dsm_loss(model, clean, sigma, noise, loss)
    fast_grads = torch.autograd.grad(fast, [model.filters, model.logits])
    slow = _autograd_dsm_loss(model, clean, sigma, noise, loss)
    slow_grads = torch.autograd.grad(slow, [model.filters, model.logits])
    assert fast.item() == pytest.approx(slow.item(), rel=1e-12)
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_noise_loss_is_finite_at_sigma_zero_where_its_term_vanishes():
    """At sigma = 0 the noisy patch is the clean one and Tweedie returns it: the term is 0, not 0/0."""
    model = random_model(patch_size=3, num_components=15, seed=22)
    generator = torch.Generator().manual_seed(23)
    clean = torch.rand(8, 9, generator=generator, dtype=torch.float64)
    noise = torch.randn(8, 9, generator=generator, dtype=torch.float64)
    sigma = torch.full((8,), 0.1, dtype=torch.float64)
    sigma[:4] = 0
    loss = dsm_loss(model, clean, sigma, noise, "noise")
    gradient, = torch.autograd.grad(loss, model.filters)
    assert torch.isfinite(gradient).all()
    assert loss.item() == pytest.approx(dsm_loss(model, clean[4:], sigma[4:], noise[4:], "noise").item() / 2,
                                        rel=1e-12)


def _interrupted_run(monkeypatch, stop_step, *args, **kwargs):
    """``run_training(*args, **kwargs)`` stopped by a KeyboardInterrupt as it reaches step ``stop_step``."""
    from gmdm_cli.training import Trainer

    original_step = Trainer.train_step

    def interrupt(self):
        if self.step == stop_step:
            raise KeyboardInterrupt
        return original_step(self)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_training(*args, progress=False, **kwargs)


@pytest.mark.parametrize("optimizer", ["adam", "ipalm"])
@pytest.mark.parametrize("device", DEVICES)
def test_training_lowers_the_loss_and_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch, device, optimizer):
    folder = _write_images(tmp_path / "images", _synthetic_images())
    config = TrainingConfig(patch_size=3, steps=60, batch_size=256, learning_rate=1e-2, final_learning_rate=1e-4,
                            optimizer=optimizer)
    straight = run_training(config, [folder], tmp_path / "straight.pt", device, progress=False, checkpoint_every=20)
    assert straight["final_loss"] < 0.9 * _initial_loss(config, folder)

    _interrupted_run(monkeypatch, 30, config, [folder], tmp_path / "resumed.pt", device, checkpoint_every=20)
    assert read_checkpoint(tmp_path / "resumed.pt")["training"]["step"] == 20
    resumed = run_training(config, [folder], tmp_path / "resumed.pt", device, resume=True, progress=False)
    assert resumed["steps"] == 60
    a, b = read_checkpoint(tmp_path / "straight.pt"), read_checkpoint(tmp_path / "resumed.pt")
    assert torch.allclose(a["filters"], b["filters"], atol=1e-6)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-6)
    gram = a["filters"].double() @ a["filters"].double().T
    assert (gram - torch.diag(torch.diag(gram))).abs().max() < 1e-5


def test_ipalm_without_inertia_never_raises_the_loss_of_a_fixed_batch():
    """With inertia 0 an iPALM step is a projected gradient step whose size backtracking accepts only under the
    quadratic upper bound; since the projection is the nearest point of the constraint set, the loss of a fixed
    batch cannot rise (up to rounding), and the filters stay zero-mean and orthogonal."""
    from gmdm_cli.training import IPALM

    model = random_model(patch_size=3, num_components=15)
    generator = torch.Generator().manual_seed(3)
    clean = torch.rand(512, 9, generator=generator, dtype=torch.float64)
    sigma = 0.4 * torch.rand(512, generator=generator, dtype=torch.float64)
    noise = torch.randn(512, 9, generator=generator, dtype=torch.float64)
    optimizer = IPALM([model.filters, model.logits], [lambda k: orthogonal_projection(k, 3), lambda w: w], inertia=0.0)
    losses = [optimizer.step(lambda: dsm_loss(model, clean, sigma, noise)) for _ in range(25)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.8 * losses[0]
    filters = model.filters.detach()
    gram = filters @ filters.T
    assert filters.sum(1).abs().max() < 1e-10
    assert (gram - torch.diag(torch.diag(gram))).abs().max() < 1e-6


def test_train_with_ipalm_from_the_cli_records_it(tmp_path):
    from click.testing import CliRunner

    from gmdm_cli.cli import cli

    folder = _write_images(tmp_path / "images", _synthetic_images())
    result = CliRunner().invoke(cli, ["train", str(folder), "-o", str(tmp_path / "run.pt"), "--patch-size", "3",
                                      "--steps", "5", "--batch-size", "128", "--optimizer", "ipalm", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(tmp_path / "run.pt")
    assert checkpoint["metadata"]["optimizer"].startswith("iPALM")
    assert checkpoint["training"]["config"]["optimizer"] == "ipalm"
    assert len(checkpoint["training"]["optimizer"]["lipschitz"]) == 2


def test_a_run_taken_up_on_another_device_type_draws_a_fresh_deterministic_stream(tmp_path):
    """A generator's state loads only on its own device type: a run whose state is from another one (here a
    made-up CUDA state) continues from its step and optimiser on a stream seeded from seed and step, alike
    through the library and the CLI, which says so."""
    from click.testing import CliRunner

    from gmdm_cli.cli import cli

    folder = _write_images(tmp_path / "images", _synthetic_images())
    config = TrainingConfig(patch_size=3, steps=20, batch_size=128)
    run_training(config, [folder], tmp_path / "run.pt", "cpu", progress=False)
    payload = torch.load(tmp_path / "run.pt", weights_only=True)
    assert payload["training"]["generator_device"] == "cpu"
    payload["training"].update(generator_device="cuda", generator=torch.zeros(16, dtype=torch.uint8))
    for name in ("library.pt", "cli.pt", "unmarked.pt"):
        torch.save(payload, tmp_path / name)
    config.steps = 30
    summary = run_training(config, [folder], tmp_path / "library.pt", "cpu", resume=True, progress=False)
    assert summary["steps"] == 30 and summary["exact_resume"] is False
    result = CliRunner().invoke(cli, ["train", str(folder), "-o", str(tmp_path / "cli.pt"), "--steps", "30",
                                      "--device", "cpu", "--resume"])
    assert result.exit_code == 0, result.output
    assert "note: the run's random state belongs to another device type; from step 20" in result.output
    library, by_cli = read_checkpoint(tmp_path / "library.pt"), read_checkpoint(tmp_path / "cli.pt")
    assert library["training"]["step"] == 30 and library["training"]["generator_device"] == "cpu"
    assert torch.equal(library["filters"], by_cli["filters"]) and torch.equal(library["logits"], by_cli["logits"])
    assert not torch.equal(library["filters"], payload["filters"])
    del payload["training"]["generator_device"]  # older checkpoints: told apart by the state's size
    torch.save(payload, tmp_path / "unmarked.pt")
    run_training(config, [folder], tmp_path / "unmarked.pt", "cpu", resume=True, progress=False)
    assert torch.equal(read_checkpoint(tmp_path / "unmarked.pt")["filters"], library["filters"])


@pytest.mark.parametrize("device", DEVICES)
def test_resume_without_device_continues_exactly_where_the_run_was(tmp_path, monkeypatch, device):
    """``gmdm train --resume`` with the default ``--device auto`` continues on the device type the run's random
    state belongs to (on a machine with a GPU, a CPU run stays on the CPU): the uninterrupted run's result."""
    from click.testing import CliRunner

    from gmdm_cli.cli import cli

    folder = _write_images(tmp_path / "images", _synthetic_images())
    config = TrainingConfig(patch_size=3, steps=30, batch_size=128, seed=2)
    run_training(config, [folder], tmp_path / "straight.pt", device, progress=False)
    _interrupted_run(monkeypatch, 25, config, [folder], tmp_path / "resumed.pt", device, checkpoint_every=10)
    result = CliRunner().invoke(cli, ["train", str(folder), "-o", str(tmp_path / "resumed.pt"), "--steps", "30",
                                      "--resume"])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output and f"on {device}" in result.output
    a, b = read_checkpoint(tmp_path / "straight.pt"), read_checkpoint(tmp_path / "resumed.pt")
    assert torch.allclose(a["filters"], b["filters"], atol=1e-6)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-6)


def test_fine_tuning_starts_from_the_given_model_and_records_it(tmp_path):
    folder = _write_images(tmp_path / "images", _synthetic_images())
    base_config = TrainingConfig(patch_size=3, steps=40, batch_size=256, loss="squared")
    run_training(base_config, [folder], tmp_path / "base.pt", progress=False)
    base = read_checkpoint(tmp_path / "base.pt")
    tuned_config = TrainingConfig(patch_size=3, steps=5, batch_size=256, learning_rate=1e-4, seed=1)
    run_training(tuned_config, [folder], tmp_path / "tuned.pt", progress=False, initial=base, initial_name="base.pt")
    tuned = read_checkpoint(tmp_path / "tuned.pt")
    assert tuned["metadata"]["initialised_from"] == "base.pt (40 steps)"
    assert tuned["metadata"]["loss"] == "Eq. 4, norm" and base["metadata"]["loss"] == "Eq. 4, squared"
    assert tuned["training"]["step"] == 5  # a fresh schedule, not the base run's
    # five tiny steps move the filters far less than the distance to the random start they came from
    base_filters = base["filters"]
    assert (tuned["filters"] - base_filters).abs().max() < 1e-2
    run_training(TrainingConfig(patch_size=3, steps=1, batch_size=64, seed=2), [folder], tmp_path / "random.pt",
                 progress=False)
    assert (read_checkpoint(tmp_path / "random.pt")["filters"] - base_filters).abs().max() > 0.1
    from gmdm_cli.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="3-pixel patches, not 5"):
        run_training(TrainingConfig(patch_size=5, steps=1), [folder], tmp_path / "x.pt", progress=False,
                     initial=base, initial_name="base.pt")


def _initial_loss(config, folder):
    from gmdm_cli.model import PatchGMDM
    from gmdm_cli.training import load_training_images

    sampler = PatchSampler(load_training_images(find_images([folder]), 3), 3)
    model = PatchGMDM.initial(3, generator=torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        model.filters.copy_(orthogonal_projection(model.filters))
    generator = torch.Generator().manual_seed(99)
    clean = sampler.sample(4096, generator)
    sigma = config.sigma_max * torch.rand(4096, generator=generator)
    with torch.no_grad():
        return dsm_loss(model, clean, sigma, torch.randn(clean.shape, generator=generator)).item()


def test_empty_and_unreadable_training_folders_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingDataError, match="no images"):
        find_images([empty])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(TrainingDataError, match="a.png"):
        run_training(TrainingConfig(patch_size=3, steps=1), [broken], tmp_path / "m.pt", progress=False)


def test_two_processes_under_torchrun_follow_the_one_process_run(tmp_path):
    """DistributedDataParallel over 2 gloo processes: each trains on half of the same global batch, the
    gradients are averaged, so the model equals the one-process model up to float summation order."""
    import os
    import subprocess
    import sys

    folder = _write_images(tmp_path / "images", _synthetic_images())
    arguments = ["train", str(folder), "--patch-size", "3", "--steps", "30", "--batch-size", "512",
                 "--device", "cpu", "--checkpoint-every", "10"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "gmdm_cli", *arguments, "-o", str(tmp_path / "one.pt")],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "gmdm_cli", *arguments, "-o", str(tmp_path / "two.pt")],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert double.returncode == 0, double.stderr
    one, two = read_checkpoint(tmp_path / "one.pt"), read_checkpoint(tmp_path / "two.pt")
    assert two["metadata"]["device"] == "cpu x 2 processes" and two["metadata"]["steps"] == 30
    assert torch.allclose(one["filters"], two["filters"], atol=1e-4)
    assert torch.allclose(one["logits"], two["logits"], atol=1e-4)
    assert abs(one["metadata"]["final_loss"] - two["metadata"]["final_loss"]) < 1e-5
    # and the training moved the model: the agreement is not that of two untrained models
    assert (one["filters"] - PatchGMDM_initial_filters()).abs().max() > 1e-2


def PatchGMDM_initial_filters():
    from gmdm_cli.model import PatchGMDM
    from gmdm_cli.projection import orthogonal_projection

    model = PatchGMDM.initial(3, generator=torch.Generator().manual_seed(0))
    return orthogonal_projection(model.filters.detach(), 3)
