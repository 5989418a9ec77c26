"""The gmdm command line, with click's CliRunner and as a real subprocess."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from gmdm_cli.cli import cli


def _psnr(estimate, clean):
    return 10 * np.log10(1 / np.mean((np.clip(estimate, 0, 1) - clean) ** 2))


@pytest.fixture
def noisy_png(tmp_path, camera):
    import imageio.v3 as iio

    noisy = camera + 25 / 255 * np.random.default_rng(0).standard_normal(camera.shape)
    path = tmp_path / "noisy.png"
    iio.imwrite(path, np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8))
    return path


def test_denoise_subprocess_improves_psnr(tmp_path, camera, noisy_png):
    """The installed entry point, run for real, on a noisy crop of skimage's camera."""
    import imageio.v3 as iio

    output = tmp_path / "out.png"
    result = subprocess.run(["gmdm", "denoise", str(noisy_png), "-o", str(output), "--sigma", "25",
                             "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    noisy = iio.imread(noisy_png) / 255
    denoised = iio.imread(output)
    assert denoised.dtype == np.uint8 and denoised.shape == camera.shape
    assert _psnr(denoised / 255, camera) > _psnr(noisy, camera) + 4


def test_denoise_writes_float_outputs_unclipped(tmp_path, camera):
    noisy = camera + 0.1 * np.random.default_rng(1).standard_normal(camera.shape)
    np.save(tmp_path / "noisy.npy", noisy)
    runner = CliRunner()
    result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "--output-dir", str(tmp_path / "out"),
                                 "--sigma", "25.5"])  # the missing folder is created
    assert result.exit_code == 0, result.output
    denoised = np.load(tmp_path / "out" / "noisy.npy")
    assert denoised.dtype == np.float32
    assert _psnr(denoised, camera) > _psnr(noisy, camera) + 4
    assert denoised.min() < 0 or denoised.max() > 1  # no clipping of float outputs


def test_denoise_several_inputs_keep_names_and_bit_depth(tmp_path, camera):
    import imageio.v3 as iio

    folder = tmp_path / "in"
    folder.mkdir()
    iio.imwrite(folder / "a.png", np.round(camera * 65535).astype(np.uint16))
    iio.imwrite(folder / "b.tif", camera.astype(np.float32))
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(cli, ["denoise", str(folder / "a.png"), str(folder / "b.tif"),
                                      "--output-dir", str(tmp_path / "out"), "--sigma", "10"])
    assert result.exit_code == 0, result.output
    assert iio.imread(tmp_path / "out" / "a.png").dtype == np.uint16
    assert iio.imread(tmp_path / "out" / "b.tif").dtype == np.float32


def test_train_then_denoise_with_the_trained_checkpoint(tmp_path):
    from test_training import _synthetic_images, _write_images

    folder = _write_images(tmp_path / "images", _synthetic_images())
    checkpoint = tmp_path / "tiny.pt"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(folder), "-o", str(checkpoint), "--patch-size", "3", "--steps", "20",
                                 "--batch-size", "128", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "20 steps" in result.output
    result = runner.invoke(cli, ["train", str(folder), "-o", str(checkpoint), "--steps", "30", "--resume"])
    assert result.exit_code == 0, result.output
    assert "30 steps" in result.output
    tuned = tmp_path / "tuned.pt"  # fine-tuning: the patch size comes from the --init model
    result = runner.invoke(cli, ["train", str(folder), "-o", str(tuned), "--init", str(checkpoint), "--steps", "3",
                                 "--loss", "squared"])
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.output
    result = runner.invoke(cli, ["train", str(folder), "-o", str(tuned), "--init", str(checkpoint), "--resume"])
    assert result.exit_code == 2 and "give one of them" in result.output
    result = runner.invoke(cli, ["denoise", str(folder / "img0.png"), "-o", str(tmp_path / "d.png"),
                                 "--sigma", "20", "--model", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d.png").exists()


@pytest.mark.parametrize("arguments, message", [
    (["denoise", "missing.png", "-o", "x.png", "--sigma", "25"], "no such file"),
    (["denoise", "notimage.png", "-o", "x.png", "--sigma", "25"], "notimage.png: not an image"),
    (["denoise", "noisy.png", "-o", "noisy.png", "--sigma", "25"], "refusing to overwrite an input"),
    (["denoise", "noisy.png", "-o", "exists.png", "--sigma", "25"], "exists"),
    (["denoise", "noisy.png", "-o", "x.png", "--sigma", "25", "--model", "notimage.png"], "not a gmdm checkpoint"),
    (["denoise", "noisy.png", "-o", "x.png", "--sigma", "25", "--model", "nomodel.pt"], "no such checkpoint"),
    (["denoise", "noisy.png", "-o", "x.png", "--sigma-map", "notimage.png"], "notimage.png: not an image"),
    (["denoise", "tiny.png", "-o", "x.png", "--sigma", "25"], "smaller than"),
    (["train", "emptydir", "-o", "m.pt", "--steps", "1"], "no images"),
    (["train", "emptydir", "-o", "exists.png", "--steps", "1"], "exists"),
])
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, noisy_png, arguments, message, monkeypatch):
    import imageio.v3 as iio

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notimage.png").write_text("this is not an image")
    (tmp_path / "exists.png").write_bytes(b"keep me")
    (tmp_path / "emptydir").mkdir()
    iio.imwrite(tmp_path / "tiny.png", np.zeros((3, 3), dtype=np.uint8))
    before = noisy_png.read_bytes()
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.strip().startswith("Error:") and len(result.output.strip().splitlines()) == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "m.pt").exists()
    assert (tmp_path / "exists.png").read_bytes() == b"keep me" and noisy_png.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("arguments", [
    ["denoise", "a.png", "--sigma", "25"],
    ["denoise", "a.png", "b.png", "-o", "x.png", "--sigma", "25"],
    ["denoise", "a.png", "-o", "x.png", "--sigma", "-3"],
    ["denoise", "a.png", "-o", "x.png"],
    ["denoise", "a.png", "-o", "x.png", "--sigma", "25", "--method", "bm3d"],
])
def test_usage_errors_exit_with_2(arguments):
    assert CliRunner().invoke(cli, arguments).exit_code == 2


