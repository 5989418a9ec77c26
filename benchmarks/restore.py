"""Deblurring, inpainting and upscaling (``gmdm restore``) against what a user would otherwise reach for.

    python benchmarks/restore.py --markdown benchmarks/results/restore.md            # BSD68, 7x7
    python benchmarks/restore.py --tune --data ../shared/data/bsds400 --images 8 --crop 240   # tuning
    python benchmarks/restore.py --variants --images 17 --markdown benchmarks/results/restore-variants.md

Every image (BSD68 by default, gray, [0, 1]) is degraded by each task, seeded per image:

* ``blur``: a 17x17 Gaussian kernel of std 1.6 (``scipy.ndimage.convolve``, mirrored borders), then Gaussian
  noise of std 2/255 (not clipped); against scikit-image's ``restoration.wiener`` (balance ``--balance``),
  ``unsupervised_wiener`` and ``richardson_lucy`` (``--rl-iterations``), each given the true kernel;
* ``mask``: half of the pixels missing at random (set to 0), no noise; against ``inpaint_biharmonic``;
* ``scale``: each 2x2 block averaged (box downsampling; odd last rows/columns dropped), no noise; against
  bicubic interpolation, ``skimage.transform.resize(order=3)``.

PSNR over the whole image with the estimate clipped to [0, 1], mean over the set; time per image (``--threads``).
``--tune``: every schedule of a small grid per task (and the baselines' parameters), on crops (``--crop``) of
BSDS400 images, the way the defaults of ``gmdm_cli.restoration.SCHEDULES`` and the baselines' parameters here
were chosen.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import psnr
from gmdm_cli.image_io import read_image, to_gray
from gmdm_cli.restoration import SCHEDULES, Schedule, gaussian_kernel, restore_array
from gmdm_cli.training import find_images, spread

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsd68"
TASKS = ("blur", "mask", "scale")
BLUR_STD, BLUR_SIZE, BLUR_NOISE = 1.6, 17, 2 / 255
BALANCE, RL_ITERATIONS = 0.03, 2  # the baselines' best on BSDS400 crops (--tune)


VARIANTS = ("blur:1.0:2", "blur:2.5:2", "blur:1.6:5", "motion:15:30:2", "mask:0.3", "mask:0.7", "scale:3:box",
            "scale:2:bicubic")
"""``--variants``: neighbours of the tuned configurations (blur std and noise, a motion blur, the share of missing
pixels, the scale and the downsampler), with the same schedules."""


def degrade(task: str, clean: np.ndarray, rng: np.random.Generator):
    """``(clean, observed, forward model keywords for restore_array)`` of ``task``: ``blur``, ``mask``, ``scale`` (the
    issue's configurations), or a variant ``blur:STD:NOISE``, ``motion:LENGTH:ANGLE:NOISE`` (noise 0-255),
    ``mask:MISSING`` (a fraction), ``scale:FACTOR:DOWNSAMPLER``."""
    from scipy.ndimage import convolve

    from gmdm_cli.restoration import downsampling_matrix, motion_kernel

    kind, *values = task.split(":")
    if kind in ("blur", "motion"):
        if kind == "motion":
            kernel, noise = motion_kernel(float(values[0]), float(values[1])), float(values[2]) / 255
        else:
            std, noise = (float(values[0]), float(values[1]) / 255) if values else (BLUR_STD, BLUR_NOISE)
            kernel = gaussian_kernel(std, BLUR_SIZE if not values else None)
        observed = convolve(clean, kernel, mode="reflect") + noise * rng.standard_normal(clean.shape)
        return clean, observed, {"kernel": kernel, "sigma": noise}
    if kind == "mask":
        known = rng.random(clean.shape) >= (float(values[0]) if values else 0.5)
        return clean, clean * known, {"mask": known, "sigma": 0.0}
    factor, downsampler = (int(values[0]), values[1]) if values else (2, "box")
    height, width = clean.shape[0] // factor, clean.shape[1] // factor
    clean = clean[:factor * height, :factor * width]
    rows, columns = (downsampling_matrix(n, factor, downsampler).numpy() for n in clean.shape)
    return clean, rows @ clean @ columns.T, {"scale": factor, "downsampler": downsampler, "sigma": 0.0}


def baselines(task: str, observed: np.ndarray, forward: dict, clean: np.ndarray, balance: float = BALANCE,
              rl_iterations: int = RL_ITERATIONS) -> dict[str, tuple[float, float]]:
    """``{name: (PSNR, seconds)}`` of scikit-image's methods for ``task``; for a variant (``":"`` in ``task``) the
    deconvolutions' parameters are those of the tuning grid that do best on this very image (an advantage the
    baselines get, not gmdm)."""
    from skimage import restoration, transform

    runs = {}
    if "kernel" in forward:
        kernel = forward["kernel"]
        balances, counts = ((0.003, 0.01, 0.03, 0.1), (2, 5, 10, 20)) if ":" in task else ((balance,), (rl_iterations,))
        for value in balances:
            runs[f"wiener (balance {value:g})"] = lambda value=value: restoration.wiener(observed, kernel, value)
        runs["unsupervised_wiener"] = lambda: restoration.unsupervised_wiener(observed, kernel, rng=0)[0]
        for value in counts:
            runs[f"richardson_lucy ({value} it.)"] = lambda value=value: restoration.richardson_lucy(
                observed, kernel, value, clip=False)
    elif "mask" in forward:
        runs["inpaint_biharmonic"] = lambda: restoration.inpaint_biharmonic(observed, ~forward["mask"])
    else:
        runs["bicubic (resize, order 3)"] = lambda: transform.resize(observed, clean.shape, order=3)
    results = {}
    for name, run in runs.items():
        started = time.perf_counter()
        estimate = run()
        results[name] = (psnr(estimate, clean), time.perf_counter() - started)
    if ":" in task and "kernel" in forward:  # per image, the best of each family
        for family in ("wiener", "richardson_lucy"):
            best = max((value for name, value in results.items() if name.startswith(family)), key=lambda v: v[0])
            results = {name: value for name, value in results.items() if not name.startswith(family)}
            results[f"{family} (best parameter per image)"] = best
    return results


def images(args) -> list[np.ndarray]:
    paths = spread(find_images([args.data]), args.images)
    loaded = [to_gray(read_image(path)[0]) for path in paths]
    if args.crop:
        loaded = [image[:args.crop, :args.crop] for image in loaded]
    return loaded


def evaluate(model, task: str, cleans, schedule: Schedule | None, seed: int, with_baselines: bool = True):
    """Mean ``{name: (PSNR, seconds)}`` over the images for gmdm (with ``schedule``) and the baselines."""
    totals: dict[str, list] = {}
    for index, image in enumerate(cleans):
        clean, observed, forward = degrade(task, image, np.random.default_rng(seed + index))
        started = time.perf_counter()
        estimate = restore_array(model, observed, schedule=schedule, **forward)
        totals.setdefault("gmdm", []).append((psnr(estimate, clean), time.perf_counter() - started))
        if with_baselines:
            for name, value in baselines(task, observed, forward, clean).items():
                totals.setdefault(name, []).append(value)
    return {name: tuple(np.mean(values, 0)) for name, values in totals.items()}


def tune_weighting(model, cleans, seed: int, tasks, powers) -> list[str]:
    """The tuning table of the prior step's precision weighting: each task's default schedule with every power."""
    from dataclasses import replace

    lines = ["### precision weighting of the prior step (each task's default schedule)", "",
             "| task | power q | PSNR | s |", "|---|---|---|---|"]
    for task in tasks:
        for power in powers:
            schedule = replace(SCHEDULES[task], weighting=power)
            value, seconds = evaluate(model, task, cleans, schedule, seed, with_baselines=False)["gmdm"]
            lines.append(f"| {task} | {power:g} | {value:.2f} | {seconds:.2f} |")
            print(lines[-1], flush=True)
    return lines + [""]


def tune(model, cleans, seed: int, tasks) -> list[str]:
    """The tuning tables: gmdm's schedules per task, and the baselines' parameters for deblurring."""
    from skimage import restoration

    lines = []
    grids = {"blur": itertools.product((16, 24), (0.05, 0.1), (1.0, 2.0, 4.0), ("admm", "hqs")),
             "mask": itertools.product((24, 48), (0.1, 0.2), (1.0,), ("admm", "hqs")),
             "scale": itertools.product((24, 48), (0.05, 0.1), (1.0,), ("admm", "hqs"))}
    for task, grid in grids.items():
        if task not in tasks:
            continue
        lines += [f"### {task}", "", "| iterations | start (0-255) | weight | solver | PSNR | s |", "|---|---|---|---|---|---|"]
        default = SCHEDULES[task]
        for iterations, start, weight, solver in grid:
            schedule = Schedule(iterations, start, default.end, weight, solver, default.weighting)
            value, seconds = evaluate(model, task, cleans, schedule, seed, with_baselines=False)["gmdm"]
            lines.append(f"| {iterations} | {255 * start:g} | {weight:g} | {solver} | {value:.2f} | {seconds:.2f} |")
            print(lines[-1], flush=True)
        lines.append("")
    if "blur" not in tasks:
        return lines
    lines += ["### scikit-image deconvolution parameters (blur)", "", "| method | parameter | PSNR |", "|---|---|---|"]
    for balance in (0.001, 0.003, 0.01, 0.03, 0.1):
        values = [psnr(restoration.wiener(observed, forward["kernel"], balance), clean)
                  for clean, observed, forward in (degrade("blur", image, np.random.default_rng(seed + index))
                                                   for index, image in enumerate(cleans))]
        lines.append(f"| wiener | balance {balance:g} | {np.mean(values):.2f} |")
    for iterations in (2, 3, 5, 10, 20):
        values = [psnr(restoration.richardson_lucy(observed, forward["kernel"], iterations, clip=False), clean)
                  for clean, observed, forward in (degrade("blur", image, np.random.default_rng(seed + index))
                                                   for index, image in enumerate(cleans))]
        lines.append(f"| richardson_lucy | {iterations} iterations | {np.mean(values):.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=68)
    parser.add_argument("--crop", type=int, help="the top-left crop of this side of every image")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--weightings", help="with --tune: only the prior step's precision weighting, these powers")
    parser.add_argument("--variants", action="store_true", help="the neighbours of VARIANTS instead of --tasks")
    parser.add_argument("--markdown", help="also write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    cleans = images(args)
    head = (f"# Restoration on {len(cleans)} images of {args.data}{f' ({args.crop} crops)' if args.crop else ''}, "
            f"{args.model} model, {args.threads} threads")
    if args.tune and args.weightings:
        powers = [float(power) for power in args.weightings.split(",")]
        lines = [head + ": tuning", ""] + tune_weighting(model, cleans, args.seed, args.tasks.split(","), powers)
    elif args.tune:
        lines = [head + ": tuning", ""] + tune(model, cleans, args.seed, args.tasks.split(","))
    else:
        lines = [head, "", "| task | method | PSNR dB | gmdm - it | s per image |", "|---|---|---|---|---|"]
        for task in VARIANTS if args.variants else args.tasks.split(","):
            results = evaluate(model, task, cleans, None, args.seed)
            ours = results["gmdm"][0]
            for name, (value, seconds) in results.items():
                lines.append(f"| {task} | {name} | {value:.2f} | {'' if name == 'gmdm' else f'{ours - value:+.2f}'} | "
                             f"{seconds:.2f} |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
