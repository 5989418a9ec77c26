"""Does weighting the patch estimates of EB-PA by their posterior precision beat the plain average?

EB-PA averages the Tweedie estimates of all patches covering a pixel with equal weights. Each patch's
posterior is known in closed form (Corollary 2.1: the responses ``<k_j, p>`` are independent 1-D mixtures),
so each estimate comes with its posterior variance; this script compares the plain average with averages
weighted by ``trace(Cov)^-q`` (one weight per patch) and by each pixel's own variance ``^-q``, on centre crops
of training images (never BSD68). The patch matrix is formed (``unfold``), so keep the crops small.

For a response ``z`` with noise variance ``s = 2t ||k||^2`` and components ``N(mu_l, sigma_0^2)`` at t = 0, the
clean response has posterior variance ``sigma_0^2 s / v + (s / v)^2 Var_gamma(mu)``, ``v = sigma_0^2 + s``; the
patch's DC direction, which the experts do not see, keeps its noise variance ``2t``.

    python benchmarks/aggregation.py --model 7x7 --images 16 --crop 128 --powers 1,2,3,4
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import psnr
from gmdm_cli.model import _posterior
from tune_hqs import add_crop_options, training_crops


def patch_posteriors(model, noisy: torch.Tensor, sigma: float):
    """Tweedie estimates of every patch of ``noisy`` ``(H, W)``, ``(N, a)``, with the trace of each patch's
    posterior covariance ``(N,)`` and each pixel's posterior variance ``(N, a)``."""
    b, t = model.patch_size, sigma**2 / 2
    filters = model.filters.detach()
    norms2 = filters.pow(2).sum(1)
    log_weights = torch.log_softmax(model.logits.detach(), 1)
    patches = F.unfold(noisy[None, None], b)[0].T
    z = patches @ filters.T  # (N, J)
    s = 2 * t * norms2
    v = model.sigma0**2 + s
    means, spreads = [], []
    for part in z.T.split(4096, dim=1):
        gamma = _posterior(part.contiguous(), v[:, None].expand_as(part).contiguous(), log_weights, model.means)
        first = gamma @ model.means
        means.append(first)
        spreads.append(gamma @ model.means**2 - first**2)
    mean_mu, var_mu = torch.cat(means, 1).T, torch.cat(spreads, 1).T
    clean_mean = (s * mean_mu + model.sigma0**2 * z) / v
    clean_var = model.sigma0**2 * s / v + (s / v) ** 2 * var_mu
    estimates = patches + ((clean_mean - z) / norms2) @ filters
    trace = (clean_var / norms2).sum(1) + 2 * t
    pixel_var = (clean_var / norms2**2) @ filters**2 + 2 * t / b**2
    return estimates, trace, pixel_var


def aggregate(estimates: torch.Tensor, weights: torch.Tensor, shape, b: int) -> torch.Tensor:
    """``sum_i w_i P_i^T xhat_i / sum_i w_i P_i^T 1`` (weights ``(N, 1)`` or ``(N, a)``)."""
    numerator = F.fold((estimates * weights).T[None], shape, b)[0, 0]
    denominator = F.fold(weights.expand_as(estimates).T[None].contiguous(), shape, b)[0, 0]
    return numerator / denominator


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_crop_options(parser, images=16)
    parser.add_argument("--powers", default="1,2,3,4", help="exponents q of the weights variance^-q")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_model(args.model).double()
    b = model.patch_size
    images = training_crops(args.data, args.images, args.crop)
    powers = [float(q) for q in args.powers.split(",")]
    columns = ["plain"] + [f"{kind} ^-{q:g}" for q in powers for kind in ("trace", "pixel")]
    print(f"{len(images)} crops of {args.crop}x{args.crop} from {args.data}, model {args.model}; mean PSNR (dB)")
    print("sigma  " + "  ".join(f"{c:>11}" for c in columns))
    for sigma255 in (float(s) for s in args.sigmas.split(",")):
        sigma = sigma255 / 255
        rng = np.random.default_rng(1000)
        values = np.zeros((len(images), len(columns)))
        for row, clean in enumerate(images):
            noisy = torch.tensor(clean + sigma * rng.standard_normal(clean.shape), dtype=torch.float64)
            estimates, trace, pixel_var = patch_posteriors(model, noisy, sigma)
            weights = [torch.ones_like(trace)[:, None]]
            weights += [w for q in powers for w in (trace[:, None] ** -q, pixel_var**-q)]
            values[row] = [psnr(aggregate(estimates, w, clean.shape, b).numpy(), clean) for w in weights]
        print(f"{sigma255:5g}  " + "  ".join(f"{v:11.3f}" for v in values.mean(0)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
