"""Choose the flat noise estimator's kept fraction on training images (BSDS400), never on BSD68.

For every image and noise level the window energies are computed once; then the raw global estimate is taken
for several kept fractions of the windows (the lowest argmins; estimate = argmin of their mean energy) and
for several quantiles of the window argmins, beside the whole-image argmin ("mean-energy") and scikit-image's
``estimate_sigma``. Each variant is calibrated on the even-numbered images (the mean raw estimate per level,
as ``gmdm calibrate`` does) and its mean absolute error and bias (0-255 scale) are printed for the odd ones.

    python benchmarks/tune_noise.py --model 7x7 --every 10 --save tune_noise.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.noise import _argmin_refined, apply_calibration, estimate_global_sigma, window_energies
from gmdm_cli.training import find_images, load_training_images

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds400"
SIGMAS = (5, 10, 15, 25, 50, 75, 100)
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5)


def raw_estimates(model, noisy: torch.Tensor, window: int = 15) -> list[float]:
    """Raw estimates (0-1 scale) of every variant: fractions, quantiles, mean-energy."""
    whole = estimate_global_sigma(model, noisy)
    blocks, levels = window_energies(model, noisy, window, whole)
    argmins = _argmin_refined(blocks, levels)
    order = torch.argsort(argmins)
    values = []
    for fraction in FRACTIONS:
        keep = order[:max(1, round(fraction * blocks.shape[1]))]
        values.append(float(_argmin_refined(blocks[:, keep].mean(1, keepdim=True), levels)[0]))
    values += [float(torch.quantile(argmins.double(), q)) for q in QUANTILES]
    return values + [max(whole, 2 / 255)]


def report(results: np.ndarray) -> None:
    """results: (images, sigmas, variants + 1), the last variant is estimate_sigma (0-1 scale)."""
    names = [f"fraction {f:g}" for f in FRACTIONS] + [f"quantile {q:g}" for q in QUANTILES]
    names += ["mean-energy", "estimate_sigma"]
    fit, test = np.arange(0, len(results), 2), np.arange(1, len(results), 2)
    truth = np.asarray(SIGMAS, dtype=float)
    print(f"{len(results)} images: calibrated on {len(fit)}, tested on {len(test)}; MAE (bias), 0-255 scale")
    print(f"{'variant':16s}" + "".join(f"{s:>14d}" for s in SIGMAS))
    for v, name in enumerate(names):
        raw = results[:, :, v]
        if name != "estimate_sigma":
            means = np.maximum.accumulate(raw[fit].mean(0)) + 1e-9 * np.arange(len(SIGMAS))
            calibration = {"raw": list(means), "true": list(truth / 255)}
            raw = np.vectorize(lambda x: apply_calibration(x, calibration))(raw)
        error = 255 * raw[test] - truth
        print(f"{name:16s}" + "".join(f"{np.abs(e).mean():7.2f}({e.mean():+5.2f})" for e in error.T))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--every", type=int, default=10, help="use every N-th training image (from the 6th)")
    parser.add_argument("--save", type=Path, help="keep the raw estimates here (.npz), written after each image")
    parser.add_argument("--load", type=Path, help="only print the report of saved estimates")
    args = parser.parse_args(argv)
    if args.load:
        report(np.load(args.load)["results"])
        return 0
    from skimage.restoration import estimate_sigma

    model = load_model(args.model)
    images = [im.astype(np.float64) for im in load_training_images(find_images([args.data])[5::args.every], 7)]
    results = []
    started = time.perf_counter()
    for i, clean in enumerate(images):
        row = []
        for k, sigma in enumerate(SIGMAS):
            noisy = clean + sigma / 255 * np.random.default_rng(7000 + 10 * i + k).standard_normal(clean.shape)
            row.append(raw_estimates(model, torch.tensor(noisy, dtype=model.filters.dtype)) + [estimate_sigma(noisy)])
        results.append(row)
        print(f"image {i + 1}/{len(images)}, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.save:
            np.savez(args.save, results=np.asarray(results))
    report(np.asarray(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
