"""Calibration of EB-PA's posterior std (``gmdm denoise --uncertainty``) on BSD68.

    python benchmarks/uncertainty.py --markdown benchmarks/results/uncertainty.md \
        --figure benchmarks/results/uncertainty.png --example benchmarks/results/uncertainty-camera.png
    python benchmarks/uncertainty.py --raw --markdown benchmarks/results/uncertainty-raw.md
    python benchmarks/uncertainty.py --samples 16 --images 17 --markdown benchmarks/results/uncertainty-samples.md

For every image (BSD68 by default, gray, [0, 1], Gaussian noise of each level from a generator seeded per image,
not clipped) EB-PA's estimate and predicted std (``gmdm_cli.denoisers.ebpa_std``, with the model's uncertainty
calibration when it has one, else the raw pooled variance); the pixels of all images are binned by predicted std
(deciles), and per bin the RMS predicted std is compared with the RMS actual error. Figure of merit: the mean over
the bins holding at least 1 % of the pixels of ``|log(actual / predicted)|`` (0: calibrated; 0.22: a factor 1.25);
also its largest value. ``--raw`` ignores the calibration. Timing: EB-PA alone and EB-PA with the std, median over
the images (``--threads``).

``--samples N``: posterior samples instead (``gmdm_cli.sampling.posterior_samples``): per level, the PSNR of EB-PA,
of the mean of the N samples, of the mean of the first N/2 and of one sample; the posterior mean's PSNR that the
mean of the N extrapolates to (the mean of N has the squared error of the posterior mean plus the samples'
variance over N, which the single samples give); the RMS over the pixels of the samples' spread, of EB-PA's
predicted std and of its actual error; seconds per sample. ``--levels/--steps/--delta/--end`` set the annealing
(tuned with ``--data ../shared/data/bsds400 --crop 160``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.calibration import calibration_error
from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import ebpa, ebpa_std, psnr
from gmdm_cli.image_io import read_image, to_gray
from gmdm_cli.sampling import SAMPLE_DELTA, SAMPLE_END, SAMPLE_LEVELS, SAMPLE_STEPS, posterior_samples
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
    parser.add_argument("--samples", type=int, help="posterior samples per image instead (see above)")
    parser.add_argument("--levels", type=int, default=SAMPLE_LEVELS)
    parser.add_argument("--steps", type=int, default=SAMPLE_STEPS)
    parser.add_argument("--delta", type=float, default=SAMPLE_DELTA)
    parser.add_argument("--end", type=float, default=SAMPLE_END)
    parser.add_argument("--crop", type=int, help="a centre crop of this side of every image (tuning)")
    parser.add_argument("--example", help="also draw noisy / denoised / predicted std / actual error of scikit-image's "
                                          "camera at sigma 25 here (matplotlib)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.raw:
        model.metadata.pop("uncertainty_calibration", None)
    paths = spread(find_images([args.data]), args.images)
    if args.samples:
        text = "\n".join(samples(model, paths, args)) + "\n"
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
        return 0
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


def clean_image(path, crop: int | None) -> np.ndarray:
    """A gray image on [0, 1], or its centre crop of side ``crop``."""
    clean = to_gray(read_image(path)[0])
    if crop:
        top, left = (max((side - crop) // 2, 0) for side in clean.shape)
        clean = clean[top:top + crop, left:left + crop]
    return clean


def samples(model, paths, args) -> list[str]:
    """The lines of the ``--samples`` table."""
    count = args.samples
    lines = [f"# Posterior samples on {len(paths)} images of {args.data}{f' (centre {args.crop} crops)' if args.crop else ''} "
             f"({args.model}, {count} samples; {args.levels} levels x {args.steps} steps, delta {args.delta:g}, "
             f"end {args.end:g})", "",
             f"| sigma | EB-PA dB | mean of {count} | mean of {count // 2} | one sample | posterior mean (extrapolated) | "
             "spread RMS | predicted std RMS | EB-PA error RMS | s per sample |", "|---|---|---|---|---|---|---|---|---|---|"]
    for sigma in (float(s) for s in args.sigmas.split(",")):
        rows = []
        for index, path in enumerate(paths):
            clean = clean_image(path, args.crop)
            noisy = clean + sigma / 255 * np.random.default_rng(index).standard_normal(clean.shape)
            tensor = torch.tensor(noisy, dtype=torch.float32)
            with torch.no_grad():
                estimate, std = (part.double().numpy() for part in ebpa_std(model, tensor, sigma / 255))
            started = time.perf_counter()
            draws = posterior_samples(model, tensor, sigma / 255, count, index, args.levels, args.steps, args.delta,
                                      args.end).double().numpy()
            seconds = (time.perf_counter() - started) / count
            errors = [np.mean((np.clip(draw, 0, 1) - clean) ** 2) for draw in draws]
            mean_error = np.mean((np.clip(draws.mean(0), 0, 1) - clean) ** 2)
            variance = (np.mean(errors) - mean_error) / (1 - 1 / count)
            rows.append([psnr(estimate, clean), psnr(draws.mean(0), clean), psnr(draws[:count // 2].mean(0), clean),
                         np.mean([psnr(draw, clean) for draw in draws]),
                         10 * np.log10(1 / max(mean_error - variance / count, 1e-12)),
                         np.mean(draws.var(0, ddof=1)), np.mean(std**2), np.mean((estimate - clean) ** 2), seconds])
        mean = np.mean(rows, 0)
        lines.append(f"| {sigma:g} | {mean[0]:.2f} | {mean[1]:.2f} ({mean[1] - mean[0]:+.2f}) | {mean[2]:.2f} "
                     f"({mean[2] - mean[0]:+.2f}) | {mean[3]:.2f} | {mean[4]:.2f} ({mean[4] - mean[0]:+.2f}) | "
                     f"{255 * np.sqrt(mean[5]):.2f} | {255 * np.sqrt(mean[6]):.2f} | {255 * np.sqrt(mean[7]):.2f} | "
                     f"{mean[8]:.2f} |")
        print(lines[-1], flush=True)
    return lines


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
