"""A corpus of bad inputs: each gets a clear error, a non-zero exit code, no traceback, no partial output,
and leaves every existing file as it was."""

import hashlib
import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gmdm_cli.cli import cli
from gmdm_cli.image_io import ImageError, atomic_output, read_image, write_image

GOOD = ["good.png", "-o", "out.png", "--sigma", "25"]


def _png(array) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", np.asarray(array), extension=".png")


def _tiff(array, **options) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def _animated_png() -> bytes:
    from PIL import Image

    frames = [Image.fromarray(np.full((16, 16), value, np.uint8)) for value in (0, 128, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _builtin_model() -> bytes:
    from gmdm_cli.checkpoint import resolve_model_path

    return resolve_model_path("7x7").read_bytes()


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _files(camera):
    """Everything the cases refer to, written into the working folder."""
    good = np.round(camera[:64, :64] * 255).astype(np.uint8)
    png = _png(good)
    jpeg = __import__("imageio.v3", fromlist=["imwrite"]).imwrite("<bytes>", good, extension=".jpg")
    return {
        "good.png": png,
        "other/good.png": png,
        "exists.png": b"keep me",
        "empty.png": b"",
        "text.png": b"this is not an image",
        "truncated.png": png[: len(png) // 2],
        "corrupt.png": png[:60] + bytes(len(png) - 60),
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "garbage.tif": b"II*\x00" + os.urandom(200),
        "onepixel.png": _png(np.zeros((1, 1), np.uint8)),
        "small.png": _png(np.zeros((5, 40), np.uint8)),
        "zero.npy": _npy(np.zeros((0, 0))),
        "nan.npy": _npy(np.full((16, 16), np.nan)),
        "inf.npy": _npy(np.where(np.eye(16) > 0, np.inf, 0.5)),
        "neginf.npy": _npy(np.full((16, 16), -np.inf)),
        "flat.npy": _npy(np.zeros(64)),
        "fourd.npy": _npy(np.zeros((2, 16, 16, 3))),
        "fivechannels.npy": _npy(np.zeros((16, 16, 5))),
        "huge.npy": _npy(np.full((16, 16), 1e300)),
        "bigger.npy": _npy(np.full((16, 16), 2e6)),
        "map_negative.npy": _npy(np.full((64, 64), -10.0)),
        "map_zero.npy": _npy(np.zeros((64, 64))),
        "map_big.npy": _npy(np.full((64, 64), 300.0)),
        "map.npy": _npy(np.full((64, 64), 20.0)),
        "map_ramp.npy": _npy(np.tile(np.linspace(5, 40, 64), (64, 1))),
        "weights.png": _builtin_model(),
        "pages.tif": _tiff(np.zeros((5, 32, 32), np.uint8)),
        "animated.png": _animated_png(),
        "model.json": b'{"format": "gmdm-patch"}',
        "la.png": _png(np.stack([good, np.full_like(good, 200)], -1)),
        "bad\nname.png": b"not an image",
        "complex.npy": _npy(np.zeros((16, 16), np.complex64)),
        "objects.npy": _npy(np.array([{"a": 1}] * 4, dtype=object)),
        "strings.npy": _npy(np.array([["a"] * 16] * 16)),
        "map_small.npy": _npy(np.full((10, 10), 20.0)),
        "map_int.png": _png(np.full((64, 64), 20, np.uint8)),
        "model.txt": b"not a model",
        "pickle.pt": pickle.dumps({"payload": _Payload()}),
        "adir/.keep": b"",
    }


CASES = [  # (arguments, exit code, words the error must contain)
    (["missing.png", "-o", "out.png", "--sigma", "25"], 1, "missing.png: no such file"),
    (["adir", "-o", "out.png", "--sigma", "25"], 1, "adir: is a directory"),
    (["empty.png", "-o", "out.png", "--sigma", "25"], 1, "empty.png: empty file"),
    (["text.png", "-o", "out.png", "--sigma", "25"], 1, "text.png: not an image (the data do not start like"),
    (["truncated.png", "-o", "out.png", "--sigma", "25"], 1, "truncated.png: cannot decode the PNG data"),
    (["corrupt.png", "-o", "out.png", "--sigma", "25"], 1, "corrupt.png: cannot decode the PNG data"),
    (["truncated.jpg", "-o", "out.png", "--sigma", "25"], 1, "truncated.jpg: cannot decode the JPEG data"),
    (["garbage.tif", "-o", "out.png", "--sigma", "25"], 1, "garbage.tif: cannot decode the TIFF data"),
    (["onepixel.png", "-o", "out.png", "--sigma", "25"], 1, "onepixel.png: image of 1x1 pixels is smaller than"),
    (["small.png", "-o", "out.png", "--sigma", "25"], 1, "small.png: image of 40x5 pixels is smaller than"),
    (["zero.npy", "-o", "out.npy", "--sigma", "25"], 1, "zero.npy: image is empty"),
    (["nan.npy", "-o", "out.npy", "--sigma", "25"], 1, "nan.npy: image contains NaN"),
    (["inf.npy", "-o", "out.npy", "--sigma", "25"], 1, "inf.npy: image contains NaN or infinite"),
    (["neginf.npy", "-o", "out.npy", "--sigma", "25"], 1, "neginf.npy: image contains NaN or infinite"),
    (["flat.npy", "-o", "out.npy", "--sigma", "25"], 1, "flat.npy: expected a gray, gray + alpha or RGB(A) image"),
    (["fourd.npy", "-o", "out.npy", "--sigma", "25"], 1, "fourd.npy: expected a gray, gray + alpha or RGB(A)"),
    (["fivechannels.npy", "-o", "out.npy", "--sigma", "25"], 1, "fivechannels.npy: expected a gray, gray + alpha"),
    (["complex.npy", "-o", "out.npy", "--sigma", "25"], 1, "complex.npy: unsupported sample type"),
    (["objects.npy", "-o", "out.npy", "--sigma", "25"], 1, "objects.npy: the .npy file holds Python objects"),
    (["strings.npy", "-o", "out.npy", "--sigma", "25"], 1, "strings.npy: unsupported sample type"),
    (["good.png", "-o", "out.xyz", "--sigma", "25"], 2, "out.xyz: unknown output format"),
    (["good.png", "-o", "nofolder/out.png", "--sigma", "25"], 1, "folder nofolder does not exist"),
    (["good.png", "-o", "exists.png", "--sigma", "25"], 1, "exists.png: exists (use --overwrite"),
    (["good.png", "-o", "good.png", "--sigma", "25", "--overwrite"], 1, "refusing to overwrite an input"),
    (["good.png", "--output-dir", ".", "--sigma", "25", "--overwrite"], 1, "refusing to overwrite an input"),
    (["good.png", "--output-dir", "exists.png/sub", "--sigma", "25"], 1, "exists.png/sub: cannot create the output"),
    (["good.png", "other/good.png", "--output-dir", "adir", "--sigma", "25"], 2, "same file name"),
    (GOOD + ["--max-pixels", "1000"], 1, "good.png: 64x64 pixels is over the limit of 1000"),
    (["good.png", "-o", "out.png", "--sigma", "-5"], 2, "--sigma"),
    (["good.png", "-o", "out.png", "--sigma", "1000"], 2, "--sigma"),
    (["good.png", "-o", "out.png", "--sigma", "abc"], 2, "--sigma"),
    (["good.png", "-o", "out.png", "--sigma", "0"], 2, "--sigma"),
    (["good.png", "-o", "out.png"], 2, "give exactly one of --sigma, --blind and --sigma-map"),
    (["good.png", "-o", "out.png", "--output-dir", "adir", "--sigma", "25"], 2, "give exactly one of -o"),
    (GOOD + ["--method", "bm3d"], 2, "--method"),
    (GOOD + ["--tile", "-4"], 2, "--tile"),
    (GOOD + ["--format", "gif"], 2, "--format"),
    (GOOD + ["--model", "nomodel.pt"], 1, "nomodel.pt: no such checkpoint"),
    (GOOD + ["--model", "model.txt"], 1, "model.txt: not a gmdm checkpoint"),
    (GOOD + ["--model", "pickle.pt"], 1, "pickle.pt: not a gmdm checkpoint"),
    (["good.png", "-o", "out.png", "--sigma-map", "map_small.npy"], 1, "good.png: noise map of shape (10, 10) does not"),
    (["good.png", "-o", "out.png", "--sigma-map", "map_int.png"], 1, "map_int.png: a noise map must be"),
    (["good.png", "-o", "out.png", "--sigma-map", "nan.npy"], 1, "nan.npy: image contains NaN"),
    (["-", "-o", "out.png", "--sigma", "25"], 1, "<stdin>: no data"),
    (["-", "-o", "-", "--sigma", "25", "--json"], 2, "--json and -o - both write to standard output"),
    # second pass (issue 27)
    (["huge.npy", "-o", "out.npy", "--sigma", "25"], 1, "huge.npy: values up to 1e+300 are not on the [0, 1] scale"),
    (["bigger.npy", "-o", "out.npy", "--sigma", "25"], 1, "bigger.npy: values up to 2e+06 are not on the [0, 1]"),
    (["pages.tif", "-o", "out.png", "--sigma", "25"], 1, "pages.tif: the TIFF holds several images (5 pages"),
    (["animated.png", "-o", "out.png", "--sigma", "25"], 1, "animated.png: holds 3 frames (an animation)"),
    (["good.png", "-o", "out.png", "--sigma-map", "map_negative.npy"], 1, "map_negative.npy: noise map values must"),
    (["good.png", "-o", "out.png", "--sigma-map", "map_zero.npy"], 1, "map_zero.npy: noise map values must lie in"),
    (["good.png", "-o", "out.png", "--sigma-map", "map_big.npy"], 1, "map_big.npy: noise map values must lie in"),
    (["good.png", "-o", "map.npy", "--sigma-map", "map.npy", "--overwrite"], 1, "map.npy: refusing to overwrite an"),
    (["good.png", "-o", "model.json", "--sigma", "25", "--model", "model.json", "--overwrite"], 2, "unknown output"),
    (["good.png", "-o", "weights.png", "--sigma", "25", "--model", "weights.png", "--overwrite"], 1,
     "weights.png: refusing to overwrite an input"),
    (["good.png", "-o", "out.png", "--sigma-map", "map_ramp.npy", "--boundary", "reflect"], 1,
     "good.png: a per-pixel noise map works with boundary 'valid'"),
    (["good.png", "-o", "out.png", "--blind", "--noise-map", "out.png"], 2, "--noise-map and the result would be"),
    (["good.png", "-o", "out.png", "--blind", "--noise-map", "nm.jpg"], 2, "nm.jpg: unknown output format"),
    (["good.png", "-o", "out.png", "--blind", "--noise-map", "good.png", "--overwrite"], 1,
     "good.png: refusing to overwrite an input"),
    (["good.png", "-o", "out.gif", "--sigma", "25"], 2, "out.gif: unknown output format '.gif'"),
    (["la.png", "-o", "out.jpg", "--sigma", "25"], 1, "out.jpg: .jpg cannot store the image's alpha channel"),
    (["good.png", "-o", "out.png", "--sigma", "nan"], 2, "nan is not a finite number"),
    (["good.png", "-o", "out.png", "--sigma", "inf"], 2, "--sigma"),
    (GOOD + ["--model", "9x9"], 1, "9x9: no such checkpoint file (built-in models: 7x7, 15x15, conv)"),
    (GOOD + ["--model", "model.json"], 1, "model.json: not a gmdm checkpoint (a JSON file, not a PyTorch checkpoint)"),
    (GOOD + ["--model", "good.png"], 1, "good.png: not a gmdm checkpoint (an image file"),
    (GOOD + ["--model", "empty.png"], 1, "empty.png: not a gmdm checkpoint (an empty file)"),
    (["bad\nname.png", "-o", "out.png", "--sigma", "25"], 1, "'bad\\nname.png': not an image"),
    (GOOD + ["--max-pixels", "1023"], 1, "good.png: 64x64 pixels is over the limit of 1023"),
    (["/dev/null", "-o", "out.png", "--sigma", "25"], 1, "/dev/null: not a regular file"),
    (["-", "-o", "out.png", "--sigma", "25", "--max-pixels", "1"], 1, "<stdin>: more than 1048608 bytes"),
]


def _digest(folder):
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("arguments, code, message", CASES, ids=[" ".join(case[0])[:60] for case in CASES])
def test_bad_input_fails_cleanly(tmp_path, monkeypatch, camera, arguments, code, message):
    monkeypatch.chdir(tmp_path)
    for name, content in _files(camera).items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    before = _digest(tmp_path)
    stdin = b"\0" * 2**21 if "--max-pixels" in arguments else b""
    result = CliRunner().invoke(cli, ["denoise", *arguments, "--device", "cpu"], input=stdin)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    if code == 1:  # runtime failures: that one line and nothing else
        assert result.stderr.strip() == errors[0] and result.stdout == ""
    assert _digest(tmp_path) == before  # nothing written, nothing changed, no temporary files
    assert not (tmp_path / "pwned").exists()


def test_corpus_is_large_enough():
    assert len(CASES) >= 60


def test_one_bad_input_among_good_ones_exits_1_and_the_rest_are_written(tmp_path, camera):
    import json

    good = np.round(camera[:64, :64] * 255).astype(np.uint8)
    (tmp_path / "a.png").write_bytes(_png(good))
    (tmp_path / "b.png").write_bytes(b"broken")
    (tmp_path / "c.png").write_bytes(_png(good.T))
    (tmp_path / "out").mkdir()
    inputs = [str(tmp_path / name) for name in ("a.png", "b.png", "c.png")]
    result = CliRunner().invoke(cli, ["denoise", *inputs, "--output-dir", str(tmp_path / "out"), "--sigma", "20",
                                      "--json", "--quiet"])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert "b.png: not an image" in records[1]["error"]
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
    assert result.stderr.strip().startswith("Error:") and len(result.stderr.strip().splitlines()) == 1


# --- second pass (issue 27): limits, inputs never touched, writes, checkpoints, every error one clean line ---

RUN = [sys.executable, "-m", "gmdm_cli"]
QUICK = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _invoke(tmp_path, monkeypatch, arguments, **options):
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(cli, arguments, **options)


def _one_error_line(result, message):
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_npy_pixel_limit_is_checked_on_the_header_before_reading(tmp_path):
    import tracemalloc

    path = tmp_path / "sparse.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (20000, 20000)})
    with open(path, "wb") as file:  # a sparse 3.2 GB file: nothing is stored but its header
        file.write(header.getvalue())
        file.truncate(len(header.getvalue()) + 8 * 20000 * 20000)
    tracemalloc.start()
    with pytest.raises(ImageError, match="20000x20000 pixels is over the limit of 1000"):
        read_image(path, max_pixels=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2**20


def test_planar_tiff_is_read_interleaved_and_counted_once(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 32, 40), dtype=np.uint8)
    (tmp_path / "planar.tif").write_bytes(_tiff(rgb, planarconfig="separate", photometric="rgb"))
    image, info = read_image(tmp_path / "planar.tif", max_pixels=32 * 40)  # 3 x 32 rows would be over it
    assert image.shape == (32, 40, 3) and info.dtype == np.uint8
    assert np.array_equal(np.round(image * 255).astype(np.uint8), np.moveaxis(rgb, 0, -1))
    with pytest.raises(ImageError, match="40x32 pixels is over the limit of 1279"):
        read_image(tmp_path / "planar.tif", max_pixels=1279)


def test_cmyk_jpeg_is_read_as_rgb_and_written_as_jpeg(tmp_path, monkeypatch):
    from PIL import Image

    cmyk = Image.new("CMYK", (32, 24), (0, 255, 255, 0))  # red
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    image, _ = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == (24, 32, 3)
    assert image[..., 0].mean() > 0.9 and image[..., 1:].mean() < 0.1
    result = _invoke(tmp_path, monkeypatch, ["denoise", "cmyk.jpg", "-o", "out.jpg", "--sigma", "5"])
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "out.jpg")[0][..., 0].mean() > 0.9


@pytest.mark.parametrize("bits", [8, 16])
def test_gray_alpha_png_is_denoised_with_alpha_passed_through(tmp_path, monkeypatch, camera, bits):
    import png

    top = 2**bits - 1
    rng = np.random.default_rng(0)
    gray = np.round(np.clip(camera + 0.1 * rng.standard_normal(camera.shape), 0, 1) * top).astype(np.uint16)
    alpha = rng.integers(0, top + 1, camera.shape).astype(np.uint16)
    rows = np.stack([gray, alpha], -1).reshape(camera.shape[0], -1).astype(np.uint8 if bits == 8 else np.uint16)
    with open(tmp_path / "la.png", "wb") as file:
        png.Writer(camera.shape[1], camera.shape[0], greyscale=True, alpha=True, bitdepth=bits).write(file, rows)
    result = _invoke(tmp_path, monkeypatch, ["denoise", "la.png", "-o", "out.png", "--sigma", "25"])
    assert result.exit_code == 0, result.output
    out, info = read_image(tmp_path / "out.png")
    assert out.shape == camera.shape + (2,) and info.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert np.array_equal(np.round(out[..., 1] * top), alpha)
    assert np.mean((out[..., 0] - camera) ** 2) < np.mean((gray / top - camera) ** 2) / 2
    result = _invoke(tmp_path, monkeypatch, ["denoise", "la.png", "-o", "out.tif", "--sigma", "25"])
    assert result.exit_code == 0 and read_image(tmp_path / "out.tif")[0].shape == camera.shape + (2,)


def test_a_file_that_appears_during_a_write_is_not_replaced(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(FileExistsError):
        with atomic_output(target, ".png", overwrite=False) as temporary:
            Path(temporary).write_bytes(b"mine")
            target.write_bytes(b"theirs")  # another process finished first
    assert target.read_bytes() == b"theirs" and sorted(os.listdir(tmp_path)) == ["out.png"]
    with pytest.raises(ImageError, match="out.png: cannot write \\(exists"):
        write_image(target, np.zeros((4, 4)), overwrite=False)
    write_image(target, np.zeros((4, 4)), overwrite=True)
    assert read_image(target)[0].shape == (4, 4)


def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path, camera):
    write_image(tmp_path / "in.png", camera)
    script = ("import sys, time, gmdm_cli.image_io as image_io\n"
              "image_io._publish = lambda *arguments: time.sleep(60)\n"  # hold the finished temporary file
              "from gmdm_cli.cli import main\n"
              "sys.argv = ['gmdm', 'denoise', 'in.png', '-o', 'out.png', '--sigma', '20', '--device', 'cpu']\n"
              "sys.exit(main())\n")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=QUICK,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(name.startswith(".out.png.") for name in os.listdir(tmp_path)):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr
    assert sorted(os.listdir(tmp_path)) == ["in.png"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("arguments", [["-o", "-"], ["-o", "out.png", "--json"]])
def test_a_full_standard_output_is_one_error_line(tmp_path, camera, arguments):
    write_image(tmp_path / "in.png", camera)
    with open("/dev/full", "wb") as full:
        result = subprocess.run(RUN + ["denoise", "in.png", *arguments, "--sigma", "20", "--device", "cpu"],
                                cwd=tmp_path, env=QUICK, stdout=full, stderr=subprocess.PIPE, timeout=120)
    lines = [line for line in result.stderr.decode().strip().splitlines() if "->" not in line]  # progress lines
    assert result.returncode == 1 and lines == ["Error: <stdout>: cannot write (No space left on device)"], lines


def _limited_file_size():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))


@pytest.mark.parametrize("arguments, message", [
    (["demo", "--image", "coins", "--output-dir", "demo", "--device", "cpu"], "cannot write (File too large)"),
    (["train", "images", "-o", "run.pt", "--steps", "2", "--batch-size", "32", "--device", "cpu"],
     "run.pt: cannot write (File too large)"),
])
def test_a_full_disk_is_one_error_line(tmp_path, camera, arguments, message):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", camera)
    result = subprocess.run(RUN + arguments, cwd=tmp_path, env=QUICK, capture_output=True, timeout=300,
                            preexec_fn=_limited_file_size)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    leftovers = [path.name for path in tmp_path.rglob(".*") if path.is_file()]
    assert not leftovers and not (tmp_path / "run.pt").exists()


def _checkpoint(tmp_path, change) -> str:
    from conftest import random_model
    from gmdm_cli.checkpoint import save_checkpoint

    path = tmp_path / "bad.pt"
    save_checkpoint(path, random_model(patch_size=3, num_components=5).float(), training={
        "step": 1, "optimizer": {}, "generator": torch.Generator().get_state(), "config": {"patch_size": 3}})
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda p: p["metadata"].update(patch_size=1), "patch_size must be a whole number >= 2, not 1"),
    (lambda p: p.update(logits=p["logits"][:, :1]) or p["metadata"].update(num_components=1),
     "num_components must be a whole number >= 2, not 1"),
    (lambda p: p["metadata"].update(gamma="abc"), "gamma must be a positive number, not 'abc'"),
    (lambda p: p["metadata"].update(gamma=float("nan")), "gamma must be a positive number"),
    (lambda p: p["metadata"].update(noise_calibration={"flat": {"raw": [0.1], "true": [0.1]}}),
     "noise calibration 'flat' needs 'raw' and 'true'"),
    (lambda p: p["metadata"].update(noise_calibration={"quiet": {"raw": [0, 1], "true": [0, 1], "experts": [99]}}),
     "'experts' must list expert numbers from 0 to 7"),
    (lambda p: p["metadata"].update(noise_calibration="flat"), "noise_calibration must be a dictionary"),
    (lambda p: p["training"].pop("config"), "training state has no training configuration (use --init to"),
    (lambda p: p["metadata"].update(uncertainty_calibration={"sigma": [0.1, 0.05], "alpha": [0, 0], "own": [1, 1],
                                                             "spread": [0, 0]}), "uncertainty calibration needs"),
    (lambda p: p.update(filters=p["filters"].int()), "'filters' must be a float tensor"),
])
def test_checkpoint_fields_are_validated_on_load(tmp_path, monkeypatch, camera, change, message):
    path = _checkpoint(tmp_path, change)
    write_image(tmp_path / "in.png", camera)
    result = _invoke(tmp_path, monkeypatch, ["denoise", "in.png", "-o", "out.png", "--sigma", "20", "--model", path])
    assert result.exit_code == 1
    _one_error_line(result, "bad.pt: ")
    _one_error_line(result, message)
    assert not (tmp_path / "out.png").exists()