def test_help_does_not_import_torch():
    code = "import sys; from gmdm_cli.cli import cli; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_sample_writes_patch_grids_and_arrays(tmp_path):
    import imageio.v3 as iio

    runner = CliRunner()
    result = runner.invoke(cli, ["sample", "-o", str(tmp_path / "p.npy"), "--sigma", "0,25", "-n", "10"])
    assert result.exit_code == 0, result.output
    patches = np.load(tmp_path / "p.npy")
    assert patches.shape == (2, 10, 7, 7)
    assert patches[1].std() > patches[0].std()  # noisier at sigma 25
    result = runner.invoke(cli, ["sample", "-o", str(tmp_path / "p.png"), "-n", "16"])
    assert result.exit_code == 0, result.output
    assert iio.imread(tmp_path / "p.png").ndim == 2
    result = runner.invoke(cli, ["sample", "-o", str(tmp_path / "i.npy"), "--size", "20x24", "-n", "1",
                                 "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "i.npy").shape == (1, 20, 24)
    assert runner.invoke(cli, ["sample", "-o", str(tmp_path / "p.png")]).exit_code == 1  # exists
    assert runner.invoke(cli, ["sample", "-o", str(tmp_path / "x.png"), "--size", "2x2"]).exit_code == 2
    assert runner.invoke(cli, ["sample", "-o", str(tmp_path / "x.gif")]).exit_code == 2


def test_inspect_draws_the_figure_and_prints_nmse(tmp_path):
    pytest.importorskip("matplotlib")
    from test_training import _synthetic_images, _write_images

    folder = _write_images(tmp_path / "images", _synthetic_images())
    result = CliRunner().invoke(cli, ["inspect", "7x7", "--images", str(folder), "--patches", "2000",
                                      "--max-filters", "12", "-o", str(tmp_path / "fig.png")])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 4 and all(len(row) == 4 and float(row[1]) >= 0 for row in rows)
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_blind_denoising_and_known_noise_maps(tmp_path, camera):
    truth = np.where(np.arange(camera.shape[1])[None, :] < 48, 10.0, 30.0) * np.ones_like(camera)  # 0-255
    noisy = camera + truth / 255 * np.random.default_rng(6).standard_normal(camera.shape)
    np.save(tmp_path / "noisy.npy", noisy)
    np.save(tmp_path / "truth.npy", truth)
    runner = CliRunner()
    result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "blind.npy"),
                                 "--blind", "--noise-map", str(tmp_path / "map.tif")])
    assert result.exit_code == 0, result.output
    import imageio.v3 as iio

    estimated = iio.imread(tmp_path / "map.tif")
    assert estimated.dtype == np.float32 and estimated.shape == camera.shape
    assert estimated[:, :30].mean() < estimated[:, -30:].mean()
    result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "known.npy"),
                                 "--sigma-map", str(tmp_path / "truth.npy")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "blind-hqs.npy"),
                                 "--blind", "--method", "hqs"])
    assert result.exit_code == 0, result.output
    for name in ("blind.npy", "known.npy", "blind-hqs.npy"):
        assert _psnr(np.load(tmp_path / name), camera) > _psnr(noisy, camera) + 4
    assert _psnr(np.load(tmp_path / "blind-hqs.npy"), camera) > _psnr(np.load(tmp_path / "blind.npy"), camera)
    bad = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "x.npy"),
                              "--sigma", "10", "--blind"])
    assert bad.exit_code == 2
    # colour: the same noise in every channel; blind denoising and estimation work on it too
    rgb = np.stack([camera, camera[::-1], camera.T], -1)
    noisy_rgb = rgb + truth[..., None] / 255 * np.random.default_rng(7).standard_normal(rgb.shape)
    np.save(tmp_path / "rgb.npy", noisy_rgb)
    result = runner.invoke(cli, ["denoise", str(tmp_path / "rgb.npy"), "-o", str(tmp_path / "rgb-blind.npy"), "--blind"])
    assert result.exit_code == 0, result.output
    denoised = np.load(tmp_path / "rgb-blind.npy")
    assert denoised.shape == rgb.shape and _psnr(denoised, rgb) > _psnr(noisy_rgb, rgb) + 4
    result = runner.invoke(cli, ["estimate-noise", str(tmp_path / "rgb.npy"), "--json"])
    assert result.exit_code == 0 and 10 < __import__("json").loads(result.stdout)["sigma"] < 30


