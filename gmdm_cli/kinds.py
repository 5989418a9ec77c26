"""The model protocol, and the registry of the kinds of GMDM (torch-free: the command line reads the names).

Every kind of model implements :class:`GMDM`; the algorithms (EB-PA and HQS through :meth:`GMDM.denoise`,
noise estimation through :meth:`GMDM.site_grid` and :meth:`GMDM.site_inputs`, sampling through
:meth:`GMDM.tweedie_correction`, checkpoints through :meth:`GMDM.checkpoint_fields`,
:meth:`GMDM.expected_shapes` and :meth:`GMDM.from_checkpoint`, training through :meth:`GMDM.for_training`,
:meth:`GMDM.training_defaults`, :meth:`GMDM.check_training`, :meth:`GMDM.adopt`, :meth:`GMDM.run_metadata` and
:attr:`GMDM.projected`) take any of them and never ask which
kind they have. A new kind is one new module with its class, and one line in :data:`KINDS`.
"""

from __future__ import annotations

import importlib
from typing import Protocol

KINDS = {
    # name (``gmdm train --model-type``): (checkpoint format tag, module, class, what it is)
    "patch": ("gmdm-patch", "gmdm_cli.model", "PatchGMDM", "the patch GMDM (Sec. 3.1)"),
    "conv": ("gmdm-band", "gmdm_cli.band_model", "BandGMDM",
             "the convolutional model of Sec. 3.2 made exact by critically sampled bands"),
}


class GMDM(Protocol):
    """What every kind of GMDM offers (besides the shared mixture experts of
    :class:`gmdm_cli.model.MixtureExperts`: ``logits``, ``gamma``, ``num_filters``, ``expert_variances``...)."""

    kind: str
    """Its name in :data:`KINDS`."""
    projected: tuple[str, ...]
    """Names of the parameters that training keeps on the zero-mean orthogonal set (Algorithm 1)."""
    exact_patches: bool
    """Whether patches can be drawn from it exactly (Corollary 2.1) and its filters drawn (``gmdm inspect``)."""
    shape_fields: tuple[str, ...]
    """The checkpoint metadata fields that give its tensors' shapes (``patch_size``, ``bands``)."""
    metadata: dict

    def smallest_side(self) -> int:
        """The smallest image side it can work on."""

    def site_grid(self, shape) -> tuple[int, int, int, int]:
        """``(rows, columns, footprint, stride)`` of the sites whose experts see an image of ``shape`` ``(H, W)``."""

    def site_inputs(self, images, function, step: int = 1) -> list:
        """``[function(top, bottom, z), ...]`` over strips of sites in order, ``z`` ``(1, J, rows, w)`` the expert
        inputs of the sites in rows ``top:bottom`` of :meth:`site_grid` (with ``step``, of every ``step``-th site
        in each direction: rows that are multiples of ``step``, columns from the first)."""

    def tweedie_correction(self, images, t):
        """The whole-image Tweedie correction ``xhat(x, t) - x`` of ``(N, 1, H, W)`` images at time ``t``."""

    def denoise(self, noisy, sigma, method: str, iterations: int | None, boundary: str, tile: int | None,
                return_std: bool = False):
        """One gray channel ``(H, W)`` (a tensor) denoised at ``sigma``: a number, or a per-pixel map ``(H, W)``;
        with ``return_std`` also its posterior std per pixel (a ``ValueError`` where the kind has none)."""

    def checkpoint_fields(self) -> dict:
        """The tensors and the shape metadata a checkpoint stores for it."""

    @classmethod
    def expected_shapes(cls, metadata: dict) -> dict:
        """``{tensor name: shape}`` that a checkpoint with ``metadata`` must hold (``metadata`` validated)."""

    @classmethod
    def from_checkpoint(cls, payload: dict, dtype):
        """The model of a validated checkpoint dictionary."""

    @classmethod
    def for_training(cls, config):
        """The initial model of a training run (:class:`gmdm_cli.training.TrainingConfig`)."""

    @staticmethod
    def training_defaults(bands: int) -> dict:
        """The ``gmdm train`` options whose defaults differ for this kind (e.g. ``{"batch_size": 16}``)."""

    @staticmethod
    def check_training(config) -> None:
        """A ``ValueError`` for a training config this kind cannot train with."""

    @staticmethod
    def adopt(config, metadata: dict) -> None:
        """Fit a training config to the model of ``metadata`` that a run starts from (a ``ValueError`` if it cannot)."""

    @staticmethod
    def run_metadata(config) -> dict:
        """What a training run's checkpoint records of ``config`` besides the model's own shape."""


def kind_class(name: str):
    """The class of the kind ``name``."""
    _, module, attribute, _ = KINDS[name]
    return getattr(importlib.import_module(module), attribute)


def kind_of_format(tag) -> str | None:
    """The kind whose checkpoints carry the format ``tag`` (None if none does)."""
    return next((name for name, (format_tag, *_) in KINDS.items() if format_tag == tag), None)


def format_of(model) -> str:
    """The checkpoint format tag of ``model``'s kind."""
    return KINDS[model.kind][0]


def is_model(value) -> bool:
    """Whether ``value`` is a model of a registered kind."""
    return isinstance(value, tuple(kind_class(name) for name in KINDS))
