"""Probes of the inpainting bar (issue 30: half of the pixels missing at random, >= 1.5 dB above
``inpaint_biharmonic``): is the shortfall the solver's or the 7x7 prior's? Every probe restores the same
BSDS400 crops (never BSD68) and prints its mean PSNR beside the shipped schedule's and biharmonic's:

* ``end``: the schedule ending at 1, 2 or 4 grey levels instead of 0.5 (the end of an annealing is where an
  MMSE-like smoothing would show);
* ``oracle``: the shipped schedule started from the clean image instead of biharmonic's fill (does the start
  matter?);
* ``map``: the result refined to the prior's MAP at a low level (L-BFGS on the image's patch energy, the
  missing pixels free);
* ``ensemble``: the mean of the restorations of the 2 or 8 flips and rotations of the image;
* ``kriging``: a prior step that knows the known pixels are exact: each patch's Gaussian posterior from its
  isotropic Tweedie moments (mean and covariance, Corollary 2.1) conditioned on its known pixels, the patch
  means averaged (as PLE/EPLL-style patch Wiener filters do);
* ``sampling``: posterior samples by annealed ancestral sampling with the known pixels replaced by the
  observation at each level (the mean of 8 estimates the posterior mean);
* ``15x15``: the larger shipped model with the same schedule.

``python benchmarks/inpainting_probes.py --images 8 --crop 160`` (``benchmarks/results/restore-tuning.md``).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.restoration import inpaint_biharmonic

from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import psnr, tweedie_average
from gmdm_cli.image_io import read_image, to_gray
from gmdm_cli.model import expert_curvature, expert_score, image_patch_energy, time_from_sigma
from gmdm_cli.restoration import SCHEDULES, Mask, restore_channel
from gmdm_cli.training import find_images, spread
from restore import degrade  # the benchmark's own mask (half of the pixels at random, seed + image index)

PROBES = ("end", "oracle", "map", "ensemble", "kriging", "sampling", "15x15")


class KnownStart(Mask):
    """A mask whose restoration starts from a given image (the oracle probe: the clean image)."""

    def __init__(self, known: torch.Tensor, start: torch.Tensor):
        super().__init__(known)
        self.image = start

    def start(self, y: torch.Tensor) -> torch.Tensor:
        return self.image.clone()


def shipped(model, y, known, schedule=SCHEDULES["mask"], operator=None):
    """``restore_channel`` as ``gmdm restore --mask`` runs it (no noise, so ``mu = 0``)."""
    return restore_channel(model, Mask(known) if operator is None else operator, y, 0.0, schedule)


def ensemble(model, y, known, count):
    results = []
    for index in range(count):
        turns, flip = index % 4, index // 4

        def forward(a):
            return torch.rot90(a.flip(0) if flip else a, turns)

        def back(a):
            a = torch.rot90(a, -turns)
            return a.flip(0) if flip else a

        results.append(back(shipped(model, forward(y), forward(known))))
    return torch.stack(results).mean(0)


def map_refine(model, x, known, level, iterations=100):
    """``x`` with its missing pixels moved to a minimum of the summed patch energies at ``level``."""
    t = time_from_sigma(level)
    missing = known == 0
    free = x[missing].clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([free], max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        image = x.clone()
        image[missing] = free
        energy = image_patch_energy(model, image[None, None], t).sum()
        energy.backward()
        return energy

    with torch.enable_grad():
        optimiser.step(closure)
    refined = x.clone()
    refined[missing] = free.detach()
    return refined


def kriging_step(model, x, known, level):
    """Every patch's Gaussian posterior at ``level`` (isotropic Tweedie moments in the filters' basis, the DC
    direction with the noise's variance) conditioned on its known pixels being exact; patch means averaged."""
    b = model.patch_size
    filters = model.filters.detach().double()
    norms = filters.norm(dim=1)
    basis = torch.cat([filters / norms[:, None], torch.full((1, b * b), 1.0 / b, dtype=torch.float64)])
    patches = F.unfold(x.double()[None, None], b)[0].T  # (n, a)
    masks = F.unfold(known.double()[None, None], b)[0].T
    t = time_from_sigma(level)
    responses = (patches @ filters.T).to(x.dtype).T[None]  # (1, J, n)
    noise = level**2 * norms**2
    score = expert_score(model, responses, t)[0].T.double()
    curvature = expert_curvature(model, responses, t)[0].T.double()
    means = torch.cat([(patches @ filters.T + noise * score) / norms, patches @ basis[-1:].T], 1) @ basis
    variances = torch.cat([(noise * (1 + noise * curvature)).clamp_min(1e-12) / norms**2,
                           torch.full((len(patches), 1), level**2, dtype=torch.float64)], 1)
    covariances = (basis.T[None] * variances[:, None, :]) @ basis
    system = masks[:, :, None] * covariances * masks[:, None, :] + torch.diag_embed(1 - masks)
    weights = torch.linalg.solve(system, (masks * (patches - means))[..., None])
    estimates = means + (covariances @ weights)[..., 0]
    shape = tuple(x.shape)
    summed = F.fold(estimates.T[None], shape, b)[0, 0] / F.fold(torch.ones_like(estimates).T[None], shape, b)[0, 0]
    return summed.to(x.dtype)