def test_pipeline_from_stdin_to_stdout_in_a_real_shell(tmp_path, camera, noisy_png):
    """`cat a.png | gmdm denoise - -o - --sigma 25 > b.png`, and `--format npy` for float output."""
    import imageio.v3 as iio

    command = f"cat '{noisy_png}' | gmdm denoise - -o - --sigma 25 --device cpu > '{tmp_path / 'b.png'}'"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    denoised = iio.imread(tmp_path / "b.png")
    assert denoised.dtype == np.uint8 and _psnr(denoised / 255, camera) > _psnr(iio.imread(noisy_png) / 255, camera) + 4
    result = subprocess.run(["gmdm", "denoise", "-", "-o", "-", "--sigma", "25", "--format", "npy", "--quiet"],
                            input=noisy_png.read_bytes(), capture_output=True, timeout=300)
    assert result.returncode == 0 and result.stderr == b""
    import io

    assert np.allclose(np.load(io.BytesIO(result.stdout)), denoised / 255, atol=0.5 / 255 + 1e-6)


def test_json_records_and_quiet(tmp_path, noisy_png):
    import json

    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(cli, ["denoise", str(noisy_png), "--output-dir", str(tmp_path / "out"), "--sigma",
                                      "25", "--format", "tif", "--json", "--quiet"])
    assert result.exit_code == 0 and result.stderr == ""
    record = json.loads(result.stdout)
    assert record["status"] == "ok" and record["output"] == str(tmp_path / "out" / "noisy.tif")
    assert record["sigma"] == 25 and (tmp_path / "out" / "noisy.tif").is_file()
    result = CliRunner().invoke(cli, ["estimate-noise", str(noisy_png), "missing.png", "--json"])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["status"] == "ok" and 15 < records[0]["sigma"] < 35
    assert records[1] == {"path": "missing.png", "status": "error", "error": "missing.png: no such file"}


def test_hqs_iterations_option(tmp_path, camera):
    np.save(tmp_path / "noisy.npy", camera[:64, :64] + 25 / 255 * np.random.default_rng(4).standard_normal((64, 64)))
    runner = CliRunner()
    outputs = {}
    for iterations in ("2", "6"):
        target = tmp_path / f"hqs{iterations}.npy"
        result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(target), "--sigma", "25",
                                     "--method", "hqs", "--iterations", iterations])
        assert result.exit_code == 0, result.output
        outputs[iterations] = np.load(target)
    from gmdm_cli.denoisers import hqs_schedule

    assert len(hqs_schedule(2)) == 2 and np.abs(outputs["2"] - outputs["6"]).max() > 1e-3
    result = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "e.npy"),
                                 "--sigma", "25", "--iterations", "3"])
    assert result.exit_code == 2 and "--iterations goes with --method hqs" in result.output
    assert not (tmp_path / "e.npy").exists()


def test_a_single_input_shows_it_is_working_on_a_terminal(tmp_path, noisy_png):
    """On a terminal (a pseudo-terminal here) one input gets a spinner while it is worked on; the result is the
    same as without one, and piped runs show none."""
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "gmdm_cli", "denoise", noisy_png.name, "-o", "tty.png",
                               "--blind"], stderr=follower, stdout=subprocess.PIPE, cwd=tmp_path, timeout=300)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed once everything is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0 and b"noisy.png: working" in shown
    piped = subprocess.run([sys.executable, "-m", "gmdm_cli", "denoise", noisy_png.name, "-o", "pipe.png", "--blind"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert piped.returncode == 0 and "working" not in piped.stderr
    assert (tmp_path / "tty.png").read_bytes() == (tmp_path / "pipe.png").read_bytes()
