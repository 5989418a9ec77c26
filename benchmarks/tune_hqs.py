"""Choose the HQS schedule on training images (BSDS400), never on the BSD68 test set.

For every combination of iterations, first and last t (as fractions of sigma^2/2) and data weight
(lambda = data_weight / sigma^2), prints the mean PSNR gain of HQS over EB-PA on centre crops of a fixed
subset of the training images, per noise level and on average. For the band (conv) model the baseline is its
cycle-spun Tweedie estimate (``band_denoise``) and HQS is ``band_hqs``.

    python benchmarks/tune_hqs.py --model 7x7 --images 8 --crop 128
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.band_model import band_denoise, band_hqs
from gmdm_cli.denoisers import ebpa, hqs, hqs_schedule, psnr
from gmdm_cli.image_io import read_image
from gmdm_cli.training import find_images, spread

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds400"


def training_crops(data: Path, count: int, crop: int) -> list:
    """Centre crops ``crop x crop`` (``crop <= 0``: whole images) of ``count`` images spread over ``data``."""
    images = []
    for path in spread(find_images([data]), count):
        image = read_image(path)[0]
        if crop <= 0:
            images.append(image)
            continue
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        images.append(image[top:top + crop, left:left + crop])
    return images


def add_crop_options(parser: argparse.ArgumentParser, images: int) -> None:
    """The options of :func:`training_crops` and the model and noise levels, shared by the tuning benchmarks."""
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=images, help="every (400 / N)-th training image")
    parser.add_argument("--crop", type=int, default=128, help="centre crop side, pixels (0: whole images)")
    parser.add_argument("--sigmas", default="15,25,50,100")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_crop_options(parser, images=8)
    parser.add_argument("--iterations", default="6")
    parser.add_argument("--starts", default="1,0.5")
    parser.add_argument("--ends", default="0.03125,0.0078125")
    parser.add_argument("--data-weights", default="49,16")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    model = load_model(args.model, device=args.device)
    baseline_method, hqs_method = (band_denoise, band_hqs) if model.kind == "conv" else (ebpa, hqs)
    images = training_crops(args.data, args.images, args.crop)
    sigmas = [float(s) / 255 for s in args.sigmas.split(",")]
    grid = list(itertools.product(*[[float(v) for v in text.split(",")] for text in
                                    (args.iterations, args.starts, args.ends, args.data_weights)]))
    gains = np.zeros((len(grid), len(sigmas)))
    started = time.perf_counter()
    for column, sigma in enumerate(sigmas):
        rng = np.random.default_rng(1000)  # training-image noise, independent of the test protocol's seeds
        noisy = [torch.tensor(x + sigma * rng.standard_normal(x.shape), dtype=model.logits.dtype,
                              device=args.device) for x in images]
        with torch.no_grad():
            baseline = [psnr(baseline_method(model, y, sigma).cpu().numpy(), x) for x, y in zip(images, noisy)]
            for row, (iterations, start, end, weight) in enumerate(grid):
                schedule = hqs_schedule(int(iterations), start, end)
                values = [psnr(hqs_method(model, y, sigma, schedule, weight).cpu().numpy(), x)
                          for x, y in zip(images, noisy)]
                gains[row, column] = np.mean(values) - np.mean(baseline)
        print(f"sigma {255 * sigma:g}: EB-PA {np.mean(baseline):.2f} dB; best gain {gains[:, column].max():+.3f} "
              f"with {grid[int(gains[:, column].argmax())]}", flush=True)
    what = "whole images" if args.crop <= 0 else f"crops of {args.crop}x{args.crop}"
    print(f"\n{len(images)} {what} from {args.data}, {time.perf_counter() - started:.0f} s")
    print("iterations  start  end        data_weight  " + "  ".join(f"s={255 * s:<5g}" for s in sigmas) + "  mean")
    for row in np.argsort(-gains.mean(1)):
        iterations, start, end, weight = grid[row]
        print(f"{int(iterations):10d}  {start:5g}  {end:<9.6g}  {weight:11g}  "
              + "  ".join(f"{g:+7.3f}" for g in gains[row]) + f"  {gains[row].mean():+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
