"""The ``gmdm`` command line: thin wrappers over the library (no numerics here).

Heavy modules (torch, the model) are imported inside the commands, so that ``gmdm --help``
answers at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

DEVICES = ("auto", "cpu", "cuda")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def _load_model(name: str, device):
    from .checkpoint import CheckpointError, load_model

    try:
        return load_model(name, device=device)
    except CheckpointError as error:
        raise click.ClickException(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gmdm-cli", prog_name="gmdm")
def cli():
    """Image denoising with Gaussian Mixture Diffusion Models (GMDM).

    A GMDM is a patch prior whose density is known in closed form at every noise level; one
    model denoises at any sigma. Sigma is given on the 0-255 scale.
    """


@cli.command()
@click.argument("image_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (and to continue from with --resume).")
@click.option("--patch-size", default=7, show_default=True, type=click.IntRange(2, 31), help="Patch side b.")
@click.option("--steps", default=100_000, show_default=True, type=click.IntRange(1), help="Total optimiser steps.")
@click.option("--batch-size", default=3200, show_default=True, type=click.IntRange(1), help="Patches per step.")
@click.option("--learning-rate", default=1e-2, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Initial Adam step size (cosine decay to 1% of it).")
@click.option("--sigma-max", default=0.4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Noise levels sqrt(2t) are drawn from U[0, sigma_max] (0-1 scale).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of initialisation, patches and noise.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run saved in --output (optimiser and RNG state included).")
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(1),
              help="Save the checkpoint every N steps (and at the end).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Append 'step loss seconds' lines to this file every 100 steps.")
def train(image_dirs, output, patch_size, steps, batch_size, learning_rate, sigma_max, seed, device,
          resume, checkpoint_every, log_path):
    """Train a patch GMDM by denoising score matching on the images in IMAGE_DIRS."""
    from .train import run_training, TrainingConfig, TrainingDataError
    from .checkpoint import CheckpointError

    config = TrainingConfig(patch_size=patch_size, steps=steps, batch_size=batch_size,
                            learning_rate=learning_rate, final_learning_rate=learning_rate / 100,
                            sigma_max=sigma_max, seed=seed)
    try:
        summary = run_training(config, image_dirs, output, device=_device(device), resume=resume,
                               checkpoint_every=checkpoint_every, log_path=log_path)
    except (TrainingDataError, CheckpointError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"saved {output}: {summary['steps']} steps, final loss {summary['final_loss']:.6g} "
               f"(mean of the last {summary['loss_window']} steps), {summary['wall_seconds']:.0f} s "
               f"on {summary['device']}", err=True)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (one input only); the format follows its extension.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write each result here under its input's file name.")
@click.option("--sigma", required=True, type=click.FloatRange(min=0, max=255, min_open=True),
              help="Noise standard deviation on the 0-255 scale.")
@click.option("--method", type=click.Choice(["ebpa"]), default="ebpa", show_default=True,
              help="ebpa: empirical-Bayes patch averaging.")
@click.option("--model", "model_name", default="7x7", show_default=True,
              help="Built-in model (7x7, 15x15) or a checkpoint path.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def denoise(inputs, output, output_dir, sigma, method, model_name, device, overwrite):
    """Denoise INPUTS (PNG, TIFF, JPEG or .npy) corrupted by Gaussian noise of known sigma."""
    from .denoise import denoise_array
    from .image_io import ImageError, read_image, write_image

    if (output is None) == (output_dir is None):
        raise click.UsageError("give exactly one of -o/--output and --output-dir")
    if output is not None and len(inputs) > 1:
        raise click.UsageError("-o/--output takes one input; use --output-dir for several")
    targets = [output] if output is not None else [output_dir / path.name for path in inputs]
    if output_dir is not None and not output_dir.is_dir():
        raise click.ClickException(f"{output_dir}: output folder does not exist")
    for path, target in zip(inputs, targets):
        if target.exists() and target.resolve() == path.resolve():
            raise click.ClickException(f"{target}: refusing to overwrite the input")
        if target.exists() and not overwrite:
            raise click.ClickException(f"{target}: exists (use --overwrite to replace it)")
    model = _load_model(model_name, _device(device))
    for path, target in zip(inputs, targets):
        try:
            image, info = read_image(path)
            started = time.perf_counter()
            result = denoise_array(model, image, sigma / 255, method)
            write_image(target, result, dtype=info.dtype)
        except (ImageError, ValueError) as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"{path} -> {target} ({method}, sigma {sigma:g}, {time.perf_counter() - started:.2f} s)",
                   err=True)


@cli.command()
@click.option("--image", type=click.Choice(["camera", "astronaut", "coins", "moon"]), default="camera",
              show_default=True, help="Image that ships with scikit-image (colour ones are used as gray).")
@click.option("--sigma", default=25.0, show_default=True, type=click.FloatRange(min=0, max=255, min_open=True),
              help="Noise standard deviation on the 0-255 scale.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise.")
@click.option("--model", "model_name", default="7x7", show_default=True,
              help="Built-in model (7x7, 15x15) or a checkpoint path.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write clean.png, noisy.png and denoised.png here.")
def demo(image, sigma, seed, model_name, device, output_dir):
    """Denoise a noisy scikit-image picture and print the PSNRs: no data of yours needed."""
    import numpy as np
    from skimage import data

    from .denoise import denoise_array, psnr
    from .image_io import to_gray, write_image

    picture = getattr(data, image)()
    clean = to_gray(picture / 255.0)
    noisy = clean + sigma / 255 * np.random.default_rng(seed).standard_normal(clean.shape)
    model = _load_model(model_name, _device(device))
    started = time.perf_counter()
    denoised = denoise_array(model, noisy, sigma / 255)
    seconds = time.perf_counter() - started
    click.echo(f"{image} ({clean.shape[1]}x{clean.shape[0]}), sigma {sigma:g}: noisy {psnr(noisy, clean):.2f} dB, "
               f"EB-PA {model.patch_size}x{model.patch_size} {psnr(denoised, clean):.2f} dB ({seconds:.2f} s)")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, array in (("clean", clean), ("noisy", noisy), ("denoised", denoised)):
            write_image(output_dir / f"{name}.png", array)
        click.echo(f"wrote clean.png, noisy.png, denoised.png to {output_dir}", err=True)


def main():
    cli(prog_name="gmdm")


if __name__ == "__main__":
    sys.exit(main())
