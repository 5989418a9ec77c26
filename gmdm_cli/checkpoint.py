"""GMDM checkpoints: plain tensors and metadata, loaded without executing code.

A checkpoint is a ``torch.save`` dictionary of tensors, strings and numbers only, read back
with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler refuses anything else
(classes, functions, ``__reduce__`` payloads). Layout of a patch model::

    {"format": "gmdm-patch", "format_version": 1,
     "filters": (J, a) tensor, "logits": (J, L) tensor,
     "metadata": {"patch_size", "num_components", "gamma", "sigma0", "steps", "optimizer",
                  "training_data", "version", ...},
     "training": {...}}        # optional: optimiser and RNG state for ``gmdm train --resume``

A band model (:mod:`gmdm_cli.band_model`, ``gmdm train --model-type conv``) has ``"format": "gmdm-band"``,
no filters, ``logits`` ``(M^2 - 1, L)`` and ``"bands": M`` in its metadata.
"""

from __future__ import annotations

import io
import math
import os
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .errors import GmdmError
from .image_io import shown, sniff_format, write_file
from .kinds import GMDM, KINDS, format_of, kind_class, kind_of_format

FORMAT_VERSION = 1
BUILTIN_MODELS = {"7x7": "gmdm-7x7.pt", "15x15": "gmdm-15x15.pt", "conv": "gmdm-conv.pt"}


class CheckpointError(GmdmError):
    """A file that is not a usable gmdm checkpoint; the message names the file."""


def save_checkpoint(path: str | os.PathLike, model: GMDM, metadata: dict | None = None,
                    training: dict | None = None, overwrite: bool = True) -> None:
    """Write ``model`` (and optionally training state) to ``path`` atomically; a failed write raises a
    :class:`CheckpointError` and leaves any earlier file as it was (without ``overwrite``: never replaces one)."""
    fields = model.checkpoint_fields()
    payload = {
        "format": format_of(model),
        "format_version": FORMAT_VERSION,
        **{name: tensor for name, tensor in fields.items() if name != "metadata"},
        "metadata": {
            **(metadata or {}),
            **fields["metadata"],
            "num_components": model.num_components,
            "gamma": model.gamma,
            "sigma0": model.sigma0,
            "version": __version__,
        },
    }
    if training is not None:
        payload["training"] = training
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_file(path, buffer.getvalue(), overwrite, error=CheckpointError)


