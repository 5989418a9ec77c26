"""Restoration beyond denoising (gmdm restore): the forward models, their adjoints and exact data steps, the
reduction to HQS denoising, quality against scikit-image on small pictures, and the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gmdm_cli
from gmdm_cli.cli import cli
from gmdm_cli.denoisers import psnr
from gmdm_cli.image_io import read_image, write_image
from gmdm_cli.restoration import (Blur, Downsample, Identity, Mask, Schedule, downsampling_matrix, gaussian_kernel,
                                  motion_kernel, restore_channel, upsampling_matrix)


def _operators(generator):
    kernel = torch.rand(3, 5, generator=generator, dtype=torch.float64)
    known = (torch.rand(7, 6, generator=generator) > 0.4).double()
    return {"blur": Blur(kernel / kernel.sum(), (4, 6), steps=200), "mask": Mask(known),
            "box": Downsample((3, 2), 2, "box", torch.float64, "cpu"),
            "bicubic": Downsample((3, 4), 2, "bicubic", torch.float64, "cpu"), "identity": Identity()}


def _domain(name: str, operator) -> tuple[int, int]:
    """The shape of the images ``operator`` applies to."""
    return operator.shape if hasattr(operator, "shape") else {"mask": (7, 6), "identity": (5, 4)}[name]


def _dense(operator, shape) -> np.ndarray:
    """The matrix of ``operator`` on images of ``shape``, column by column."""
    columns = []
    for k in range(shape[0] * shape[1]):
        unit = torch.zeros(shape[0] * shape[1], dtype=torch.float64)
        unit[k] = 1
        columns.append(operator.apply(unit.view(shape)).flatten().numpy())
    return np.stack(columns, 1)


@pytest.mark.parametrize("name", ["blur", "mask", "box", "bicubic", "identity"])
def test_adjoint_and_exact_data_step_against_a_dense_solve(name):
    generator = torch.Generator().manual_seed(3)
    operator = _operators(generator)[name]
    shape = _domain(name, operator)
    matrix = _dense(operator, shape)
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    y = torch.rand(operator.apply(x).shape, generator=generator, dtype=torch.float64)
    z = torch.rand(shape, generator=generator, dtype=torch.float64)
    # <A x, y> = <x, A^T y>
    assert abs(float((operator.apply(x) * y).sum() - (x * operator.adjoint(y)).sum())) < 1e-12
    for mu in (0.3, 1e-3):
        expected = np.linalg.solve(matrix.T @ matrix + mu * np.eye(matrix.shape[1]),
                                   matrix.T @ y.flatten().numpy() + mu * z.flatten().numpy())
        assert np.allclose(operator.solve(y, z, mu).flatten().numpy(), expected, atol=1e-9)
    if name in ("mask", "box", "bicubic"):  # mu = 0: A x = y exactly, and z kept off the range of A^T
        solved = operator.solve(y, z, 0.0)
        projector = np.linalg.pinv(matrix) @ matrix
        expected = np.linalg.pinv(matrix) @ y.flatten().numpy() + (np.eye(len(projector)) - projector) @ z.flatten().numpy()
        assert np.allclose(solved.flatten().numpy(), expected, atol=1e-9)


def test_blur_on_the_mirrored_domain_is_a_centred_convolution_with_mirrored_borders():
    from scipy.ndimage import convolve

    generator = np.random.default_rng(4)
    image = generator.random((12, 9))
    kernel = generator.random((5, 3))
    kernel /= kernel.sum()
    operator = Blur(torch.as_tensor(kernel), image.shape)
    blurred = operator.apply(operator.start(torch.as_tensor(image)))
    assert np.allclose(blurred.numpy(), convolve(image, kernel, mode="reflect"), atol=1e-12)


def test_downsamplers_and_kernels():
    box = downsampling_matrix(6, 2)
    assert np.allclose(box.numpy() @ np.arange(6.0), [0.5, 2.5, 4.5])
    for matrix in (downsampling_matrix(10, 3, "bicubic"), upsampling_matrix(5, 2)):
        assert np.allclose(matrix.sum(1).numpy(), 1)
    ramp = np.arange(8.0)  # cubic interpolation is exact on a line away from the ends
    assert np.allclose((upsampling_matrix(8, 2).numpy() @ ramp)[4:-4], ((np.arange(16) + 0.5) / 2 - 0.5)[4:-4])
    assert np.isclose(gaussian_kernel(1.6).sum(), 1) and gaussian_kernel(1.6).shape == (11, 11)
    line = motion_kernel(9, 0)
    assert np.isclose(line.sum(), 1) and np.count_nonzero(line.sum(1) > 1e-3) <= 2  # horizontal: one or two rows
    assert np.count_nonzero(motion_kernel(9, 90).sum(0) > 1e-3) <= 2  # vertical


def test_restore_with_the_identity_and_hqs_is_denoise_hqs(camera):
    from gmdm_cli.checkpoint import load_model
    from gmdm_cli.denoisers import HQS_DATA_WEIGHT, hqs, hqs_schedule

    model = load_model("7x7").double()
    sigma = 25 / 255
    noisy = torch.as_tensor(camera[:48, :40] + sigma * np.random.default_rng(5).standard_normal((48, 40)))
    relative = hqs_schedule()

    class Levels(Schedule):  # the levels of denoise's HQS, s_k = sigma sqrt(2 r_k)
        def levels(self, sigma):
            return [sigma * np.sqrt(2 * r) for r in relative]

    # denoise's HQS weighs y by its data weight against a prior that counts interior pixels b^2 times
    restored = restore_channel(model, Identity(), noisy, sigma, Levels(len(relative), 0, 0, HQS_DATA_WEIGHT / 49, "hqs"))
    assert torch.allclose(restored, hqs(model, noisy, sigma), atol=1e-12)


def test_restorations_beat_what_scikit_image_offers_on_a_picture(camera):
    from scipy.ndimage import convolve
    from skimage import restoration, transform

    rng = np.random.default_rng(6)
    kernel = gaussian_kernel(1.6)
    blurred = convolve(camera, kernel, mode="reflect") + 2 / 255 * rng.standard_normal(camera.shape)
    wiener = max(psnr(restoration.wiener(blurred, kernel, balance), camera) for balance in (0.003, 0.01, 0.03))
    assert psnr(gmdm_cli.restore(blurred, kernel=kernel, sigma=2 / 255), camera) > wiener + 1.0

    known = rng.random(camera.shape) > 0.5
    inpainted = gmdm_cli.restore(camera * known, mask=known)
    assert np.allclose(inpainted[known], camera[known], atol=1e-6)  # no noise: the known pixels are kept
    assert psnr(inpainted, camera) > psnr(restoration.inpaint_biharmonic(camera * known, ~known), camera)

    small = camera.reshape(48, 2, 48, 2).mean((1, 3))
    upscaled = gmdm_cli.restore(small, scale=2)
    assert upscaled.shape == camera.shape
    assert np.allclose(upscaled.reshape(48, 2, 48, 2).mean((1, 3)), small, atol=1e-5)  # consistent with the input
    assert psnr(upscaled, camera) > psnr(transform.resize(small, camera.shape, order=3), camera) + 0.2


def test_colour_alpha_and_bicubic_upscaling(camera):
    rgba = np.stack([camera, camera[::-1], camera[:, ::-1], np.full_like(camera, 0.25)], -1)[:32, :40]
    known = np.random.default_rng(7).random((32, 40)) > 0.3
    observed = rgba * known[..., None]
    restored = gmdm_cli.restore(observed, mask=known, iterations=4)
    assert restored.shape == (32, 40, 4) and np.all(restored[..., 3] == observed[..., 3])  # alpha as given
    upscaled = gmdm_cli.restore(rgba, scale=2, downsampler="bicubic", iterations=3)
    assert upscaled.shape == (64, 80, 4) and np.allclose(upscaled[..., 3], 0.25)


@pytest.mark.parametrize("problem, message", [
    ("nan", "NaN"), ("zeros", "not all zero"), ("negative", "non-negative"), ("huge", "larger than the image"),
    ("3d", "expected a gray"),
])
def test_bad_kernels_are_one_clean_error(tmp_path, monkeypatch, problem, message):
    monkeypatch.chdir(tmp_path)
    write_image("in.png", np.random.default_rng(8).random((20, 24)))
    kernel = {"nan": np.full((3, 3), np.nan), "zeros": np.zeros((3, 3)), "negative": -np.ones((3, 3)),
              "huge": np.ones((30, 30)), "3d": np.ones((3, 3, 5))}[problem]
    np.save("k.npy", kernel)
    result = CliRunner().invoke(cli, ["restore", "in.png", "--blur", "k.npy", "-o", "out.png"])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("problem, message", [
    ("size", "does not match the image"), ("missing", "every pixel as missing"), ("nan", "NaN"),
])
def test_bad_masks_are_one_clean_error(tmp_path, monkeypatch, problem, message):
    monkeypatch.chdir(tmp_path)
    write_image("in.png", np.random.default_rng(9).random((20, 24)))
    mask = {"size": np.ones((10, 24)), "missing": np.zeros((20, 24)), "nan": np.full((20, 24), np.nan)}[problem]
    np.save("m.npy", mask)
    result = CliRunner().invoke(cli, ["restore", "in.png", "--mask", "m.npy", "-o", "out.png"])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_restore_usage_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image("in.png", np.random.default_rng(10).random((20, 24)))
    runner = CliRunner()
    for arguments, message in ((["--scale", "2", "--gaussian-blur", "1"], "exactly one of"), ([], "exactly one of"),
                               (["--gaussian-blur", "1", "--downsampler", "bicubic"], "--downsampler goes with"),
                               (["--motion-blur", "5"], "LENGTH,ANGLE"), (["--scale", "9"], "2<=x<=8"),
                               (["--motion-blur", "0,10"], "length of 1 to 256")):
        result = runner.invoke(cli, ["restore", "in.png", "-o", "out.png", *arguments])
        assert result.exit_code == 2 and message in result.output, (arguments, result.output)
    result = runner.invoke(cli, ["restore", "in.png", "-o", "out.png", "--scale", "4", "--max-pixels", "5000"])
    assert result.exit_code == 1 and "larger than --max-pixels" in result.output


def test_cli_restores_16_bit_files_and_reports_json(tmp_path, monkeypatch, camera):
    from scipy.ndimage import convolve

    monkeypatch.chdir(tmp_path)
    kernel = motion_kernel(7, 30)
    np.save("k.npy", kernel)
    blurred = convolve(camera[:40, :48], kernel, mode="reflect")
    write_image("b.png", blurred, dtype=np.uint16)
    result = CliRunner().invoke(cli, ["restore", "b.png", "--blur", "k.npy", "--sigma", "1", "--iterations", "6",
                                      "--output-dir", "out", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["task"] == "blur" and record["iterations"] == 6 and record["output"] == "out/b.png"
    restored, info = read_image("out/b.png")
    assert info.dtype == np.uint16 and restored.shape == (40, 48)
    assert psnr(restored, camera[:40, :48]) > psnr(blurred, camera[:40, :48]) + 1


def test_restore_as_a_subprocess(tmp_path, camera):
    write_image(tmp_path / "small.png", camera[:32, :32].reshape(16, 2, 16, 2).mean((1, 3)))
    done = subprocess.run([sys.executable, "-m", "gmdm_cli", "restore", "small.png", "--scale", "2",
                           "--iterations", "3", "-o", "big.png"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_image(tmp_path / "big.png")[0].shape == (32, 32)


def test_inpainting_scratches_starts_smooth_and_beats_biharmonic(camera, monkeypatch):
    """Lines of missing pixels (scratches) start from the biharmonic fill and end above it; beyond the limit of
    the biharmonic solve the local Gaussian fill is the start, and the known pixels are still kept."""
    from skimage.restoration import inpaint_biharmonic

    from gmdm_cli import restoration

    known = np.ones(camera.shape, bool)
    known[10:14, :], known[50:53, :], known[:, 40:45] = False, False, False
    observed = camera * known
    restored = gmdm_cli.restore(observed, mask=known)
    assert psnr(restored, camera) > psnr(inpaint_biharmonic(observed, ~known), camera)
    monkeypatch.setattr(restoration, "BIHARMONIC_LIMIT", 0)
    local = gmdm_cli.restore(observed, mask=known, iterations=4)
    assert np.allclose(local[known], camera[known], atol=1e-6) and np.isfinite(local).all()


@pytest.mark.parametrize("factor, downsampler", [(3, "box"), (2, "bicubic")])
def test_upscaling_other_factors_and_downsamplers_in_float32(camera, factor, downsampler):
    """The shipped float32 model on a ×3 box and a ×2 bicubic input: the data step's eigenbasis is found in float64
    (in float32 the null space's eigenvalues came out ~1e-7, were divided by, and the result blew up to 14 dB)."""
    from skimage import transform

    from gmdm_cli.restoration import downsampling_matrix

    clean = camera[:96, :96]
    rows = downsampling_matrix(96, factor, downsampler).numpy()
    small = rows @ clean @ rows.T
    upscaled = gmdm_cli.restore(small, scale=factor, downsampler=downsampler)
    assert np.allclose(rows @ upscaled @ rows.T, small, atol=1e-4)  # consistent with the input
    assert psnr(upscaled, clean) > psnr(transform.resize(small, clean.shape, order=3), clean)


@pytest.mark.parametrize("task", ["blur", "scale"])
def test_the_prior_steps_precision_weighting_beats_the_plain_average(camera, task):
    """The default schedules weigh each patch's estimate by its posterior precision (power 8 for a blur and a
    downsampler, tuned on BSDS400): on the camera crop it beats EB-PA's plain average of the same schedule
    (BSD68: +0.18 dB for the blur, +0.16 dB for upscaling)."""
    from dataclasses import replace

    from scipy.ndimage import convolve

    from gmdm_cli.restoration import SCHEDULES, restore_array

    schedule = SCHEDULES[task]
    assert schedule.weighting > 0
    if task == "blur":
        kernel = gaussian_kernel(1.6)
        observed = convolve(camera, kernel, mode="reflect") + 2 / 255 * np.random.default_rng(7).standard_normal(
            camera.shape)
        forward = {"kernel": kernel, "sigma": 2 / 255}
    else:
        observed, forward = camera.reshape(48, 2, 48, 2).mean((1, 3)), {"scale": 2}
    model = gmdm_cli.load_model("7x7")
    weighted = psnr(restore_array(model, observed, schedule=schedule, **forward), camera)
    plain = psnr(restore_array(model, observed, schedule=replace(schedule, weighting=0.0), **forward), camera)
    assert weighted > plain + {"blur": 0.1, "scale": 0.02}[task], (weighted, plain)  # measured +0.32 / +0.06
