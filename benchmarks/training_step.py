"""Seconds per training step (gmdm's Trainer: patch sampling, Eq. 4, Adam, Algorithm 1) for several sizes of
the mixture chunks (``gmdm_cli.model._CHUNK_ELEMENTS``), and Algorithm 1 alone on the device and on the CPU.

    python benchmarks/training_step.py --device cuda [--data ../shared/data/bsds400] [--model 15x15]

Prints a markdown table. The chunk size of the device is set per row; the shipped value is marked.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import gmdm_cli.model as model_module
from gmdm_cli.checkpoint import model_from_checkpoint, read_checkpoint, resolve_model_path
from gmdm_cli.projection import orthogonal_projection
from gmdm_cli.training import PatchSampler, Trainer, TrainingConfig, find_images, load_training_images

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds400"


def seconds_per_call(function, repeats: int, device: torch.device) -> float:
    """Mean seconds of ``function()`` over ``repeats`` calls after one warm-up call."""
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    function()
    synchronise()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronise()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training images (default: %(default)s)")
    parser.add_argument("--model", default="15x15", help="model the steps start from")
    parser.add_argument("--batch-size", type=int, default=3200)
    parser.add_argument("--sigma-max", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--chunk-powers", default="21,23,25,27", help="chunk sizes 2^k to try")
    args = parser.parse_args()
    device = torch.device(args.device)
    checkpoint = read_checkpoint(resolve_model_path(args.model))
    patch_size = checkpoint["metadata"]["patch_size"]
    sampler = PatchSampler(load_training_images(find_images([args.data]), patch_size), patch_size, device)

    filters = model_from_checkpoint(checkpoint).filters.detach().to(device)
    on_device = seconds_per_call(lambda: orthogonal_projection(filters, 3), args.steps, device)
    on_cpu = seconds_per_call(lambda: orthogonal_projection(filters.cpu(), 3).to(device), args.steps, device)
    print(f"Algorithm 1 (3 steps, {filters.shape[0]} filters): {on_device * 1000:.1f} ms on {device.type}, "
          f"{on_cpu * 1000:.1f} ms on the CPU (copies included)\n")

    shipped = model_module._CHUNK_ELEMENTS.get(device.type, model_module._CHUNK_ELEMENTS["cpu"])
    print(f"| chunk (response, component) pairs | chunks per batch | s/step | patches/s |  ({args.model}, "
          f"batch {args.batch_size}, {device})")
    print("|---|---|---|---|")
    try:
        for power in (int(k) for k in args.chunk_powers.split(",")):
            model_module._CHUNK_ELEMENTS[device.type] = 1 << power
            config = TrainingConfig(patch_size=patch_size, steps=10_000, batch_size=args.batch_size,
                                    learning_rate=3e-3, sigma_max=args.sigma_max)
            trainer = Trainer(config, sampler, device, model_from_checkpoint(checkpoint))
            step = seconds_per_call(trainer.train_step, args.steps, device)  # train_step's .item() synchronises
            pairs = trainer.model.num_filters * trainer.model.num_components
            chunks = -(-args.batch_size // max(1, (1 << power) // pairs))
            mark = " (shipped)" if 1 << power == shipped else ""
            print(f"| 2^{power}{mark} | {chunks} | {step:.4f} | {args.batch_size / step:.0f} |")
    finally:
        model_module._CHUNK_ELEMENTS[device.type] = shipped
    if device.type == "cuda":
        print(f"\npeak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
