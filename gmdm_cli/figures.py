"""Figures of noise estimates, written like every other output (atomically, never over an input): the per-pixel
levels as a colour map with a scale bar, and the noise level against the intensity (the noise-level function).
matplotlib (the ``plots`` extra) draws them; without it, a map is written as gray levels and a plot is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .image_io import ImageError, shown, write_figure, write_image


def write_levels(path: Path, levels, overwrite: bool = True, label: str = "noise sigma (0-255)") -> str | None:
    """Per-pixel noise levels (0-255 units, ``(H, W)`` or ``(H, W, 3)``): a colour-mapped picture with a scale
    bar for ``.png`` (the channels of a colour map side by side), float32 values otherwise. Returns a note for the
    user when the picture had to be plain gray levels (no matplotlib)."""
    if path.suffix.lower() != ".png":
        write_image(path, levels, dtype="float32", overwrite=overwrite)
        return None
    if levels.ndim == 3:
        gap = np.full((levels.shape[0], max(2, levels.shape[1] // 50)), np.nan)
        levels = np.concatenate([part for k in range(3) for part in (levels[..., k], gap)][:-1], 1)
    return write_map_picture(path, levels, overwrite, label)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_nlf_plot(path: Path, estimates, overwrite: bool = True) -> None:
    """The noise level against the intensity: each channel's binned levels (dots) and its fitted noise-level
    function (line), 0-255 scale."""
    plt = pyplot()
    if plt is None:
        raise ImageError(f"{shown(path)}: the plot needs matplotlib (pip install 'gmdm-cli[plots]')")
    colours = ("black",) if len(estimates) == 1 else ("tab:red", "tab:green", "tab:blue")
    names = ("",) if len(estimates) == 1 else ("R ", "G ", "B ")
    figure, axis = plt.subplots(figsize=(5, 3.5), dpi=100)
    x = np.linspace(0, 1, 101)
    for estimate, colour, name in zip(estimates, colours, names):
        a, b = estimate.nlf
        if estimate.curve:
            intensity, sigma, _ = zip(*estimate.curve)
            axis.plot(intensity, 255 * np.asarray(sigma), "o", color=colour, alpha=0.6, label=f"{name}binned")
        axis.plot(x, 255 * np.sqrt(a * x + b), "-", color=colour,
                  label=f"{name}$\\sigma^2$ = {a:.3g} x + {b:.3g} ({estimate.model})")
    axis.set_xlabel("intensity x (0-1)")
    axis.set_ylabel("noise sigma (0-255)")
    axis.set_xlim(0, 1)
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=7)
    try:
        write_figure(path, figure, overwrite, bbox_inches="tight")
    finally:
        plt.close(figure)


def write_map_picture(path: Path, sigma_map, overwrite: bool = True, label: str = "noise sigma (0-255)") -> str | None:
    """A noise map (0-255 units; NaN: a gap) as a colour picture with a labelled scale bar (matplotlib), or as
    8-bit gray levels scaled to its maximum when matplotlib is not installed (a note says the scale)."""
    plt = pyplot()
    if plt is None:
        top = max(float(np.nanmax(sigma_map)), 1e-12)
        write_image(path, np.nan_to_num(sigma_map / top), overwrite=overwrite)
        return (f"{shown(path)}: gray levels 0-255 stand for {label.split(' (')[0]} 0-{top:.1f} (install 'gmdm-cli[plots]' for a "
                f"colour map with a scale bar)")
    height, width = sigma_map.shape
    figure, axis = plt.subplots(figsize=(max(3.0, width / 100 + 1.2), max(2.0, height / 100)), dpi=100)
    picture = axis.imshow(np.ma.masked_invalid(sigma_map), cmap="viridis")
    axis.set_axis_off()
    figure.colorbar(picture, ax=axis, label=label)
    try:
        write_figure(path, figure, overwrite, bbox_inches="tight")
    finally:
        plt.close(figure)
    return None
