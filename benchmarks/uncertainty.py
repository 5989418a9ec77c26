"""Calibration of EB-PA's posterior std (``gmdm denoise --uncertainty``) on BSD68.

    python benchmarks/uncertainty.py --markdown benchmarks/results/uncertainty.md \
        --figure benchmarks/results/uncertainty.png --example benchmarks/results/uncertainty-camera.png
    python benchmarks/uncertainty.py --raw --markdown benchmarks/results/uncertainty-raw.md

For every image (BSD68 by default, gray, [0, 1], Gaussian noise of each level from a generator seeded per image,
not clipped) EB-PA's estimate and predicted std (``gmdm_cli.denoisers.ebpa_std``, with the model's uncertainty
calibration when it has one, else the raw pooled variance); the pixels of all images are binned by predicted std
(deciles), and per bin the RMS predicted std is compared with the RMS actual error. Figure of merit: the mean over
the bins holding at least 1 % of the pixels of ``|log(actual / predicted)|`` (0: calibrated; 0.22: a factor 1.25);
also its largest value. ``--raw`` ignores the calibration. Timing: EB-PA alone and EB-PA with the std, median over
the images (``--threads``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.calibration import calibration_error
from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import ebpa, ebpa_std
from gmdm_cli.image_io import read_image, to_gray
from gmdm_cli.training import find_images, spread

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsd68"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=68)
    parser.add_argument("--sigmas", default="15,25,50")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--raw", action="store_true", help="leave out the model's uncertainty calibration")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--figure", help="also draw the calibration curves here (matplotlib)")
    parser.add_argument("--example", help="also draw noisy / denoised / predicted std / actual error of scikit-image's "
                                          "camera at sigma 25 here (matplotlib)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.raw:
        model.metadata.pop("uncertainty_calibration", None)
    paths = spread(find_images([args.data]), args.images)
    lines = [f"# EB-PA posterior std on {len(paths)} images of {args.data} ({args.model}"
             f"{', raw' if args.raw or 'uncertainty_calibration' not in model.metadata else ', calibrated'})", "",
             "| sigma | merit (mean abs log ratio) | largest | EB-PA s | EB-PA + std s | bins: predicted / actual (0-255) |",
             "|---|---|---|---|---|---|"]
    curves = {}
    for sigma in (float(s) for s in args.sigmas.split(",")):
        predicted, errors, seconds = [], [], []
        for index, path in enumerate(paths):
            clean = to_gray(read_image(path)[0])
            noisy = clean + sigma / 255 * np.random.default_rng(index).standard_normal(clean.shape)
            tensor = torch.tensor(noisy, dtype=torch.float32)
            with torch.no_grad():
                started = time.perf_counter()
                ebpa(model, tensor, sigma / 255)
                middle = time.perf_counter()
                estimate, std = ebpa_std(model, tensor, sigma / 255)
                seconds.append((middle - started, time.perf_counter() - middle))
            predicted.append(std.numpy().ravel())
            errors.append(estimate.numpy().ravel() - clean.ravel())
        merit, largest, table = calibration_error(np.concatenate(predicted), np.concatenate(errors))
        kept = [row for row in table if row[2] >= 0.01]
        logs = [abs(np.log(actual / expected)) for expected, actual, _ in kept]
        curves[sigma] = table
        alone, both = np.median(seconds, 0)
        bins = ", ".join(f"{255 * expected:.1f}/{255 * actual:.1f}" for expected, actual, _ in table)
        lines.append(f"| {sigma:g} | {np.mean(logs):.3f} | {np.max(logs):.3f} | {alone:.3f} | {both:.3f} | {bins} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.example:
        example(model, args.example)
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(4.5, 4), dpi=100)
        for sigma, table in curves.items():
            expected, actual, _ = np.array(table).T
            axis.loglog(255 * expected, 255 * actual, "o-", label=f"sigma {sigma:g}")
        low, high = axis.get_xlim()
        axis.plot([low, high], [low, high], "k--", linewidth=0.8, label="calibrated")
        axis.set_xlabel("predicted std (0-255, bin RMS)")
        axis.set_ylabel("actual RMS error (0-255)")
        axis.legend(fontsize=7)
        figure.savefig(args.figure, bbox_inches="tight")
    return 0


def example(model, path: str) -> None:
    """The README's figure: a noisy picture, EB-PA's estimate, its predicted std and its actual error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import data

    clean = data.camera()[96:352, 128:384] / 255.0
    noisy = clean + 25 / 255 * np.random.default_rng(0).standard_normal(clean.shape)
    with torch.no_grad():
        estimate, std = ebpa_std(model, torch.tensor(noisy, dtype=torch.float32), 25 / 255)
    error = np.abs(estimate.numpy() - clean)
    figure, axes = plt.subplots(1, 4, figsize=(12, 3.3), dpi=100)
    top = 255 * float(np.quantile(std.numpy(), 0.995))
    panels = [(noisy, "noisy (sigma 25)", "gray", (0, 1)), (estimate.numpy(), "EB-PA", "gray", (0, 1)),
              (255 * std.numpy(), "predicted std (0-255)", "viridis", (0, top)),
              (255 * error, "actual |error| (0-255)", "viridis", (0, top))]
    for axis, (image, title, colours, limits) in zip(axes, panels):
        shown = axis.imshow(image, cmap=colours, vmin=limits[0], vmax=limits[1])
        axis.set_title(title, fontsize=9)
        axis.set_axis_off()
        if colours == "viridis":
            figure.colorbar(shown, ax=axis, fraction=0.046)
    figure.savefig(path, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
