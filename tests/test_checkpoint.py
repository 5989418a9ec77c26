"""Checkpoints: round trip, metadata, and loading that never executes code."""

import pickle

import pytest
import torch

from conftest import random_model
from gmdm_cli.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint


def test_checkpoint_round_trip(tmp_path):
    model = random_model(patch_size=3, num_components=11).float()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {"steps": 12, "training_data": "synthetic"})
    loaded = load_model(path)
    assert torch.equal(loaded.filters, model.filters) and torch.equal(loaded.logits, model.logits)
    assert loaded.patch_size == 3 and loaded.num_components == 11 and loaded.sigma0 == model.sigma0
    metadata = read_checkpoint(path)["metadata"]
    assert metadata["steps"] == 12 and metadata["training_data"] == "synthetic"
    assert metadata["patch_size"] == 3 and metadata["sigma0"] == pytest.approx(0.2)
    assert "version" in metadata


def test_builtin_7x7_model_loads():
    model = load_model("7x7")
    assert model.filters.shape == (48, 49) and model.logits.shape == (48, 125)
    gram = model.filters.double() @ model.filters.double().T
    assert (gram - torch.diag(torch.diag(gram))).abs().max() < 1e-4  # orthogonal filters


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "gmdm-patch", "payload": _Payload(str(marker))}, handle)
    with pytest.raises(CheckpointError, match="refused for safety|not a gmdm checkpoint"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", b"\x89PNG\r\n\x1a\n0000"])
def test_non_checkpoint_files_get_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_wrong_shapes_and_tags_are_refused(tmp_path):
    model = random_model(patch_size=3, num_components=11).float()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=True)
    payload["logits"] = payload["logits"][:, :5]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(path)
    torch.save({"filters": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="format tag"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "missing.pt")
