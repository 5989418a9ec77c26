"""How the blind map's texture correction was chosen (``gmdm_cli.blind.texture_corrected``), on BSDS400 only.

    python benchmarks/tune_blind.py --images 12 --offset 100 --kinds const5,const25,ramp,sd0.01_0.0004

For every image and kind of noise (those of ``benchmarks/blind.py``), the PSNR gain of EB-PA over denoising at
the RMS sigma of the true levels, with: the true levels (oracle); the uncorrected local levels ("raw"); the
corrected ones for every texture ratio of ``--ratios`` without a floor (0.5 / 255), and at ``TEXTURE_RATIO``
for every floor of ``--floors`` (times the global level); and the noise-level function capped by the corrected
levels ("nlf capped") against the function capped at 1.2 times the raw levels (the rule before the correction).
One row per kind, the means over the images; results in ``benchmarks/results/blind.md``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from blind import KINDS, noise_levels
from gmdm_cli import blind
from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import denoise_array, psnr
from gmdm_cli.image_io import read_image
from gmdm_cli.noise import estimate_global_noise, image_sites
from gmdm_cli.sites import local_levels
from gmdm_cli.training import find_images, spread

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds400"


def candidates(model, noisy: np.ndarray, ratios, floors) -> dict[str, np.ndarray]:
    """Per-pixel levels of every variant for one noisy gray image."""
    tensor = torch.as_tensor(noisy, dtype=model.logits.dtype)
    sites = image_sites(model, tensor)
    quiet = local_levels(sites, blind.MAP_RADIUS)
    everything = blind.all_expert_levels(model, sites, quiet, max(ratios))
    constant = estimate_global_noise(model, tensor, sites=sites)[0]

    def pixels(levels: torch.Tensor) -> np.ndarray:
        return blind.pixel_levels(model, sites, levels).double().numpy()

    def corrected(floor: float, ratio: float = blind.TEXTURE_RATIO) -> np.ndarray:
        return pixels(blind.texture_corrected(quiet, everything, floor, ratio))

    variants = {"raw": pixels(quiet)}
    variants.update({f"ratio {ratio:g}": corrected(0.5 / 255, ratio) for ratio in ratios})
    variants.update({f"floor {floor:g}": corrected(floor * constant) for floor in floors})
    a, b = blind.fit_nlf(sites, quiet)[0]
    function = blind.nlf_levels(model, tensor, a, b).double().numpy()
    variants["nlf capped"] = np.minimum(function, corrected(blind.MAP_FLOOR * constant))
    variants["nlf before"] = np.minimum(function, 1.2 * variants["raw"])
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="7x7")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--offset", type=int, default=100)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--ratios", default="2,2.5,3,4")
    parser.add_argument("--floors", default="0.8,0.9,1.0")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    ratios, floors = ([float(v) for v in text.split(",")] for text in (args.ratios, args.floors))
    images = [read_image(path)[0] for path in spread(find_images([args.data])[args.offset:], args.images)]
    header = None
    for kind in args.kinds.split(","):
        gains = defaultdict(list)
        for clean in images:
            rng = np.random.default_rng(args.seed)
            truth = noise_levels(kind, clean, rng)
            noisy = clean + truth * rng.standard_normal(clean.shape)
            reference = psnr(denoise_array(model, noisy, float(np.sqrt(np.mean(truth**2))), "ebpa"), clean)
            for name, levels in {"oracle": truth, **candidates(model, noisy, ratios, floors)}.items():
                gains[name].append(psnr(denoise_array(model, noisy, levels, "ebpa"), clean) - reference)
        if header is None:
            header = list(gains)
            print("| noise | " + " | ".join(header) + " |")
            print("|---" * (len(header) + 1) + "|")
        print(f"| {kind} | " + " | ".join(f"{np.mean(gains[name]):+.2f}" for name in header) + " |", flush=True)


if __name__ == "__main__":
    main()
