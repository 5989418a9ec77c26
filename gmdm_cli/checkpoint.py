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

import os
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .image_io import atomic_output
from .band_model import BandGMDM
from .model import PatchGMDM

FORMAT = "gmdm-patch"
BAND_FORMAT = "gmdm-band"
FORMAT_VERSION = 1
BUILTIN_MODELS = {"7x7": "gmdm-7x7.pt", "15x15": "gmdm-15x15.pt", "conv": "gmdm-conv.pt"}


class CheckpointError(ValueError):
    """A file that is not a usable gmdm checkpoint; the message names the file."""


def save_checkpoint(path: str | os.PathLike, model: PatchGMDM, metadata: dict | None = None,
                    training: dict | None = None) -> None:
    """Write ``model`` (and optionally training state) to ``path`` atomically."""
    path = Path(path)
    shape = {"bands": model.bands} if isinstance(model, BandGMDM) else {"patch_size": model.patch_size}
    payload = {
        "format": BAND_FORMAT if isinstance(model, BandGMDM) else FORMAT,
        "format_version": FORMAT_VERSION,
        "logits": model.logits.detach().cpu().clone(),
        "metadata": {
            **(metadata or {}),
            **shape,
            "num_components": model.num_components,
            "gamma": model.gamma,
            "sigma0": model.sigma0,
            "version": __version__,
        },
    }
    if not isinstance(model, BandGMDM):
        payload["filters"] = model.filters.detach().cpu().clone()
    if training is not None:
        payload["training"] = training
    with atomic_output(path) as temporary:
        torch.save(payload, temporary)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dictionary at ``path``, validated; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it contains Python objects other than tensors and plain data, refused for safety"
        raise CheckpointError(f"{path}: not a gmdm checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, BAND_FORMAT):
        raise CheckpointError(f"{path}: not a gmdm checkpoint (no '{FORMAT}' or '{BAND_FORMAT}' format tag)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {payload.get('format_version')!r}")
    metadata, logits = payload.get("metadata"), payload.get("logits")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its metadata")
    if payload["format"] == BAND_FORMAT:
        bands = metadata.get("bands")
        if (not isinstance(logits, torch.Tensor) or not isinstance(bands, int) or bands < 2 or logits.dim() != 2
                or logits.shape != (bands**2 - 1, metadata.get("num_components"))):
            raise CheckpointError(f"{path}: band checkpoint's logits do not match {bands!r} bands and "
                                  f"{metadata.get('num_components')!r} components")
        if not torch.isfinite(logits).all():
            raise CheckpointError(f"{path}: checkpoint holds NaN or infinite parameters")
        return payload
    filters = payload.get("filters")
    if not isinstance(filters, torch.Tensor) or not isinstance(logits, torch.Tensor):
        raise CheckpointError(f"{path}: checkpoint lacks 'filters' or 'logits' tensors")
    size = metadata.get("patch_size")
    if (not isinstance(size, int) or filters.dim() != 2 or logits.dim() != 2
            or filters.shape != (size**2 - 1, size**2) or logits.shape[0] != size**2 - 1
            or logits.shape[1] != metadata.get("num_components")):
        raise CheckpointError(f"{path}: tensor shapes {tuple(filters.shape)}, {tuple(logits.shape)} "
                              f"do not match patch size {size!r} and {metadata.get('num_components')!r} components")
    if not (torch.isfinite(filters).all() and torch.isfinite(logits).all()):
        raise CheckpointError(f"{path}: checkpoint holds NaN or infinite parameters")
    return payload


def model_from_checkpoint(payload: dict, dtype=torch.float32) -> PatchGMDM | BandGMDM:
    """A :class:`PatchGMDM` (or :class:`~gmdm_cli.band_model.BandGMDM`) from a validated checkpoint dictionary."""
    gamma = float(payload["metadata"].get("gamma", 1.0))
    if payload["format"] == BAND_FORMAT:
        model = BandGMDM(payload["metadata"]["bands"], payload["logits"].to(dtype), gamma)
    else:
        model = PatchGMDM(payload["filters"].to(dtype), payload["logits"].to(dtype), gamma)
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


def load_model(name: str | os.PathLike = "7x7", device="cpu", dtype=torch.float32) -> PatchGMDM:
    """Load a built-in model by name (``"7x7"``, ``"15x15"``) or a checkpoint file by path."""
    payload = read_checkpoint(resolve_model_path(name))
    return model_from_checkpoint(payload, dtype).to(device)
