"""Adam against iPALM (``gmdm train --optimizer adam|ipalm``) from the same random start on the same batches:
the DSM loss (Eq. 4, norm) of a fixed validation batch of training patches every 100 steps, and the time.

    python benchmarks/optimizers.py --optimizer adam --steps 1000
    python benchmarks/optimizers.py --optimizer ipalm --steps 1000

Prints one line per 100 steps: step, seconds, validation loss.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gmdm_cli.training import PatchSampler, Trainer, TrainingConfig, dsm_loss, find_images, load_training_images

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds400"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=["adam", "ipalm"], required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training images (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sampler = PatchSampler(load_training_images(find_images([args.data]), args.patch_size), args.patch_size)
    generator = torch.Generator().manual_seed(999)
    clean = sampler.sample(20_000, generator)
    sigma = 0.4 * torch.rand(20_000, generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    config = TrainingConfig(patch_size=args.patch_size, steps=args.steps, learning_rate=1e-2, final_learning_rate=1e-4,
                            optimizer=args.optimizer)
    trainer = Trainer(config, sampler)  # seed 0: the same initial model and batches for both optimisers

    def validation() -> float:
        with torch.no_grad():
            return dsm_loss(trainer.model, clean, sigma, noise).item()

    print(f"{args.optimizer}, {args.patch_size}x{args.patch_size}, batch {config.batch_size}, "
          f"{args.threads} thread(s)\nstep seconds validation_loss\n0 0.0 {validation():.4f}", flush=True)
    started = time.perf_counter()
    while trainer.step < args.steps:
        trainer.train_step()
        if trainer.step % 100 == 0:
            print(f"{trainer.step} {time.perf_counter() - started:.1f} {validation():.4f}", flush=True)


if __name__ == "__main__":
    main()