def _not_a_checkpoint(head: bytes) -> str | None:
    """Why a file that starts with ``head`` cannot be a PyTorch checkpoint (a zip archive, or a pickle of
    the format before PyTorch 1.6); None if it could be one."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if not head:
        return "an empty file"
    if sniff_format(head):
        return "an image file, not a PyTorch checkpoint"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a PyTorch checkpoint file"
    return ("a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file") + ", not a PyTorch checkpoint"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dictionary at ``path``, every field validated; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{shown(path)}: no such checkpoint file (built-in models: {', '.join(BUILTIN_MODELS)})")
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError as error:
        raise CheckpointError(f"{shown(path)}: cannot open ({error.strerror})") from None
    reason = _not_a_checkpoint(head)
    if reason is not None:
        raise CheckpointError(f"{shown(path)}: not a gmdm checkpoint ({reason})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = "a damaged or truncated PyTorch file"
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it contains Python objects other than tensors and plain data, refused for safety"
        raise CheckpointError(f"{shown(path)}: not a gmdm checkpoint ({reason})") from None
    if not isinstance(payload, dict) or kind_of_format(payload.get("format")) is None:
        tags = " or ".join(f"'{tag}'" for tag, *_ in KINDS.values())
        raise CheckpointError(f"{shown(path)}: not a gmdm checkpoint (a PyTorch file without the {tags} format tag)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{shown(path)}: unsupported checkpoint format version "
                              f"{payload.get('format_version')!r}")
    try:
        _validate(payload)
    except ValueError as error:
        raise CheckpointError(f"{shown(path)}: {error}") from None
    return payload


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value, name: str, least: int) -> int:
    if not _is_number(value) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number >= {least}, not {value!r}")
    return value


def _positive(value, name: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return float(value)


def _finite_numbers(values) -> bool:
    """A list of at least two finite numbers."""
    return (isinstance(values, (list, tuple)) and len(values) >= 2
            and all(_is_number(v) and math.isfinite(v) for v in values))


def _finite_tensor(value, name: str, shape: tuple) -> None:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(f"'{name}' must be a float tensor, not {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(f"'{name}' of shape {tuple(value.shape)} do not match the shape {shape} that its "
                         f"metadata (patch size or bands, components) gives")
    if not torch.isfinite(value).all():
        raise ValueError(f"'{name}' holds NaN or infinite parameters")


def _validate(payload: dict) -> None:
    """Every field a model, its noise calibration or ``--resume`` reads: a ``ValueError`` saying which is wrong."""
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        raise ValueError("checkpoint lacks its metadata")
    components = _count(metadata.get("num_components"), "num_components", 2)
    _positive(metadata.get("gamma", 1.0), "gamma")
    if "sigma0" in metadata:
        _positive(metadata["sigma0"], "sigma0")
    kind = kind_class(kind_of_format(payload["format"]))
    for field in kind.shape_fields:
        _count(metadata.get(field), field, 2)
    for name, shape in kind.expected_shapes({**metadata, "num_components": components}).items():
        _finite_tensor(payload.get(name), name, shape)
    experts = payload["logits"].shape[0]
    calibration = metadata.get("noise_calibration")
    if calibration is not None:
        if not isinstance(calibration, dict):
            raise ValueError("noise_calibration must be a dictionary of curves")
        curves = {"mean-energy": calibration} if "raw" in calibration else calibration
        for name, curve in curves.items():
            _validate_curve(name, curve, experts)
    if metadata.get("uncertainty_calibration") is not None:
        _validate_uncertainty(metadata["uncertainty_calibration"])
    if "training" in payload:
        _validate_training(payload["training"])


def _validate_curve(name: str, curve, experts: int) -> None:
    where = f"noise calibration '{name}'"
    if not isinstance(curve, dict):
        raise ValueError(f"{where} must be a dictionary")
    raw, true = curve.get("raw"), curve.get("true")
    if not (_finite_numbers(raw) and _finite_numbers(true) and len(raw) == len(true)
            and all(b > a for a, b in zip(raw, raw[1:]))):
        raise ValueError(f"{where} needs 'raw' and 'true': lists of the same length (>= 2) of finite numbers, "
                         f"'raw' increasing")
    chosen = curve.get("experts")
    if chosen is not None and not (isinstance(chosen, (list, tuple)) and chosen and all(
            _is_number(j) and isinstance(j, int) and 0 <= j < experts for j in chosen)):
        raise ValueError(f"{where}: 'experts' must list expert numbers from 0 to {experts - 1}")


def _validate_uncertainty(curve) -> None:
    keys = ("sigma", "alpha", "own", "spread")
    if not isinstance(curve, dict) or not all(isinstance(curve.get(key), (list, tuple)) and curve[key]
                                              and all(_is_number(v) and math.isfinite(v) for v in curve[key])
                                              for key in keys) \
            or len({len(curve[key]) for key in keys}) != 1 or min(curve["sigma"]) <= 0 \
            or any(b <= a for a, b in zip(curve["sigma"], curve["sigma"][1:])):
        raise ValueError("uncertainty calibration needs lists 'sigma' (positive, increasing), 'alpha', 'own' and "
                         "'spread' of one length, of finite numbers")


def _validate_training(training) -> None:
    if not isinstance(training, dict) or not isinstance(training.get("config"), dict):
        raise ValueError("its training state has no training configuration (use --init to fine-tune from it)")
    _count(training.get("step"), "training step", 0)
    if not isinstance(training.get("optimizer"), dict) or not isinstance(training.get("generator"), torch.Tensor):
        raise ValueError("its training state lacks the optimiser or the random generator state")
    config = training["config"]
    _count(config.get("patch_size"), "training patch_size", 2)
    for key in ("steps", "batch_size"):
        if key in config:
            _count(config[key], f"training {key}", 1)


def model_from_checkpoint(payload: dict, dtype=torch.float32) -> GMDM:
    """The model of a validated checkpoint dictionary (its kind from the format tag, :mod:`gmdm_cli.kinds`)."""
    model = kind_class(kind_of_format(payload["format"])).from_checkpoint(payload, dtype)
    model.metadata = dict(payload["metadata"])
    return model


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A built-in model name (``7x7``, ``15x15``) or a path, as a path to a checkpoint file."""
    if str(name) in BUILTIN_MODELS:
        path = Path(str(resources.files("gmdm_cli.models") / BUILTIN_MODELS[str(name)]))
        if not path.is_file():
            raise CheckpointError(f"built-in model '{name}' is not installed ({path} missing)")
        return path
    return Path(name)


def load_model(name: str | os.PathLike = "7x7", device="cpu", dtype=torch.float32) -> GMDM:
    """Load a built-in model by name (``"7x7"``, ``"15x15"``) or a checkpoint file by path."""
    payload = read_checkpoint(resolve_model_path(name))
    return model_from_checkpoint(payload, dtype).to(device)
