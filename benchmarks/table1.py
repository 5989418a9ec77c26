"""Table 1 of the paper on BSD68 with the project's fixed protocol.

Protocol (../shared/data/README.md): images / 255 in [0, 1]; noisy = clean + sigma/255 * N(0, 1)
from a generator seeded per image (seed + image index); the noisy image is neither clipped nor
quantised; PSNR = 10 log10(1 / MSE) of the estimate clipped to [0, 1], averaged over the set.

    python benchmarks/table1.py --model 7x7 --method ebpa --markdown benchmarks/results/ebpa-7x7.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import BOUNDARIES, METHODS, denoise_array, psnr
from gmdm_cli.image_io import read_image
from gmdm_cli.sure import sure_levels
from gmdm_cli.training import find_images

# Table 1 of Zach et al. (2023): PSNR in dB on BSD68.
PAPER = {
    ("ebpa", 7): {15: 30.00, 25: 27.47, 50: 24.61, 100: 22.14},
    ("ebpa", 15): {15: 30.34, 25: 27.81, 50: 24.96, 100: 22.74},
    ("hqs", 7): {15: 30.37, 25: 28.13, 50: 25.32, 100: 23.07},
    ("hqs", 15): {15: 30.69, 25: 28.39, 50: 25.50, 100: 23.12},
}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsd68"


def evaluate(model, method: str, images: list[np.ndarray], sigma: float, seed: int,
             boundary: str = "valid", sure: bool = False) -> tuple[float, float]:
    """Mean PSNR of the noisy images and of their estimates at ``sigma`` (0-255 scale; with ``sure``, EB-PA at
    each image's level of least SURE, :func:`gmdm_cli.sure.sure_levels`)."""
    noisy_psnr, denoised_psnr = [], []
    for index, clean in enumerate(images):
        rng = np.random.default_rng(seed + index)
        noisy = clean + sigma / 255 * rng.standard_normal(clean.shape)
        noisy_psnr.append(psnr(noisy, clean))
        level = sure_levels(model, noisy, sigma / 255, method) if sure else sigma / 255
        denoised_psnr.append(psnr(denoise_array(model, noisy, level, method, boundary), clean))
    return float(np.mean(noisy_psnr)), float(np.mean(denoised_psnr))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7x7", help="built-in model name or checkpoint path")
    parser.add_argument("--method", default="ebpa", choices=METHODS)
    parser.add_argument("--boundary", default="valid", choices=BOUNDARIES)
    parser.add_argument("--sigmas", default="15,25,50,100", help="comma-separated, 0-255 scale")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of clean test images")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--sure", action="store_true", help="EB-PA at each image's level of least SURE (--sure)")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    metadata = model.metadata
    paths = find_images([args.data])[: args.limit]
    images = [read_image(path)[0] for path in paths]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    size = getattr(model, "patch_size", None)  # None: a band (conv) model, which the paper did not evaluate
    kind = f"{size}x{size}" if size else f"conv {model.bands}x{model.bands} bands"
    paper = PAPER.get((args.method, size), {})

    rows = []
    started = time.perf_counter()
    for sigma in sigmas:
        noisy, denoised = evaluate(model, args.method, images, sigma, args.seed, args.boundary, args.sure)
        reference = paper.get(int(sigma)) if sigma == int(sigma) else None
        rows.append((sigma, noisy, denoised, reference))
        print(f"sigma {sigma:g}: noisy {noisy:.2f} dB, {args.method} {denoised:.2f} dB"
              + (f", paper {reference:.2f} dB ({denoised - reference:+.2f})" if reference else ""), flush=True)
    seconds = time.perf_counter() - started

    lines = [
        f"{args.method.upper()}{' + SURE level' if args.sure else ''} {kind} ({args.boundary} boundary) on {args.data.name} "
        f"({len(images)} images), model {args.model} ({metadata.get('steps', '?')} training steps"
        + (f" from {metadata['initialised_from']}" if "initialised_from" in metadata else "") + ")",
        "",
        "| sigma | noisy PSNR | GMDM (this) | paper Table 1 | difference |",
        "|---|---|---|---|---|",
    ]
    for sigma, noisy, denoised, reference in rows:
        ref = f"{reference:.2f}" if reference else "-"
        diff = f"{denoised - reference:+.2f}" if reference else "-"
        lines.append(f"| {sigma:g} | {noisy:.2f} | {denoised:.2f} | {ref} | {diff} |")
    lines += ["", f"Command: `python benchmarks/table1.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
              f"Date: {date.today().isoformat()}; machine: {platform.machine()}, {torch.get_num_threads()} "
              f"torch threads, device {args.device}, torch {torch.__version__}; {seconds:.0f} s."]
    table = "\n".join(lines)
    print()
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
