"""A corpus of bad inputs: each gets a clear error, a non-zero exit code, no traceback, no partial output,
and leaves every existing file as it was."""

import hashlib
import io
import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from gmdm_cli.cli import cli

GOOD = ["good.png", "-o", "out.png", "--sigma", "25"]


def _png(array) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", np.asarray(array), extension=".png")


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
        "twochannels.npy": _npy(np.zeros((16, 16, 2))),
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
    (["empty.png", "-o", "out.png", "--sigma", "25"], 1, "empty.png: cannot read image"),
    (["text.png", "-o", "out.png", "--sigma", "25"], 1, "text.png: cannot read image"),
    (["truncated.png", "-o", "out.png", "--sigma", "25"], 1, "truncated.png: cannot read image"),
    (["corrupt.png", "-o", "out.png", "--sigma", "25"], 1, "corrupt.png: cannot read image"),
    (["truncated.jpg", "-o", "out.png", "--sigma", "25"], 1, "truncated.jpg: cannot read image"),
    (["garbage.tif", "-o", "out.png", "--sigma", "25"], 1, "garbage.tif: cannot read image"),
    (["onepixel.png", "-o", "out.png", "--sigma", "25"], 1, "smaller than the 7x7 patches"),
    (["small.png", "-o", "out.png", "--sigma", "25"], 1, "smaller than the 7x7 patches"),
    (["zero.npy", "-o", "out.npy", "--sigma", "25"], 1, "zero.npy: image is empty"),
    (["nan.npy", "-o", "out.npy", "--sigma", "25"], 1, "nan.npy: image contains NaN"),
    (["inf.npy", "-o", "out.npy", "--sigma", "25"], 1, "inf.npy: image contains NaN or infinite"),
    (["neginf.npy", "-o", "out.npy", "--sigma", "25"], 1, "neginf.npy: image contains NaN or infinite"),
    (["flat.npy", "-o", "out.npy", "--sigma", "25"], 1, "flat.npy: expected a gray or RGB(A) image"),
    (["fourd.npy", "-o", "out.npy", "--sigma", "25"], 1, "fourd.npy: expected a gray or RGB(A) image"),
    (["twochannels.npy", "-o", "out.npy", "--sigma", "25"], 1, "twochannels.npy: expected a gray or RGB(A)"),
    (["complex.npy", "-o", "out.npy", "--sigma", "25"], 1, "complex.npy: unsupported sample type"),
    (["objects.npy", "-o", "out.npy", "--sigma", "25"], 1, "objects.npy: cannot read image"),
    (["strings.npy", "-o", "out.npy", "--sigma", "25"], 1, "strings.npy: unsupported sample type"),
    (["good.png", "-o", "out.xyz", "--sigma", "25"], 1, "out.xyz: unknown output format"),
    (["good.png", "-o", "nofolder/out.png", "--sigma", "25"], 1, "folder nofolder does not exist"),
    (["good.png", "-o", "exists.png", "--sigma", "25"], 1, "exists.png: exists (use --overwrite"),
    (["good.png", "-o", "good.png", "--sigma", "25", "--overwrite"], 1, "refusing to overwrite the input"),
    (["good.png", "--output-dir", ".", "--sigma", "25", "--overwrite"], 1, "refusing to overwrite the input"),
    (["good.png", "--output-dir", "nowhere", "--sigma", "25"], 1, "nowhere: output folder does not exist"),
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
    (["good.png", "-o", "out.png", "--sigma-map", "map_small.npy"], 1, "does not match the image"),
    (["good.png", "-o", "out.png", "--sigma-map", "map_int.png"], 1, "map_int.png: a noise map must be"),
    (["good.png", "-o", "out.png", "--sigma-map", "nan.npy"], 1, "nan.npy: image contains NaN"),
    (["-", "-o", "out.png", "--sigma", "25"], 1, "<stdin>: no data"),
    (["-", "-o", "-", "--sigma", "25", "--json"], 2, "--json and -o - both write to standard output"),
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
    result = CliRunner().invoke(cli, ["denoise", *arguments, "--device", "cpu"], input=b"")
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
    assert len(CASES) >= 30


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
    assert "b.png: cannot read image" in records[1]["error"]
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
    assert result.stderr.strip().startswith("Error:") and len(result.stderr.strip().splitlines()) == 1
