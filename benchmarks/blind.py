"""Blind denoising on every kind of noise (``gmdm denoise --blind``), against one global sigma and the true map.

    python benchmarks/blind.py --methods ebpa --markdown benchmarks/results/blind.md
    python benchmarks/blind.py --methods hqs --images 17 --markdown benchmarks/results/blind-hqs.md
    python benchmarks/blind.py --data ../shared/data/bsds400 --images 8 --offset 11 --jsonl tune.jsonl  # tuning

For every image (BSD68 by default, [0, 1], noise from a generator seeded per image and kind, not clipped) and
every kind of noise in ``KINDS`` (constant; checkerboards of 0.1 / 0.2 from 8- to 128-pixel squares; a
horizontal ramp 0.02 -> 0.2; a smooth random field; signal-dependent sigma^2 = a x + b with x the clean
intensity; a mixture of a ramp and signal-dependent noise), the PSNR of the method with:

* the single RMS sigma of the true map (what a user who knows "the noise level" would give);
* the blind estimate (``--noise-model auto``: the noise model chosen, its per-pixel levels);
* the true map (the oracle);

and the RMSE of the blind levels against the true map (0-255). The column "share" is the part of the oracle's
margin over the RMS sigma that blind recovers (blank where the margin is below 0.05 dB); the summary line, the
mean gain over the non-constant kinds against the oracle's mean margin. With ``--jsonl`` every record (with the gains of the
noise models and what every forced model gives) is written for tuning (``gmdm_cli.blind.NEEDED_GAINS``).

``--clipped``: the global estimate on files clipped to [0, 1] and rounded to 8 bits (constant noise of sigma
5-50), against scikit-image's ``estimate_sigma``: mean absolute error (0-255). ``--clipped-sure``: on the same
files, what SURE's level (``--sure``, blind's default) gains over blind at the estimate.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

import gmdm_cli
from gmdm_cli.blind import estimate_blind
from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import denoise_array, psnr
from gmdm_cli.image_io import read_image
from gmdm_cli.noise import estimate_noise
from gmdm_cli.sure import sure_levels
from gmdm_cli.training import find_images, spread

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsd68"
KINDS = ("const5", "const15", "const25", "const50", "checker8", "checker16", "checker32", "checker64", "checker128",
         "ramp", "smooth", "sd0.01_0.0004", "sd0.004_0.0001", "sd0.02_0.0001", "sd0.002_0.0004", "mix")
CLIPPED_SIGMAS = (5, 10, 15, 25, 50)


def noise_levels(kind: str, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The true per-pixel noise level of ``kind`` for ``clean`` ([0, 1] scale)."""
    height, width = clean.shape
    rows, columns = np.mgrid[0:height, 0:width]
    if kind.startswith("const"):
        return np.full(clean.shape, float(kind[5:]) / 255)
    if kind.startswith("checker"):
        size = int(kind[7:])
        return np.where((rows // size + columns // size) % 2 == 0, 0.1, 0.2)
    if kind == "ramp":
        return 0.02 + 0.18 * columns / (width - 1)
    if kind == "smooth":  # a Gaussian random field, correlation length ~40 pixels, between 0.03 and 0.2
        from skimage.filters import gaussian

        field = gaussian(rng.standard_normal((height, width)), 40, mode="wrap")
        return 0.03 + 0.17 * (field - field.min()) / (field.max() - field.min())
    if kind.startswith("sd"):  # sigma^2 = a x + b (Poisson-Gaussian)
        a, b = (float(value) for value in kind[2:].split("_"))
        return np.sqrt(a * clean + b)
    if kind == "mix":
        return np.sqrt(0.005 * clean + (0.02 + 0.1 * columns / (width - 1)) ** 2)
    raise ValueError(f"unknown kind '{kind}'")


def measure(model, clean: np.ndarray, kind: str, seed: int, method: str, forced: bool) -> dict:
    rng = np.random.default_rng(seed)
    truth = noise_levels(kind, clean, rng)
    noisy = clean + truth * rng.standard_normal(clean.shape)
    rms = float(np.sqrt(np.mean(truth**2)))
    started = time.perf_counter()
    done = gmdm_cli.denoise(noisy, method=method, model=model, blind=True, return_noise=True)
    blind_seconds = time.perf_counter() - started
    estimate, blind = done.estimates[0], done.image
    started = time.perf_counter()
    at_rms = denoise_array(model, noisy, rms, method)
    sigma_seconds = time.perf_counter() - started
    record = {"kind": kind, "rms": psnr(at_rms, clean), "blind": psnr(blind, clean),
              "oracle": psnr(denoise_array(model, noisy, truth, method), clean), "chosen": estimate.model,
              "sure_level": float(done.levels) if done.levels is not None and np.ndim(done.levels) == 0 else None,
              "map_rmse": 255 * float(np.sqrt(np.mean((estimate.sigma_map - truth) ** 2))),
              "gains": estimate.gains, "sigma": estimate.sigma, "nlf": estimate.nlf, "typical": estimate.typical,
              "seconds": {"blind": blind_seconds, "sigma": sigma_seconds}}
    if method == "ebpa":  # what a user who knows the RMS sigma gets with --sure
        record["rms_sure"] = psnr(denoise_array(model, noisy, sure_levels(model, noisy, rms), method), clean)
    if forced:  # what every model gives, for tuning the choice
        for name in ("constant", "nlf", "map"):
            levels = estimate.sigma_map if name == estimate.model else estimate_blind(model, noisy, name,
                                                                                      estimate.sigma).sigma_map
            record[f"psnr_{name}"] = psnr(denoise_array(model, noisy, levels, method), clean)
            record[f"median_{name}"] = float(np.median(levels))
    return record


def table(records: list[dict], method: str) -> list[str]:
    with_sure = all("rms_sure" in r for r in records)
    lines = [f"| noise ({method}) | RMS sigma | blind | true map | blind - RMS | oracle - RMS | share | map RMSE "
             f"| chosen |{' RMS sigma, --sure |' if with_sure else ''}",
             f"|---|---|---|---|---|---|---|---|---|{'---|' if with_sure else ''}"]
    by_kind = defaultdict(list)
    for record in records:
        by_kind[record["kind"]].append(record)
    gains, margins = [], []
    for kind, group in by_kind.items():
        mean = {key: float(np.mean([r[key] for r in group])) for key in ("rms", "blind", "oracle", "map_rmse")}
        gain, margin = mean["blind"] - mean["rms"], mean["oracle"] - mean["rms"]
        share = gain / margin if margin > 0.05 else float("nan")
        if not kind.startswith("const"):
            gains.append(gain)
            margins.append(margin)
        chosen = ", ".join(f"{name} {count}" for name, count in Counter(r["chosen"] for r in group).most_common())
        lines.append(f"| {kind} | {mean['rms']:.2f} | {mean['blind']:.2f} | {mean['oracle']:.2f} | {gain:+.2f} | "
                     f"{margin:+.2f} | {'' if np.isnan(share) else f'{100 * share:.0f} %'} | {mean['map_rmse']:.2f} "
                     f"| {chosen} |" + (f" {np.mean([r['rms_sure'] for r in group]):.2f} |" if with_sure else ""))
    lines.append("")
    if margins:
        lines.append(f"Over the {len(margins)} non-constant kinds blind gains {np.mean(gains):+.3f} dB over the RMS sigma on "
                     f"average, the oracle {np.mean(margins):+.3f} dB: {100 * np.mean(gains) / np.mean(margins):.0f} % "
                     f"of its margin; worst kind {min(gains):+.2f} dB.")
    seconds = np.array([[r["seconds"]["blind"], r["seconds"]["sigma"]] for r in records])
    lines.append(f"Time per image: blind (estimate and denoise) {seconds[:, 0].mean():.2f} s, at one sigma "
                 f"{seconds[:, 1].mean():.2f} s (ratio {seconds[:, 0].mean() / seconds[:, 1].mean():.1f}).")
    return lines


def _eight_bit(clean: np.ndarray, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``clean`` with seeded noise of level ``sigma`` (0-255), as it is and clipped to [0, 1] and rounded to 8 bits."""
    noisy = clean + sigma / 255 * np.random.default_rng(seed).standard_normal(clean.shape)
    return noisy, np.round(255 * np.clip(noisy, 0, 1)) / 255


def clipped(model, images: list[np.ndarray], seed: int) -> list[str]:
    from skimage.restoration import estimate_sigma

    lines = ["| sigma | gmdm, clipped 8-bit | estimate_sigma, clipped 8-bit | gmdm, unclipped |", "|---|---|---|---|"]
    for sigma in CLIPPED_SIGMAS:
        errors = defaultdict(list)
        for index, clean in enumerate(images):
            noisy, eight_bit = _eight_bit(clean, sigma, seed + index)
            errors["clipped"].append(abs(255 * estimate_noise(model, eight_bit)[0] - sigma))
            errors["skimage"].append(abs(255 * float(estimate_sigma(eight_bit)) - sigma))
            errors["unclipped"].append(abs(255 * estimate_noise(model, noisy)[0] - sigma))
        lines.append(f"| {sigma} | {np.mean(errors['clipped']):.2f} | {np.mean(errors['skimage']):.2f} | "
                     f"{np.mean(errors['unclipped']):.2f} |")
    return lines


def clipped_sure(model, images: list[np.ndarray], seed: int) -> list[str]:
    """Blind EB-PA with SURE against without it on clipped 8-bit files (constant noise added, clipped, rounded):
    PSNR gain, mean and range over the images."""
    lines = ["| sigma | blind with SURE - without, clipped 8-bit (dB) | worst | best |", "|---|---|---|---|"]
    for sigma in CLIPPED_SIGMAS:
        gains = []
        for index, clean in enumerate(images):
            eight_bit = _eight_bit(clean, sigma, seed + index)[1]
            gains.append(psnr(gmdm_cli.denoise(eight_bit, blind=True, model=model), clean)
                         - psnr(gmdm_cli.denoise(eight_bit, blind=True, model=model, sure=False), clean))
        lines.append(f"| {sigma} | {np.mean(gains):+.3f} | {min(gains):+.3f} | {max(gains):+.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=68, help="this many images, spread over the folder")
    parser.add_argument("--offset", type=int, default=0, help="start the spread at this image (tuning sets)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--methods", default="ebpa")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forced", action="store_true", help="also denoise with every noise model (tuning)")
    parser.add_argument("--clipped", action="store_true", help="the clipped 8-bit global estimates table")
    parser.add_argument("--clipped-sure", action="store_true", help="SURE's gain on clipped 8-bit files")
    parser.add_argument("--jsonl", type=Path, help="append every record here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    paths = spread(find_images([args.data])[args.offset:], args.images)
    images = [read_image(path)[0].astype(np.float64) for path in paths]
    lines = [f"Data: {len(images)} images of {args.data.name}; model {args.model}; seed {args.seed}.", ""]
    for method in args.methods.split(","):
        records = []
        for kind_index, kind in enumerate(args.kinds.split(",")):
            for index, clean in enumerate(images):
                record = measure(model, clean, kind, args.seed + 1000 * kind_index + index, method, args.forced)
                record.update(image=paths[index].name, method=method)
                records.append(record)
                if args.jsonl:
                    with open(args.jsonl, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
            print(table([r for r in records if r["kind"] == kind], method)[2], flush=True)
        lines += table(records, method) + [""]
    if args.clipped:
        lines += clipped(model, images, args.seed)
    if args.clipped_sure:
        lines += [""] + clipped_sure(model, images, args.seed)
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
