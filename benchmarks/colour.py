"""Colour denoising: decorrelated opponent channels against R, G, B separately.

    python benchmarks/colour.py --markdown benchmarks/results/colour.md

The colour pictures that ship with scikit-image (astronaut, chelsea, coffee, rocket,
immunohistochemistry), with the project's protocol: [0, 1] scale, independent Gaussian noise of
sigma/255 in every channel from a seeded generator, not clipped; PSNR over all channels of the estimate
clipped to [0, 1], mean over the set.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np
from skimage import data

from gmdm_cli.checkpoint import load_model
from gmdm_cli.colour import COLOUR_SPACES
from gmdm_cli.denoisers import METHODS, denoise_array, psnr

IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--method", default="ebpa", choices=METHODS)
    parser.add_argument("--sigmas", default="15,25,50", help="comma-separated, 0-255 scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    model = load_model(args.model)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    images = [getattr(data, name)() / 255.0 for name in IMAGES]
    lines = [f"# Colour strategies ({date.today()})", "",
             f"`python benchmarks/colour.py {' '.join(argv if argv is not None else sys.argv[1:])}`: {args.method} "
             f"{args.model} on scikit-image's {', '.join(IMAGES)}; mean PSNR (dB) over the set.", "",
             "| sigma | noisy | " + " | ".join(COLOUR_SPACES) + " |", "|---|---|" + "---|" * len(COLOUR_SPACES)]
    for sigma in sigmas:
        scores = {space: [] for space in COLOUR_SPACES}
        noisy_scores = []
        for index, clean in enumerate(images):
            noisy = clean + sigma / 255 * np.random.default_rng(args.seed + index).standard_normal(clean.shape)
            noisy_scores.append(psnr(noisy, clean))
            for space in COLOUR_SPACES:
                scores[space].append(psnr(denoise_array(model, noisy, sigma / 255, args.method, colour=space), clean))
        line = f"| {sigma:g} | {np.mean(noisy_scores):.2f} | " + " | ".join(
            f"{np.mean(scores[space]):.2f}" for space in COLOUR_SPACES) + " |"
        lines.append(line)
        print(line, flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
