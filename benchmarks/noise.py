"""Noise estimation and blind denoising with a GMDM (Sec. 4.4, Figs. 3-4 of the paper).

    python benchmarks/noise.py --parts global --markdown benchmarks/results/noise-global.md
    python benchmarks/noise.py --parts figure --figure-images 4 --figure benchmarks/results/fig4.png

In one run, on BSD68 (images in [0, 1], noise from a generator seeded per image, not clipped):

* homoscedastic: noise sigma in {5, 10, 15, 25, 50, 75, 100}: mean absolute error and bias (0-255 scale) of
  the calibrated global estimates (the default "auto", and the "flat", "quiet" and the paper's "mean-energy"
  argmins it is made of or compared with), with ``skimage.restoration.estimate_sigma`` (wavelet MAD; needs
  PyWavelets) beside them;
* Fig. 4: the expected normalised negative log-density of noisy patches, mean over the images, on a grid of
  the true noise level sigma and the model's sqrt(2t), with the argmin over t per sigma, as a PNG.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.image_io import read_image
from gmdm_cli.noise import (apply_calibration, calibration_for, estimate_global_noise, mean_patch_energy, raw_global_sigmas,
                            response_histograms)
from gmdm_cli.training import find_images

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsd68"
SIGMAS = (5, 10, 15, 25, 50, 75, 100)


def homoscedastic(model, images, seed, show):
    from skimage.restoration import estimate_sigma

    columns = {"auto (default)": [], "flat": [], "quiet": [], "mean-energy": [], "estimate_sigma": []}
    show("## Global noise level (0-255 scale): mean absolute error / bias")
    show()
    show("| sigma | " + " | ".join(columns) + " |")
    show("|---" * (len(columns) + 1) + "|")
    for sigma in SIGMAS:
        values = {name: [] for name in columns}
        for index, clean in enumerate(images):
            noisy = clean + sigma / 255 * np.random.default_rng(seed + index).standard_normal(clean.shape)
            tensor = torch.as_tensor(noisy, dtype=model.logits.dtype)
            raw = raw_global_sigmas(model, tensor)
            for estimator, value in raw.items():
                values[estimator].append(255 * apply_calibration(value, calibration_for(model, estimator)))
            values["auto (default)"].append(255 * estimate_global_noise(model, tensor)[0])
            values["estimate_sigma"].append(255 * estimate_sigma(noisy))
        cells = []
        for name in columns:
            error = np.asarray(values[name]) - sigma
            cells.append(f"{np.abs(error).mean():.2f} / {error.mean():+.2f}")
        show(f"| {sigma} | " + " | ".join(cells) + " |")


def figure4(model, images, seed, path: Path, show):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true_sigmas = np.linspace(0, 0.4, 21)
    model_sigmas = np.linspace(0, 0.5, 51)
    energy = np.zeros((len(true_sigmas), len(model_sigmas)))
    for index, clean in enumerate(images):
        for i, sigma in enumerate(true_sigmas):
            noisy = clean + sigma * np.random.default_rng(seed + index).standard_normal(clean.shape)
            histograms = response_histograms(model, torch.as_tensor(noisy, dtype=model.logits.dtype)[None, None])
            energy[i] += [mean_patch_energy(model, histograms, s) for s in model_sigmas]
    energy /= len(images)
    figure, axis = plt.subplots(figsize=(6, 4.5), dpi=120)
    shown = axis.imshow(energy.T, origin="lower", aspect="auto", cmap="viridis",
                        extent=(0, 255 * true_sigmas[-1], 0, 255 * model_sigmas[-1]),
                        vmax=np.percentile(energy, 90))
    axis.plot(255 * true_sigmas, 255 * model_sigmas[energy.argmin(1)], "w.-", label="argmin over t")
    axis.plot([0, 102], [0, 102], "r--", linewidth=0.8, label="sqrt(2t) = sigma")
    axis.set_xlabel("noise level sigma (0-255)")
    axis.set_ylabel("model sqrt(2t) (0-255)")
    axis.legend(loc="upper left")
    figure.colorbar(shown, label="mean -log f(patch, t)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    show()
    show(f"Fig. 4: `{path}` (mean over {len(images)} images).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure-images", type=int, default=8, help="images for Fig. 4")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--figure", type=Path, help="write Fig. 4 here (needs matplotlib)")
    parser.add_argument("--parts", default="global",
                        help="comma-separated: global (homoscedastic), figure (Fig. 4, with --figure); blind "
                             "denoising of heteroscedastic noise: benchmarks/blind.py")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    model = load_model(args.model)
    images = [read_image(path)[0] for path in find_images([args.data])]
    lines = [f"# Noise estimation ({date.today()})", "",
             f"`python benchmarks/noise.py {' '.join(argv if argv is not None else sys.argv[1:])}`: model "
             f"{args.model} (calibration: {'yes' if model.metadata.get('noise_calibration') else 'none'}), "
             f"{len(images)} images of {args.data.name}"
             + (f" (Fig. 4: the first {min(args.figure_images, len(images))})." if "figure" in parts else "."), ""]

    def show(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    started = time.perf_counter()
    if "global" in parts:
        homoscedastic(model, images, args.seed, show)
    if "figure" in parts and args.figure:
        figure4(model, images[: args.figure_images], args.seed, args.figure, show)
    show()
    show(f"{time.perf_counter() - started:.0f} s")
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
