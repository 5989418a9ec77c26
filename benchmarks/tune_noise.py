"""Choose the global noise estimators on training images (BSDS400), never on BSD68.

For every image and noise level the quiet experts' site energies are computed once (``image_sites``); then the
raw flat estimate is taken for several window radii and kept fractions of the windows (the lowest argmins;
estimate = argmin of their mean energy), beside the whole-image argmin ("mean-energy") and scikit-image's
``estimate_sigma``. Each variant is calibrated on the even-numbered images (the mean raw estimate per level,
as ``gmdm calibrate`` does) and its mean absolute error and bias (0-255 scale) are printed for the odd ones.

The "quiet" study uses every expert's mean energy over all patches as a function of sigma (160 levels): on
the even-numbered images the experts are ranked by how far their own argmin exceeds the true level (mean ratio
over the levels from 15 on, as ``calibrate_noise`` does); "quiet k" is the argmin of the summed energies of
the first k; "auto" ramps from the default flat estimate to quiet 8 between two calibrated flat levels.

    python benchmarks/tune_noise.py --model 7x7 --every 14 --save tune_noise.npz
    python benchmarks/tune_noise.py --load tune_noise.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.calibration import QUIET_SELECTION_FROM
from gmdm_cli.noise import (FLAT_FRACTION, FLAT_RADIUS, apply_calibration, estimate_flat_sigma,
                            estimate_global_sigma, expert_mean_energies, image_sites, response_histograms)
from gmdm_cli.sites import argmin_refined
from gmdm_cli.training import find_images, load_training_images

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds400"
SIGMAS = (2, 5, 10, 15, 25, 50, 75, 100)
RADII = (3, 4, 6)
FRACTIONS = (0.005, 0.01, 0.02, 0.05)
VARIANTS = [(radius, fraction) for radius in RADII for fraction in FRACTIONS]
DEFAULT = VARIANTS.index((FLAT_RADIUS, FLAT_FRACTION))
GRID = np.geomspace(1 / 255, 0.5, 160)  # levels of the experts' energy curves
QUIET_COUNTS = (4, 6, 8, 12, 16, 24)
RAMPS = ((15, 30), (20, 40), (25, 50), (30, 60))  # auto: flat below the first, quiet 8 above the second


def raw_estimates(model, noisy: torch.Tensor) -> list[float]:
    """Raw estimates (0-1 scale) of every variant: the flat estimate's radii and fractions, mean-energy."""
    sites = image_sites(model, noisy)
    values = [estimate_flat_sigma(model, noisy, sites, radius, fraction) for radius, fraction in VARIANTS]
    return values + [estimate_global_sigma(model, noisy)]


def expert_curves(model, noisy: torch.Tensor) -> np.ndarray:
    """Every expert's mean energy over all patches at the levels of ``GRID``: ``(J, len(GRID))``."""
    histograms = response_histograms(model, noisy[None, None])
    return torch.stack([expert_mean_energies(model, histograms, float(s)) for s in GRID]).T.numpy()


def calibrated(raw: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """``raw`` (images, sigmas) through the calibration curve measured on the images ``fit``."""
    means = np.maximum.accumulate(raw[fit].mean(0)) + 1e-9 * np.arange(len(SIGMAS))
    calibration = {"raw": list(means), "true": list(np.asarray(SIGMAS) / 255)}
    return np.vectorize(lambda x: apply_calibration(x, calibration))(raw)


def report(results: np.ndarray, curves: np.ndarray | None = None) -> None:
    """results: (images, sigmas, variants + 1), the last variant is estimate_sigma (0-1 scale); curves: (images,
    sigmas, J, len(GRID)) for the quiet study."""
    names = [f"radius {r} fraction {f:g}" for r, f in VARIANTS] + ["mean-energy", "estimate_sigma"]
    fit, test = np.arange(0, len(results), 2), np.arange(1, len(results), 2)
    truth = np.asarray(SIGMAS, dtype=float)
    print(f"{len(results)} images: calibrated on {len(fit)}, tested on {len(test)}; MAE (bias), 0-255 scale")
    print(f"{'variant':24s}" + "".join(f"{s:>14d}" for s in SIGMAS))

    def show(name: str, estimate: np.ndarray) -> None:
        error = 255 * estimate[test] - truth
        print(f"{name:24s}" + "".join(f"{np.abs(e).mean():7.2f}({e.mean():+5.2f})" for e in error.T))

    for v, name in enumerate(names):
        show(name, results[:, :, v] if name == "estimate_sigma" else calibrated(results[:, :, v], fit))
    if curves is None:
        return
    argmin = lambda values: argmin_refined(torch.as_tensor(np.moveaxis(values, -1, 0)), torch.as_tensor(GRID)).numpy()
    selected = [k for k, s in enumerate(SIGMAS) if s >= QUIET_SELECTION_FROM]
    ratios = argmin(curves[fit][:, selected]) * 255 / truth[selected, None]  # (fit images, levels, J)
    ranking = np.argsort(ratios.mean((0, 1)))
    print(f"experts by mean ratio (fit images, sigma >= {QUIET_SELECTION_FROM}): {ranking[:12].tolist()}")
    flat = calibrated(results[:, :, DEFAULT], fit)
    for count in QUIET_COUNTS:
        quiet = calibrated(argmin(curves[:, :, ranking[:count]].sum(2)), fit)
        show(f"quiet {count}", quiet)
        if count == 8:
            quiet8 = quiet
    for low, high in RAMPS:
        weight = np.clip((high - 255 * flat) / (high - low), 0, 1)
        show(f"auto {low}-{high}", weight * flat + (1 - weight) * quiet8)
    show("flat/quiet 8 mean", (flat + quiet8) / 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--every", type=int, default=10, help="use every N-th training image (from the 6th)")
    parser.add_argument("--save", type=Path, help="keep the raw estimates here (.npz), written after each image")
    parser.add_argument("--load", type=Path, help="only print the report of saved estimates")
    args = parser.parse_args(argv)
    if args.load:
        saved = np.load(args.load)
        report(saved["results"], saved["curves"] if "curves" in saved else None)
        return 0
    from skimage.restoration import estimate_sigma

    model = load_model(args.model)
    images = [im.astype(np.float64) for im in load_training_images(find_images([args.data])[5::args.every], 7)]
    results, curves = [], []
    started = time.perf_counter()
    for i, clean in enumerate(images):
        row, row_curves = [], []
        for k, sigma in enumerate(SIGMAS):
            noisy = clean + sigma / 255 * np.random.default_rng(7000 + 10 * i + k).standard_normal(clean.shape)
            tensor = torch.tensor(noisy, dtype=model.logits.dtype)
            row.append(raw_estimates(model, tensor) + [estimate_sigma(noisy)])
            row_curves.append(expert_curves(model, tensor))
        results.append(row)
        curves.append(row_curves)
        print(f"image {i + 1}/{len(images)}, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.save:
            np.savez(args.save, results=np.asarray(results), curves=np.asarray(curves))
    report(np.asarray(results), np.asarray(curves))
    return 0

if __name__ == "__main__":
    sys.exit(main())