def test_resume_from_a_checkpoint_without_training_state(tmp_path, monkeypatch, camera):
    from conftest import random_model
    from gmdm_cli.checkpoint import save_checkpoint

    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", camera)
    save_checkpoint(tmp_path / "plain.pt", random_model(patch_size=3, num_components=5).float())
    before = (tmp_path / "plain.pt").read_bytes()
    result = _invoke(tmp_path, monkeypatch, ["train", "images", "-o", "plain.pt", "--resume", "--steps", "3"])
    assert result.exit_code == 1
    _one_error_line(result, "plain.pt: has no training state to resume from (use --init")
    assert (tmp_path / "plain.pt").read_bytes() == before


def test_estimate_noise_refuses_maps_that_would_share_a_name(tmp_path, monkeypatch, camera):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_image(tmp_path / folder / "x.png", camera)
    result = _invoke(tmp_path, monkeypatch, ["estimate-noise", "a/x.png", "b/x.png", "--map", "--output-dir", "out"])
    assert result.exit_code == 2 and "would be written to the same file" in result.stderr
    result = _invoke(tmp_path, monkeypatch, ["estimate-noise", "a/x.png", "--map", "--plot", "a/x_noise_map.png"])
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "a" / "x_noise_map.png").exists()


def test_train_log_is_never_appended_to_another_file(tmp_path, monkeypatch, camera):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", camera)
    image = (tmp_path / "images" / "a.png").read_bytes()
    common = ["train", "images", "-o", "run.pt", "--steps", "3", "--batch-size", "32", "--patch-size", "3"]
    result = _invoke(tmp_path, monkeypatch, common + ["--log", "images/a.png"])
    assert result.exit_code == 1
    _one_error_line(result, "images/a.png: exists (give a new log file")
    result = _invoke(tmp_path, monkeypatch, common + ["--log", "run.pt"])
    assert result.exit_code == 1
    _one_error_line(result, "run.pt: --log and the checkpoint are the same file")
    assert (tmp_path / "images" / "a.png").read_bytes() == image and not (tmp_path / "run.pt").exists()
    result = _invoke(tmp_path, monkeypatch, common + ["--log", "run.log"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # progress and the summary go to standard error
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert lines[0].startswith("# gmdm train log") and lines[-1].split()[0] == "3"  # a short run is logged too
    result = _invoke(tmp_path, monkeypatch, common[:5] + ["4"] + common[6:] + ["--resume", "--log", "images/a.png"])
    assert result.exit_code == 1
    _one_error_line(result, "images/a.png: not a gmdm training log")
    result = _invoke(tmp_path, monkeypatch, common[:5] + ["4"] + common[6:] + ["--resume", "--log", "run.log"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run.log").read_text().splitlines()[-1].split()[0] == "4"


@pytest.mark.parametrize("levels", ["nan,10", "10,inf", "5,300", "abc"])
def test_calibrate_refuses_levels_that_are_not_noise_levels(tmp_path, monkeypatch, levels):
    (tmp_path / "images").mkdir()
    result = _invoke(tmp_path, monkeypatch, ["calibrate", "7x7", "images", "-o", "cal.pt", "--levels", levels])
    assert result.exit_code == 2 and "--levels" in result.stderr and "Traceback" not in result.output


def test_calibrate_never_overwrites_its_model_or_images(tmp_path, monkeypatch, camera):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", camera)
    for target in ("images/a.png", "weights.pt"):
        (tmp_path / "weights.pt").write_bytes(_builtin_model())
        before = _digest(tmp_path)
        result = _invoke(tmp_path, monkeypatch, ["calibrate", "weights.pt", "images", "-o", target, "--overwrite",
                                                 "--levels", "5,10"])
        assert result.exit_code == 1
        _one_error_line(result, f"{target}: refusing to overwrite an input")
        assert _digest(tmp_path) == before


def test_sample_checks_the_size_first_and_draws_one_image_by_default(tmp_path, monkeypatch):
    result = _invoke(tmp_path, monkeypatch, ["sample", "-o", "s.npy", "--size", "4096x4096", "-n", "1000"])
    assert result.exit_code == 2 and "would need about" in result.stderr and "GiB" in result.stderr
    result = _invoke(tmp_path, monkeypatch, ["sample", "-o", "s.npy", "--size", "12x16", "--steps", "1",
                                             "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "s.npy").shape == (1, 12, 16)


def test_demo_does_not_overwrite_without_overwrite(tmp_path, monkeypatch):
    arguments = ["demo", "--image", "coins", "--output-dir", "demo", "--device", "cpu"]
    assert _invoke(tmp_path, monkeypatch, arguments).exit_code == 0
    (tmp_path / "demo" / "noisy.png").write_bytes(b"mine")
    result = _invoke(tmp_path, monkeypatch, arguments)
    assert result.exit_code == 1
    _one_error_line(result, "demo/clean.png: exists (use --overwrite")
    assert (tmp_path / "demo" / "noisy.png").read_bytes() == b"mine"
    assert _invoke(tmp_path, monkeypatch, arguments + ["--overwrite"]).exit_code == 0
    assert read_image(tmp_path / "demo" / "noisy.png")[0].shape == (303, 384)


def test_output_folders_are_created(tmp_path, monkeypatch, camera):
    write_image(tmp_path / "in.png", camera)
    result = _invoke(tmp_path, monkeypatch, ["denoise", "in.png", "--output-dir", "denoised/deep", "--sigma", "20",
                                             "--json"])
    assert result.exit_code == 0 and (tmp_path / "denoised" / "deep" / "in.png").is_file()
    result = _invoke(tmp_path, monkeypatch, ["estimate-noise", "in.png", "--map", "--output-dir", "maps"])
    assert result.exit_code == 0 and (tmp_path / "maps" / "in_noise_map.tif").is_file()


def test_noise_map_png_is_a_colour_picture(tmp_path, monkeypatch, camera):
    ramp = np.linspace(5, 40, camera.shape[1]) / 255
    noisy = camera + ramp * np.random.default_rng(0).standard_normal(camera.shape)
    np.save(tmp_path / "in.npy", noisy)
    result = _invoke(tmp_path, monkeypatch, ["denoise", "in.npy", "-o", "out.npy", "--blind", "--noise-map", "nm.png"])
    assert result.exit_code == 0, result.output
    picture, _ = read_image(tmp_path / "nm.png")
    assert picture.ndim == 3 and picture.std() > 0.05  # a colour map with a scale bar, not one flat value


def test_help_texts(monkeypatch):
    runner = CliRunner()
    overview = runner.invoke(cli, ["--help"]).output
    assert "(Fig.\n" not in overview and "inspect" in overview and "--threads" in overview
    for name, command in cli.commands.items():
        for parameter in command.params:
            if "--device" in parameter.opts:
                assert parameter.help and "cuda" in parameter.help, name
    sample_help = " ".join(runner.invoke(cli, ["sample", "--help"]).output.split())
    assert "(default 2.55)" not in sample_help and "[default: 64 patches, 1 image]" in sample_help
    train_help = " ".join(runner.invoke(cli, ["train", "--help"]).output.split())
    assert "the patch side b, 2 to 31" in train_help and "up to 256" in train_help
    assert "Built-in model (7x7, 15x15, conv)" in " ".join(runner.invoke(cli, ["denoise", "--help"]).output.split())


def test_threads_option(tmp_path, monkeypatch, camera):
    write_image(tmp_path / "in.png", camera)
    result = _invoke(tmp_path, monkeypatch, ["--threads", "0", "denoise", "in.png", "-o", "out.png", "--sigma", "9"])
    assert result.exit_code == 2 and "--threads" in result.stderr
    threads = torch.get_num_threads()
    try:
        result = _invoke(tmp_path, monkeypatch, ["--threads", "1", "denoise", "in.png", "-o", "out.png", "--sigma", "9"])
        assert result.exit_code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
