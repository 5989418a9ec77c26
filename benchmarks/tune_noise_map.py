"""Choose the noise map's window and opening on training images (BSDS400), never on BSD68.

Blind denoising of the checkerboard of Fig. 3 (noise 0.1 / 0.2 in 64-pixel squares) on ``--images`` training
images: for every variant (window, opening) of :func:`gmdm_cli.noise.map_from_energies` the map is calibrated
on three other training images with uniform noise (median of the map at 0.02 ... 0.25, as ``gmdm calibrate
--estimator map`` does), then EB-PA runs with it; printed per variant: PSNR (dB), map RMSE and bias (0-255),
beside EB-PA with the true map.

    python benchmarks/tune_noise_map.py --images 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import denoise_array, psnr
from gmdm_cli.noise import apply_calibration, map_from_energies, map_levels, patch_energies
from gmdm_cli.training import find_images, load_training_images

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds400"
VARIANTS = ((31, 1), (15, 1), (7, 35), (7, 45), (7, 61), (5, 45), (9, 45))  # (window, opening); (31, 1): box
LEVELS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25)


def raw_maps(model, noisy: np.ndarray) -> dict:
    tensor = torch.as_tensor(noisy, dtype=model.logits.dtype)
    levels = map_levels(model, tensor)
    energies = patch_energies(model, tensor, levels)
    return {variant: map_from_energies(model, energies, levels, noisy.shape, *variant).double().numpy()
            for variant in VARIANTS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args(argv)
    model = load_model(args.model)
    paths = find_images([args.data])
    medians = {variant: [] for variant in VARIANTS}
    for sigma in LEVELS:
        found = {variant: [] for variant in VARIANTS}
        for j, clean in enumerate(load_training_images(paths[23::40][:3], 7)):
            noisy = clean.astype(np.float64) + sigma * np.random.default_rng(500 + j).standard_normal(clean.shape)
            for variant, raw in raw_maps(model, noisy).items():
                found[variant].append(np.median(raw))
        for variant in VARIANTS:
            medians[variant].append(np.mean(found[variant]))
    calibrations = {variant: {"raw": list(np.maximum.accumulate(values) + 1e-9 * np.arange(len(LEVELS))),
                              "true": list(LEVELS)} for variant, values in medians.items()}
    rows = {variant: [] for variant in VARIANTS}
    truths = []
    for i, clean in enumerate(load_training_images(paths[3::40][:args.images], 7)):
        clean = clean.astype(np.float64)
        squares = (np.arange(clean.shape[0])[:, None] // 64 + np.arange(clean.shape[1])[None] // 64) % 2
        truth = np.where(squares == 0, 0.1, 0.2)
        noisy = clean + truth * np.random.default_rng(100 + i).standard_normal(clean.shape)
        truths.append(psnr(denoise_array(model, noisy, truth), clean))
        for variant, raw in raw_maps(model, noisy).items():
            estimated = apply_calibration(raw, calibrations[variant])
            rows[variant].append((psnr(denoise_array(model, noisy, estimated), clean),
                                  255 * np.sqrt(np.mean((estimated - truth) ** 2)), 255 * np.mean(estimated - truth)))
        print(f"image {i + 1}/{args.images}", file=sys.stderr, flush=True)
    print(f"EB-PA with the true map: {np.mean(truths):.3f} dB")
    print("window opening    PSNR  map RMSE  bias")
    for (window, opening), values in rows.items():
        value, rmse, bias = np.mean(values, 0)
        print(f"{window:6d} {opening:7d} {value:7.3f} {rmse:8.2f} {bias:+6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