def kriging(model, y, known, levels):
    x = Mask(known).start(y)
    for level in levels:
        x = torch.where(known > 0, y, kriging_step(model, x, known, level))
    return x


def sampling_mean(model, y, known, levels, count, generator):
    """The mean of ``count`` annealed ancestral samples with the known pixels replaced at every level."""
    x = Mask(known).start(y)[None, None].repeat(count, 1, 1, 1)
    x = x + levels[0] * torch.randn(x.shape, generator=generator)
    inside = (known > 0)[None, None].expand_as(x)
    for index, level in enumerate(levels):
        denoised = x + tweedie_average(model, x, time_from_sigma(level))
        if index + 1 == len(levels):
            return torch.where(inside[0, 0], y, denoised.mean((0, 1)))
        following = levels[index + 1]
        ratio = following**2 / level**2
        x = ratio * x + (1 - ratio) * denoised + following * math.sqrt(1 - ratio) * torch.randn(
            x.shape, generator=generator)
        x = torch.where(inside, y + following * torch.randn(x.shape, generator=generator), x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/bsds400"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probes", default=",".join(PROBES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("7x7")
    schedule = SCHEDULES["mask"]
    probes = args.probes.split(",")
    totals: dict[str, list[float]] = {}
    generator = torch.Generator().manual_seed(args.seed)
    for index, path in enumerate(spread(find_images([args.data]), args.images)):
        clean, observed, forward = degrade("mask", to_gray(read_image(path)[0])[:args.crop, :args.crop],
                                           np.random.default_rng(args.seed + index))
        y = torch.as_tensor(observed, dtype=torch.float32)
        known = torch.as_tensor(forward["mask"], dtype=torch.float32)
        runs = {"biharmonic": lambda: inpaint_biharmonic(observed, ~forward["mask"]),
                "shipped": lambda: shipped(model, y, known)}
        if "end" in probes:
            for end in (1, 2, 4):
                runs[f"end {end}/255"] = lambda end=end: shipped(model, y, known, replace(schedule, end=end / 255))
        if "oracle" in probes:
            runs["oracle start"] = lambda: shipped(model, y, known, operator=KnownStart(
                known, torch.as_tensor(clean, dtype=torch.float32)))
        if "map" in probes:
            for level in (1, 3):
                runs[f"map at {level}/255"] = lambda level=level: map_refine(model, shipped(model, y, known),
                                                                             known, level / 255)
        if "ensemble" in probes:
            for count in (2, 8):
                runs[f"ensemble of {count}"] = lambda count=count: ensemble(model, y, known, count)
        if "kriging" in probes:
            for steps in (10, 20):
                runs[f"kriging {steps} steps"] = lambda steps=steps: kriging(model, y, known,
                                                                             np.geomspace(20 / 255, 1 / 255, steps))
        if "sampling" in probes:
            runs["sampling, mean of 8"] = lambda: sampling_mean(model, y, known, np.geomspace(0.2, 0.5 / 255, 40), 8,
                                                                generator)
        if "15x15" in probes:
            large = load_model("15x15")
            runs["15x15 model"] = lambda: shipped(large, y, known)
        for name, run in runs.items():
            started = time.perf_counter()
            with torch.no_grad():
                estimate = np.asarray(torch.as_tensor(run()).double())
            totals.setdefault(name, []).append(psnr(estimate, clean))
            totals.setdefault(f"{name} s", []).append(time.perf_counter() - started)
        print(f"{path.name}: " + ", ".join(f"{name} {values[-1]:.2f}" for name, values in totals.items()), flush=True)
    print("\n| method | PSNR dB | - shipped | s per crop |\n|---|---|---|---|")
    reference = np.mean(totals["shipped"])
    for name, values in totals.items():
        if not name.endswith(" s"):
            print(f"| {name} | {np.mean(values):.2f} | {np.mean(values) - reference:+.2f} | {np.mean(totals[name + ' s']):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
