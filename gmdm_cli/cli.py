"""The ``gmdm`` command line: thin wrappers over the library (no numerics here).

Heavy modules (torch, the model) are imported inside the commands, so that ``gmdm --help``
answers at once.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
import time
from pathlib import Path

import click

from .kinds import KINDS
from .choices import (BOUNDARIES, COLOUR_SPACES, DEVICES, DOWNSAMPLERS, ESTIMATORS, LOSSES, METHODS, MODEL_TYPES,
                      NOISE_MODELS, OPTIMIZERS, RAW_ESTIMATORS, TRAINING)
from .errors import GmdmError
from .image_io import shown

BUILTIN_NAMES = "7x7, 15x15, conv"
MAX_PIXELS = 250_000_000
"""Default of ``--max-pixels``: 250 Mpixel, about 2 GB as float64."""


class _Finite(click.FloatRange):
    """A float option in a range that also refuses NaN (which every comparison lets through)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


def _device_option(function):
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help="Where the numerics run: auto (CUDA when available, else the CPU), cpu or cuda.")(function)


def _seed_option(help_text: str):
    return click.option("--seed", default=TRAINING["seed"], show_default=True, type=int, help=help_text)


_overwrite_option = click.option("--overwrite", is_flag=True,
                                 help="Replace existing output files (never a file the command reads).")


def _noise_model_option(what: str):
    return click.option("--noise-model", type=click.Choice(NOISE_MODELS), default=NOISE_MODELS[0], show_default=True,
                        help=f"{what}: auto chooses the one that explains the image best by likelihood (one level, "
                             f"a noise-level function of the intensity, or a spatial map); the others force one.")


def _model_option(function):
    return click.option("--model", "model_name", default="7x7", show_default=True,
                        help=f"Built-in model ({BUILTIN_NAMES}) or a checkpoint path.")(function)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def _load_model(name: str, device, exact_patches: bool = False):
    """The model, through the library's one cache (:func:`gmdm_cli.get_model`); ``exact_patches``: refuse a model
    that cannot give them (the conv model), for the commands that draw patches or show filters."""
    import gmdm_cli

    model = gmdm_cli.get_model(name, device)
    if exact_patches and not model.exact_patches:
        raise click.ClickException(f"{shown(name)}: a {model.kind} model has no patches to draw or filters to show "
                                   f"(this works with patch models)")
    return model


def _same_file(a: Path, b: Path) -> bool:
    return str(a) != "-" and str(b) != "-" and (a.resolve() == b.resolve() or (a.exists() and b.exists()
                                                                              and os.path.samefile(a, b)))


def _check_target(target: Path, overwrite: bool, inputs=()) -> None:
    """Refuse to overwrite anything the command reads (``inputs``: images, maps, models), ever, or an existing
    file without --overwrite (checked again when the file is published, see image_io.atomic_output)."""
    if any(_same_file(target, Path(path)) for path in inputs if path is not None):
        raise click.ClickException(f"{shown(target)}: refusing to overwrite an input")
    if target.exists() and not overwrite:
        raise click.ClickException(f"{shown(target)}: exists (use --overwrite to replace it)")
    if not (target.parent if str(target.parent) else Path(".")).is_dir():
        raise click.ClickException(f"{shown(target)}: folder {shown(target.parent)} does not exist")


def _check_distinct(paths, what: str) -> None:
    """A usage error if two of ``paths`` (files a command will write) are one file."""
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            if _same_file(Path(a), Path(b)):
                raise click.UsageError(f"{what} would be written to the same file {shown(a)}")


def _output_folder(folder: Path) -> None:
    """Create a missing --output-dir (and its parents), the one rule of every command."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"{shown(folder)}: cannot create the output folder ({error.strerror})") from None
    if not folder.is_dir():
        raise click.ClickException(f"{shown(folder)}: not a folder")


def _sigmas(text: str, option: str) -> list[float]:
    """Comma-separated noise levels on the 0-255 scale (of ``option``)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of numbers", param_hint=option) from None
    if not values or any(not 0 <= v <= 255 for v in values):  # NaN fails every comparison
        raise click.BadParameter(f"'{text}': noise levels must lie in [0, 255]", param_hint=option)
    return values


def _tile(text: str) -> int | None:
    """``--tile``: ``auto`` (None) or a tile side >= 0."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise click.BadParameter(f"'{text}' is not 'auto' or a tile size >= 0")
    return value


class _BrokenOutput(Exception):
    """Standard output cannot be written (a full disk, ``> /dev/full``): the whole command stops."""


def _out(text: str) -> None:
    """A line of results on standard output."""
    try:
        click.echo(text)
    except OSError as error:
        if error.errno == errno.EPIPE:
            raise
        raise _BrokenOutput(f"<stdout>: cannot write ({error.strerror})") from None


class _Commands(click.Group):
    """The command group: an error the library reports for a file or setting (:class:`GmdmError`) or a failed
    system call (a full disk, a file that cannot be opened) becomes one ``Error:`` line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (GmdmError, _BrokenOutput) as error:
            raise click.ClickException(_one_line(str(error))) from None
        except OSError as error:
            if error.errno == errno.EPIPE:
                raise
            where = f"{shown(error.filename)}: " if error.filename else ""
            raise click.ClickException(f"{where}{error.strerror or _one_line(str(error))}") from None


def _one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _threads(ctx, param, value):
    """``--threads``: a count, or auto (:func:`gmdm_cli.cpu.default_threads`, unless ``OMP_NUM_THREADS`` says, or
    a process that already runs torch has set its own). Set before torch starts where it has not."""
    if value == "auto":
        if "OMP_NUM_THREADS" in os.environ or "torch" in sys.modules:
            return None
        from .cpu import default_threads

        count = default_threads()
    else:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise click.BadParameter(f"'{value}' is not 'auto' or a count >= 1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    else:
        os.environ["OMP_NUM_THREADS"] = str(count)
    return count


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gmdm-cli", prog_name="gmdm")
@click.option("--threads", default="auto", show_default=True, envvar="GMDM_THREADS", callback=_threads,
              expose_value=False, is_eager=True,
              help="CPU threads: a count, or auto: the CPUs this process may use (affinity and container quota) "
                   "less those other processes keep busy now; OMP_NUM_THREADS, when set, decides instead. "
                   "Environment: GMDM_THREADS.")
def cli():
    """Image denoising with Gaussian Mixture Diffusion Models (GMDM).

    A GMDM is a patch prior whose density is known in closed form at every noise level; one
    model denoises at any sigma. Sigma is given on the 0-255 scale.
    """


@cli.command(short_help="Train a GMDM on a folder of images (denoising score matching).")
@click.argument("image_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (and to continue from with --resume).")
@click.option("--model-type", type=click.Choice(MODEL_TYPES), default=TRAINING["model_type"], show_default=True,
              help="; ".join(f"{name}: {kind[-1]}" for name, kind in KINDS.items()) + " (gmdm_cli.kinds).")
@click.option("--patch-size", default=TRAINING["patch_size"], show_default=True, type=click.IntRange(2, 256),
              help="patch: the patch side b, 2 to 31; conv: the side of the training crops, up to 256 and a "
                   "multiple of --bands [conv default: 8 x bands].")
@click.option("--bands", default=TRAINING["bands"], show_default=True, type=click.IntRange(2, 32),
              help="conv: bands per axis (M x M bands, M^2 - 1 experts).")
@click.option("--steps", default=TRAINING["steps"], show_default=True, type=click.IntRange(1), help="Total optimiser steps.")
@click.option("--batch-size", default=TRAINING["batch_size"], type=click.IntRange(1),
              help="Patches per step [default: 3200; conv: 16 crops].")
@click.option("--learning-rate", default=TRAINING["learning_rate"], show_default=True, type=_Finite(min=0, min_open=True),
              help="Initial Adam step size (cosine decay to 1% of it).")
@click.option("--sigma-max", default=TRAINING["sigma_max"], show_default=True, type=_Finite(min=0, max=1, min_open=True),
              help="Noise levels sqrt(2t) are drawn from U[0, sigma_max] (0-1 scale).")
@_seed_option("Seed of initialisation, patches and noise.")
@click.option("--loss", type=click.Choice(LOSSES), default=TRAINING["loss"], show_default=True,
              help="norm: Eq. 4 as written (the norm of each patch's residual); squared: its square; noise: the "
                   "square over sigma^2 (noise prediction).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=TRAINING["optimizer"], show_default=True,
              help="adam: Adam with a cosine learning-rate decay, then Algorithm 1; ipalm: the paper's iPALM "
                   "(step sizes by backtracking, Algorithm 1 as the filters' proximal map; --learning-rate unused).")
@click.option("--init", "init_model", metavar="MODEL",
              help=f"Start from this model ({BUILTIN_NAMES} or a checkpoint) with a fresh optimiser: fine-tuning.")
@_device_option
@click.option("--resume", is_flag=True, help="Continue the run saved in --output (optimiser and RNG state included).")
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(1),
              help="Save the checkpoint every N steps (and at the end).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write 'step loss seconds' lines to this new file every 100 steps and at the end (with --resume "
                   "its run's log is appended to).")
def train(image_dirs, output, model_type, patch_size, bands, steps, batch_size, learning_rate, sigma_max, seed, loss,
          optimizer, init_model, device, resume, checkpoint_every, log_path):
    """Train a GMDM by denoising score matching on the images in IMAGE_DIRS.

    Several processes: torchrun --nproc_per_node=N -m gmdm_cli train ... (the batch is split over them).
    """
    from .checkpoint import read_checkpoint, resolve_model_path
    from .training import run_training, TrainingConfig

    _check_train_usage(init_model, resume, log_path)
    initial = read_checkpoint(resolve_model_path(init_model)) if init_model is not None else None
    previous = read_checkpoint(output) if resume and output.is_file() else None
    source = click.get_current_context().get_parameter_source
    given = {name for name in ("model_type", "patch_size", "bands", "batch_size", "device")
             if source(name).name != "DEFAULT"}
    model_type, shape = _training_shape(initial or previous, given, model_type, patch_size, bands, batch_size)
    config = TrainingConfig(steps=steps, learning_rate=learning_rate, final_learning_rate=learning_rate / 100,
                            sigma_max=sigma_max, seed=seed, loss=loss, optimizer=optimizer, model_type=model_type,
                            **shape)
    if previous is not None and "device" not in given:  # stay where the run was
        device = _run_device(previous, output)
    summary = run_training(config, image_dirs, output, device=_device(device), resume=resume,
                           checkpoint_every=checkpoint_every, log_path=log_path, initial=initial,
                           initial_name=init_model, previous=previous)
    if summary["rank"] == 0:
        _report_training(summary, output, previous)


def _check_train_usage(init_model: str | None, resume: bool, log_path: Path | None) -> None:
    if init_model is not None and resume:
        raise click.UsageError("--init starts a new run; --resume continues one: give one of them")
    if log_path is not None and init_model is not None and _same_file(log_path, Path(init_model)):
        raise click.UsageError("--log must name its own file (not the model of --init)")


def _report_training(summary: dict, output: Path, previous: dict | None) -> None:
    if not summary["exact_resume"]:
        click.echo(f"note: the run's random state belongs to another device type; from step "
                   f"{previous['training']['step']} on {summary['device']} it draws other batches than an "
                   f"uninterrupted run would", err=True)
    click.echo(f"saved {shown(output)}: {summary['steps']} steps, final loss {summary['final_loss']:.6g} "
               f"(mean of the last {summary['loss_window']} steps), {summary['wall_seconds']:.0f} s "
               f"on {summary['device']}", err=True)


def _training_shape(taken: dict | None, given: set, model_type: str, patch_size: int, bands: int,
                    batch_size: int) -> tuple[str, dict]:
    """The kind of model to train and its patch (crop) size, bands and batch: what the model taken up (``--init``
    or ``--resume``) is, else the options given, else the kind's defaults."""
    from .kinds import kind_class, kind_of_format

    if taken is not None:  # the model or the run taken up says what it is
        kind = kind_of_format(taken["format"])
        if "model_type" in given and kind != model_type:
            raise click.UsageError(f"--model-type {model_type}: the model taken up is a {kind} model")
        model_type, bands = kind, taken["metadata"].get("bands", bands)
    kind = kind_class(model_type)
    if "bands" in given and "bands" not in kind.shape_fields:
        banded = ", ".join(name for name in KINDS if "bands" in kind_class(name).shape_fields)
        raise click.UsageError(f"--bands goes with --model-type {banded}")
    defaults = kind.training_defaults(bands)
    if "patch_size" not in given:
        patch_size = (taken["metadata"].get("crop_size", taken["metadata"].get("patch_size")) if taken is not None
                      else defaults.get("patch_size", patch_size))
    if "batch_size" not in given:
        batch_size = defaults.get("batch_size", batch_size)
    return model_type, {"patch_size": patch_size, "bands": bands, "batch_size": batch_size}


def _run_device(previous: dict, output: Path) -> str:
    """The device type a resumed run was on (the CPU where that was CUDA and none is here)."""
    import torch

    from .training import generator_device

    if "training" not in previous:
        return "cpu"  # run_training refuses it
    recorded = generator_device(previous["training"])
    return recorded if recorded == "cpu" or torch.cuda.is_available() else "cpu"


class _Report:
    """What a batch command tells the user: errors always (one line each, on stderr), per-input lines
    unless ``quiet``, a progress bar only when stderr is a terminal; ``failed`` counts the inputs that
    failed, for the exit code (0 all done, 1 some failed)."""

    def __init__(self, quiet: bool, total: int, as_json: bool):
        self.quiet, self.as_json, self.failed = quiet, as_json, 0
        self.bar = None
        if not quiet and total > 1 and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("images", total=total)
            self.bar.start()

    def info(self, message: str) -> None:
        if not self.quiet:
            if self.bar:
                self.bar.console.print(message, markup=False, highlight=False)
            else:
                click.echo(message, err=True)

    def error(self, path: Path, error: Exception) -> None:
        """One input failed: say why in one line that names it (and, with --json, record it); go on with the
        next."""
        import json

        self.failed += 1
        message = error.format_message() if isinstance(error, click.ClickException) else str(error)
        name = "<stdin>" if str(path) == "-" else shown(path)
        if not message.startswith(f"{name}:"):
            message = f"{name}: {message}"
        message = _one_line(message)
        click.echo(f"Error: {message}", err=True)
        if self.as_json:
            _out(json.dumps({"path": str(path), "status": "error", "error": message}))
        self.advance()

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)

    def finish(self) -> None:
        if self.bar:
            self.bar.stop()
        if self.failed:
            sys.exit(1)


@contextlib.contextmanager
def _progress(description: str, total: int):
    """Yield ``advance()``: a progress bar of ``total`` steps on standard error when it is a terminal, else
    nothing at all."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


@contextlib.contextmanager
def _working(path: Path, show: bool):
    """A spinner on standard error while one input is worked on, when ``show`` and stderr is a terminal."""
    if not (show and sys.stderr.isatty()):
        yield
        return
    from rich.console import Console

    name = "<stdin>" if str(path) == "-" else shown(path)
    with Console(stderr=True).status(f"{name}: working", spinner="dots"):
        yield


def _read_input(path: Path, max_pixels: int):
    """Read an input image; ``-`` is standard input, read up to the most bytes an image within ``max_pixels``
    can take (float64 RGBA ``.npy``: 32 bytes a pixel, and 1 MiB of headers)."""
    from .image_io import ImageError, read_image

    if str(path) != "-":
        return read_image(path, max_pixels=max_pixels or None)
    limit = 32 * max_pixels + 2**20 if max_pixels else None
    data = sys.stdin.buffer.read(limit + 1) if limit else sys.stdin.buffer.read()
    if not data:
        raise ImageError("<stdin>: no data")
    if limit and len(data) > limit:
        raise ImageError(f"<stdin>: more than {limit} bytes, more than an image of --max-pixels {max_pixels} "
                         f"pixels takes")
    return read_image("<stdin>", data=data, max_pixels=max_pixels or None)


OUTPUT_FORMATS = ("png", "tif", "jpg", "bmp", "npy")
_quiet = click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
_max_pixels = click.option("--max-pixels", default=MAX_PIXELS, show_default=True, type=click.IntRange(0),
                           help="Refuse larger inputs (width x height); 0: no limit.")


def _image_outputs(function):
    """INPUTS, -o/--output, --output-dir and --format: the image commands' inputs and outputs."""
    options = [click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path)),
               click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                            help="Output file (one input only); the format follows its extension. '-': standard "
                                 "output."),
               click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                            help="Write each result here under its input's file name (the folder is created if "
                                 "missing)."),
               click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS),
                            help="Format of '-o -' (default png) and of the files in --output-dir (default: the "
                                 "input's).")]
    for option in reversed(options):
        function = option(function)
    return function


@cli.command(short_help="Denoise images (known sigma, a sigma map, or --blind).")
@_image_outputs
@click.option("--sigma", type=_Finite(min=0, max=255, min_open=True),
              help="Noise standard deviation on the 0-255 scale.")
@click.option("--blind", is_flag=True,
              help="Estimate the noise first (one level, a noise-level function of the intensity, or a spatial "
                   "map; see --noise-model) and denoise with its per-pixel levels (EB-PA or HQS).")
@_noise_model_option("With --blind: the noise model")
@click.option("--sigma-map", type=click.Path(dir_okay=False, path_type=Path),
              help="Known per-pixel noise map (.npy or float TIFF, 0-255 units, every value in (0, 255] like --sigma, "
                   "the image's size; for a colour image also one map per RGB channel, H x W x 3).")
@click.option("--uncertainty", "uncertainty_path", type=click.Path(dir_okay=False, path_type=Path),
              help="EB-PA, one input: also save the posterior standard deviation of every pixel here (.tif or .npy: "
                   "float32, 0-255 units; .png: a colour-mapped picture with a scale bar): the model's uncertainty, "
                   "calibrated on training images, not a guarantee.")
@click.option("--noise-map", "noise_map_path", type=click.Path(dir_okay=False, path_type=Path),
              help="With --blind (one input): also save the estimated levels here (.tif or .npy: float32, "
                   "0-255 units; .png: a colour-mapped picture with a scale bar).")
@click.option("--samples", type=click.IntRange(1, 1000),
              help="One input, with --output-dir: also draw N samples of the posterior (plausible clean images under "
                   "the model, by annealed Langevin; about 36 EB-PA passes each) and write them there as "
                   "NAME-sample-K (K from 1). Their mean tends to the denoised image, their spread is the uncertainty.")
@_seed_option("Seed of --samples (sample K of a gray image from seed + K - 1).")
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True,
              help="ebpa: empirical-Bayes patch averaging; hqs: half-quadratic splitting (slower, better).")
@click.option("--sure/--no-sure", default=None,
              help="EB-PA with a patch model, R, G, B: denoise each channel that has one noise level at the level "
                   "of least Stein's unbiased risk estimate (the prior fits some images better than others; "
                   "+0.20 to +0.23 dB on BSD68 at sigma 15-50; not for noise that varies). [default: with --blind]")
@click.option("--iterations", type=click.IntRange(1, 100),
              help="HQS steps over the model's range of t (patch models: sigma^2/8 down to sigma^2/256; conv: "
                   "0.35 sigma^2 down to sigma^2/128) [default: the best on training images, 6; conv: 4].")
@click.option("--boundary", type=click.Choice(BOUNDARIES), default=BOUNDARIES[0], show_default=True,
              help="valid: patches inside the image only (the paper); reflect: mirror the border first.")
@click.option("--colour", type=click.Choice(COLOUR_SPACES), default=COLOUR_SPACES[0], show_default=True,
              help="Colour images: denoise R, G, B separately, or decorrelated opponent channels "
                   "(measured 0.2-0.5 dB worse with the gray prior; see the README).")
@_model_option
@_device_option
@click.option("--tile", default="auto", show_default=True, callback=lambda ctx, param, value: _tile(value),
              help="Work in tiles of N x N pixels (same result, bounded memory); 0: the whole image at once; "
                   "auto: about 128 MiB of filter responses per tile.")
@_max_pixels
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout.")
@_quiet
@_overwrite_option
def denoise(inputs, output, output_dir, output_format, sigma, blind, noise_model, sigma_map, uncertainty_path,
            noise_map_path, samples, seed, method, sure, iterations, boundary, colour, model_name, device, tile,
            max_pixels, as_json, quiet, overwrite):
    """Denoise INPUTS (PNG, TIFF, JPEG, BMP or .npy; '-' reads standard input) corrupted by Gaussian noise.

    Give the noise level with --sigma, a per-pixel map with --sigma-map, or let --blind estimate it.
    Exit status: 0 all inputs done, 1 some failed (the others are still written), 2 usage error.
    """
    import gmdm_cli
    from .image_io import channel_count, check_output_format, colour_channels, encode_image, write_image
    from .sampling import SAMPLE_LEVELS

    side = {"--noise-map": noise_map_path, "--uncertainty": uncertainty_path}
    targets = _denoise_targets(inputs, output, output_dir, output_format, sigma, blind, sigma_map, side,
                               method, iterations, noise_model, as_json)
    if sure and (method != "ebpa" or colour != "rgb"):
        raise click.UsageError("--sure goes with --method ebpa and --colour rgb")
    drawn = _sample_targets(targets[0], samples, output_dir, len(inputs))
    level = _read_sigma_map(sigma_map, max_pixels) if sigma_map is not None else None if blind else sigma / 255
    read = [*inputs, sigma_map, _model_file(model_name)]  # everything this command reads: never written
    for path in side.values():
        if path is not None:
            _check_target(path, overwrite, read)
    if output_dir is not None:
        _output_folder(output_dir)
    model = _load_model(model_name, _device(device))
    if sure and model.kind != "patch":
        raise click.UsageError("--sure goes with a patch model (7x7, 15x15 or a patch checkpoint)")
    to_stdout = str(output) == "-"
    extension = f".{output_format}" if output_format else ".png"

    def one(path: Path, target: Path, image, info) -> tuple[dict, str]:
        started = time.perf_counter()
        check_output_format(f"<stdout>{extension}" if to_stdout else target, channel_count(image))
        fields = {}
        done = gmdm_cli.denoise(image, level, method, model, blind, boundary, colour, tile, iterations, noise_model,
                                return_noise=True, return_std=uncertainty_path is not None, sure=sure)
        if noise_map_path is not None:
            _write_levels_noted(noise_map_path, 255 * done.sigma, overwrite)
        if uncertainty_path is not None:
            _write_levels_noted(uncertainty_path, 255 * done.std, overwrite, "posterior std (0-255)")
            fields["uncertainty"], fields["std_mean"] = str(uncertainty_path), round(255 * float(done.std.mean()), 3)
        if drawn:
            with _progress("posterior samples", samples * colour_channels(image) * SAMPLE_LEVELS) as advance:
                draws = gmdm_cli.posterior_samples(image, samples, done.sigma, model, colour=colour, seed=seed,
                                                   progress=advance)
            for file, draw in zip(drawn, draws):
                write_image(file, draw, dtype=info.dtype, overwrite=overwrite)
            fields["samples"] = [str(file) for file in drawn]
            if samples > 1:
                fields["samples_spread_mean"] = round(255 * float(draws.std(0, ddof=1).mean()), 3)
        if to_stdout:
            _write_stdout(encode_image(done.image, extension, info.dtype))
        else:
            write_image(target, done.image, dtype=info.dtype, overwrite=overwrite)
        seconds = time.perf_counter() - started
        how, noise = _noise_used(sigma, None if sigma is not None else done.sigma, done.estimates)
        if done.levels is not None:
            chosen = _sure_levels_record(done.levels)
            noise["sure_level"] = chosen[0] if len(chosen) == 1 else chosen
            if any(value is not None for value in chosen):  # else every channel kept its map
                how += ", SURE level " + "/".join("map" if value is None else f"{value:.2f}" for value in chosen)
        fields.update(noise)
        return ({"output": str(target), "method": method, "model": model_name, "seconds": round(seconds, 3), **fields},
                f"{shown(path)} -> {shown(target)} ({method}, {how}, {seconds:.2f} s)")

    checked = [[] if to_stdout else [target, *drawn] for target in targets]
    _run_batch(inputs, zip(targets, checked), one, quiet, as_json, max_pixels, read, overwrite, results_on_stdout=False,
               spinner=not drawn)


def _sample_targets(target: Path, samples: int | None, output_dir: Path | None, count: int) -> list[Path]:
    """The files of ``denoise --samples`` beside the result ``target`` (``NAME-sample-K``), or none."""
    if samples is None:
        return []
    if output_dir is None or count > 1:
        raise click.UsageError("--samples goes with --output-dir and a single input")
    digits = len(str(samples))
    return [target.with_name(f"{target.stem}-sample-{k:0{digits}d}{target.suffix}") for k in range(1, samples + 1)]


def _denoise_targets(inputs, output, output_dir, output_format, sigma, blind, sigma_map, side: dict, method,
                     iterations, noise_model, as_json) -> list[Path]:
    """``denoise``'s usage rules (exit 2 before any work), and the output file of every input; ``side``: the
    side outputs by option (``--noise-map``, ``--uncertainty``)."""
    _check_noise_options(inputs, sigma, blind, sigma_map, side["--noise-map"], method, iterations, noise_model)
    if side["--uncertainty"] is not None and (method != "ebpa" or len(inputs) > 1):
        raise click.UsageError("--uncertainty goes with --method ebpa and a single input")
    _check_outputs(inputs, output, output_dir, as_json)
    for option, path in side.items():
        _check_format(path, option, (".png", ".tif", ".tiff", ".npy"))
    targets = _output_files(inputs, output, output_dir, output_format)
    extra = [path for path in side.values() if path is not None]
    _check_distinct([*extra, *targets], " and ".join(option for option, path in side.items() if path) + " and the result")
    return targets


def _output_files(inputs, output: Path | None, output_dir: Path | None, output_format: str | None) -> list[Path]:
    """The result file of every input: ``-o``, or its file name in ``--output-dir`` (``--format``: that extension);
    two inputs that would share one are a usage error."""
    if output is not None:
        return [output]
    targets = [output_dir / (path.name if output_format is None else f"{path.stem}.{output_format}") for path in inputs]
    _check_distinct(targets, "several inputs (with the same file name)")
    return targets


def _check_outputs(inputs, output: Path | None, output_dir: Path | None, as_json: bool) -> None:
    if (output is None) == (output_dir is None):
        raise click.UsageError("give exactly one of -o/--output and --output-dir")
    if output is not None and len(inputs) > 1:
        raise click.UsageError("-o/--output takes one input; use --output-dir for several")
    if [str(path) for path in inputs].count("-") > (0 if output_dir is not None else 1):
        raise click.UsageError("'-' (standard input) is one input, written with -o")
    _check_stdout(output, as_json)
    _check_format(output, "-o/--output")


def _check_noise_options(inputs, sigma, blind, sigma_map, noise_map_path, method, iterations, noise_model) -> None:
    if sum([sigma is not None, blind, sigma_map is not None]) != 1:
        raise click.UsageError("give exactly one of --sigma, --blind and --sigma-map")
    if method != "hqs" and iterations is not None:
        raise click.UsageError("--iterations goes with --method hqs")
    if noise_map_path is not None and (not blind or len(inputs) > 1):
        raise click.UsageError("--noise-map goes with --blind and a single input")
    if noise_model != "auto" and not blind:
        raise click.UsageError("--noise-model goes with --blind")


def _check_stdout(output: Path | None, as_json: bool) -> None:
    if output is None or str(output) != "-":
        return
    if as_json:
        raise click.UsageError("--json and -o - both write to standard output")
    if sys.stdout.isatty():
        raise click.UsageError("-o -: standard output is a terminal; redirect it to a file or a pipe")


def _run_batch(inputs, work_targets, work, quiet: bool, as_json: bool, max_pixels: int, read, overwrite: bool,
               results_on_stdout: bool, spinner: bool = True) -> None:
    """The batch commands' loop: for every input, refuse its targets if they are an input or exist (without
    ``overwrite``), read it, ``work(path, target, image, info) -> (record, line)``; a failure is that input's one
    error line (and JSON record) and the next goes on. ``--json``: the records on standard output; otherwise the
    lines, on standard output when they are the results (``results_on_stdout``), else as messages on standard
    error. Exit status 1 when some failed. ``spinner``: a single input shows that it is being worked on (on a
    terminal), for commands without a progress bar of their own."""
    import json

    report = _Report(quiet, len(inputs), as_json)
    for path, (target, checked) in zip(inputs, work_targets):
        try:
            for file in checked:
                _check_target(file, overwrite, read)
            image, info = _read_input(path, max_pixels)
            with _working(path, spinner and len(inputs) == 1 and not quiet):
                record, line = work(path, target, image, info)
        except (GmdmError, ValueError, click.ClickException) as error:
            report.error(path, error)
            continue
        if as_json:
            _out(json.dumps({"path": str(path), "status": "ok", **record}))
        elif results_on_stdout:
            _out(line)
        else:
            report.info(line)
        report.advance()
    report.finish()


def _check_format(path: Path | None, option: str, allowed=None) -> None:
    """A usage error (exit 2, before any work) for an output file of a format gmdm does not write."""
    from .image_io import ImageError, check_output_format

    if path is None or str(path) == "-":
        return
    if allowed is None:
        try:
            check_output_format(path)
        except ImageError as error:
            raise click.BadParameter(str(error), param_hint=option) from None
    elif path.suffix.lower() not in allowed:
        raise click.BadParameter(f"{shown(path)}: unknown output format '{path.suffix or '(none)'}' (use one of "
                                 f"{', '.join(allowed)})", param_hint=option)


def _model_file(name: str) -> Path | None:
    """The checkpoint file a --model names (None for a built-in model)."""
    return None if name in BUILTIN_NAMES.split(", ") else Path(name)


def _read_sigma_map(path: Path, max_pixels: int):
    """A --sigma-map as levels on the [0, 1] scale: a float array, every value in (0, 255] (as --sigma)."""
    from .denoisers import noise_level_problem
    from .image_io import read_image

    values, info = read_image(path, max_pixels=max_pixels or None)
    if not info.dtype.kind == "f" or not (values.ndim == 2 or (values.ndim == 3 and values.shape[2] == 3)):
        raise click.ClickException(f"{shown(path)}: a noise map must be a float array of H x W or H x W x 3 "
                                   "(.npy or float TIFF)")
    problem = noise_level_problem(values, 255)
    if problem:
        raise click.ClickException(f"{shown(path)}: noise map {problem}, like --sigma")
    return values / 255


def _write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError as error:
        if error.errno == errno.EPIPE:
            raise
        raise _BrokenOutput(f"<stdout>: cannot write ({error.strerror})") from None


@cli.command(short_help="Deblur, inpaint or upscale images with the same prior (HQS/ADMM).")
@_image_outputs
@click.option("--blur", "kernel_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Deblur: the blur kernel (point spread function) as an image or .npy/TIFF array; normalised.")
@click.option("--gaussian-blur", type=_Finite(min=0, max=64, min_open=True),
              help="Deblur a Gaussian blur of this std (pixels).")
@click.option("--motion-blur", help="Deblur a linear motion blur LENGTH,ANGLE (pixels, degrees counter-clockwise).")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Inpaint: a mask of the image's size, 0 (black) where a pixel is missing.")
@click.option("--scale", type=click.IntRange(2, 8), help="Upscale N times (the input was downsampled N x N).")
@click.option("--downsampler", type=click.Choice(DOWNSAMPLERS), default=DOWNSAMPLERS[0], show_default=True,
              help="With --scale: how the input was made smaller: N x N block means, or antialiased bicubic.")
@click.option("--sigma", type=_Finite(min=0, max=255),
              help="Noise standard deviation of the input on the 0-255 scale [default: estimated for a blur, 0 for "
                   "--mask and --scale].")
@click.option("--iterations", type=click.IntRange(1, 500),
              help="Prior steps [default: the task's schedule, tuned on training images: 16 (blur), 24 (mask, "
                   "scale)].")
@_model_option
@_device_option
@click.option("--tile", default="auto", show_default=True, callback=lambda ctx, param, value: _tile(value),
              help="Prior steps in tiles of N x N pixels (same result, bounded memory); 0: whole image; auto.")
@_max_pixels
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout.")
@_quiet
@_overwrite_option
def restore(inputs, output, output_dir, output_format, kernel_path, gaussian_blur, motion_blur, mask_path, scale,
            downsampler, sigma, iterations, model_name, device, tile, max_pixels, as_json, quiet, overwrite):
    """Restore INPUTS (PNG, TIFF, JPEG, BMP or .npy; '-' reads standard input) seen through one forward model:
    a blur (--blur, --gaussian-blur, --motion-blur), missing pixels (--mask) or a smaller size (--scale).

    Half-quadratic splitting with the GMDM prior (an ADMM form of it): prior steps are EB-PA's Tweedie estimate at
    a decreasing noise level, data steps are solved exactly (FFT, pixel by pixel, or a separable eigenbasis).
    Exit status: 0 all inputs done, 1 some failed (the others are still written), 2 usage error.
    """
    import gmdm_cli
    from .image_io import channel_count, check_output_format, colour_channels, encode_image, read_image, write_image
    from .restoration import SCHEDULES, task_of

    _check_outputs(inputs, output, output_dir, as_json)
    given = [name for name, value in (("--blur", kernel_path), ("--gaussian-blur", gaussian_blur),
                                      ("--motion-blur", motion_blur), ("--mask", mask_path), ("--scale", scale))
             if value is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --blur, --gaussian-blur, --motion-blur, --mask and --scale")
    if downsampler != DOWNSAMPLERS[0] and scale is None:
        raise click.UsageError("--downsampler goes with --scale")
    kernel = _restore_kernel(kernel_path, gaussian_blur, motion_blur, max_pixels)
    mask = read_image(mask_path, max_pixels=max_pixels or None)[0] if mask_path is not None else None
    targets = _output_files(inputs, output, output_dir, output_format)
    read = [*inputs, kernel_path, mask_path, _model_file(model_name)]
    if output_dir is not None:
        _output_folder(output_dir)
    model = _load_model(model_name, _device(device))
    task = task_of(kernel, mask, scale)
    steps = iterations or SCHEDULES[task].iterations
    to_stdout = str(output) == "-"
    extension = f".{output_format}" if output_format else ".png"

    def one(path: Path, target: Path, image, info) -> tuple[dict, str]:
        started = time.perf_counter()
        check_output_format(f"<stdout>{extension}" if to_stdout else target, channel_count(image))
        if scale is not None and max_pixels and image.shape[0] * image.shape[1] * scale**2 > max_pixels:
            raise click.ClickException(f"the result ({scale * image.shape[1]}x{scale * image.shape[0]}) would be "
                                       f"larger than --max-pixels {max_pixels}")
        with _progress("restoring", colour_channels(image) * steps) as advance:
            result = gmdm_cli.restore(image, kernel=kernel, mask=mask, scale=scale, downsampler=downsampler,
                                      sigma=None if sigma is None else sigma / 255, model=model,
                                      iterations=steps, tile=tile, progress=advance)
        if to_stdout:
            _write_stdout(encode_image(result, extension, info.dtype))
        else:
            write_image(target, result, dtype=info.dtype, overwrite=overwrite)
        seconds = time.perf_counter() - started
        record = {"output": str(target), "task": task, "model": model_name, "iterations": steps,
                  "seconds": round(seconds, 3), "shape": list(result.shape[:2])}
        if sigma is not None:
            record["sigma"] = sigma
        return record, f"{shown(path)} -> {shown(target)} ({task}, {steps} steps, {seconds:.2f} s)"

    checked = [[] if to_stdout else [target] for target in targets]
    _run_batch(inputs, zip(targets, checked), one, quiet, as_json, max_pixels, read, overwrite, results_on_stdout=False,
               spinner=False)


def _restore_kernel(path: Path | None, gaussian: float | None, motion: str | None, max_pixels: int):
    """The blur kernel of ``restore``'s options (not yet normalised or checked against an image), or None."""
    from .restoration import gaussian_kernel, motion_kernel

    if gaussian is not None:
        return gaussian_kernel(gaussian)
    if motion is not None:
        try:
            length, angle = (float(part) for part in motion.split(","))
            return motion_kernel(length, angle)
        except ValueError as error:
            detail = str(error) if "motion blur" in str(error) else "expected LENGTH,ANGLE (e.g. 15,30)"
            raise click.BadParameter(f"'{motion}': {detail}", param_hint="--motion-blur") from None
    if path is None:
        return None
    from .image_io import read_image

    return read_image(path, max_pixels=max_pixels or None)[0]


@cli.command(short_help="Denoise a built-in picture and print the PSNRs (no data needed).")
@click.option("--image", type=click.Choice(["camera", "astronaut", "coins", "moon"]), default="camera",
              show_default=True, help="Image that ships with scikit-image (colour ones are used as gray).")
@click.option("--sigma", default=25.0, show_default=True, type=_Finite(min=0, max=255, min_open=True),
              help="Noise standard deviation on the 0-255 scale.")
@_seed_option("Seed of the noise.")
@_model_option
@_device_option
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write clean.png, noisy.png and denoised.png here (the folder is created if missing).")
@_overwrite_option
def demo(image, sigma, seed, model_name, device, output_dir, overwrite):
    """Denoise a noisy scikit-image picture and print the PSNRs: no data of yours needed."""
    from .diagnostics import demo_run
    from .image_io import write_image

    targets = [output_dir / f"{name}.png" for name in ("clean", "noisy", "denoised")] if output_dir else []
    if output_dir is not None:
        _output_folder(output_dir)
        for target in targets:
            _check_target(target, overwrite)
    run = demo_run(image, sigma / 255, seed, _load_model(model_name, _device(device)))
    height, width = run["clean"].shape
    _out(f"{image} ({width}x{height}), sigma {sigma:g}: noisy {run['noisy_psnr']:.2f} dB, "
         f"EB-PA {model_name} {run['denoised_psnr']:.2f} dB ({run['seconds']:.2f} s)")
    for target, name in zip(targets, ("clean", "noisy", "denoised")):
        write_image(target, run[name], overwrite=overwrite)
    if output_dir is not None:
        click.echo(f"wrote clean.png, noisy.png, denoised.png to {shown(output_dir)}", err=True)


@cli.command(short_help="Draw patches from a model, or whole images by annealed Langevin.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help=".png: a tiled grid (every patch stretched to [0, 1]); .npy: the raw float values.")
@_model_option
@click.option("--sigma", "sigma_text", default="0", show_default=True,
              help="Noise level(s) of the patches, 0-255 scale; comma-separated for one grid row block each "
                   "(Fig. 2). With --size: the level the annealing ends at (at least 2.55).")
@click.option("-n", "count", type=click.IntRange(1, 1_000_000),
              help="Patches per noise level, or images with --size.  [default: 64 patches, 1 image]")
@click.option("--size", help="Sample whole images of HEIGHTxWIDTH by annealed Langevin dynamics instead.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1),
              help="Langevin updates per noise level (with --size).")
@_seed_option("Seed of the random draws.")
@_device_option
@_overwrite_option
def sample(output, model_name, sigma_text, count, size, steps, seed, device, overwrite):
    """Draw patches exactly from the model (Corollary 2.1), or whole images by annealed Langevin."""
    import torch

    from .image_io import write_image
    from .sampling import image_strip, langevin_schedule, patch_draws, sample_image

    sigmas = _sigmas(sigma_text, "--sigma")
    _check_format(output, "-o/--output", (".png", ".npy"))
    shape = _sample_size(size, count or 1) if size is not None else None
    _check_target(output, overwrite, [_model_file(model_name)])
    model = _load_model(model_name, _device(device), exact_patches=size is None)
    generator = torch.Generator(device=model.logits.device).manual_seed(seed)
    if size is None:
        array, picture = patch_draws(model, count or 64, [s / 255 for s in sigmas], generator)
    else:
        if min(shape) < model.smallest_side():
            raise click.BadParameter(f"{size}: each side at least {model.smallest_side()}", param_hint="--size")
        schedule = langevin_schedule(0.4, max(sigmas[-1], 2.55) / 255)
        with _progress("sampling", len(schedule)) as advance:
            draws = sample_image(model, *shape, count or 1, generator, schedule, steps, progress=advance)
        array = draws[:, 0].double().cpu().numpy()
        picture = image_strip(array)
    write_image(output, array if output.suffix.lower() == ".npy" else picture, overwrite=overwrite)
    click.echo(f"wrote {shown(output)}", err=True)


SAMPLE_PIXELS = 4096 * 4096


def _sample_size(text: str, count: int) -> tuple[int, int]:
    """--size as ``(height, width)``, refused before any work if one image is over 16 Mpixel or all of them would
    need more memory than this machine has."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not HEIGHTxWIDTH", param_hint="--size") from None
    if min(height, width) < 2 or height * width > SAMPLE_PIXELS:
        raise click.BadParameter(f"{text}: each side at least 2, at most 16 Mpixel", param_hint="--size")
    from .sampling import sample_memory

    needed = sample_memory(count, height, width)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if available and needed > available:
        raise click.BadParameter(f"{count} image(s) of {height}x{width} would need about {needed / 2**30:.1f} GiB "
                                 f"of memory (this machine has {available / 2**30:.1f} GiB); draw fewer or smaller "
                                 f"images", param_hint="--size")
    return height, width


@cli.command(short_help="Plot a model's filters and potentials (the paper's Fig. 1).")
@click.argument("model_name", metavar="MODEL")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure to write (.png, .pdf or .svg).")
@click.option("--images", "image_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of images: adds their empirical response marginals and prints the NMSE.")
@click.option("--sigmas", "sigma_text", default="0,12.75,25.5,51", show_default=True,
              help="Noise levels (0-255 scale) of the potentials and marginals.")
@click.option("--patches", default=100_000, show_default=True, type=click.IntRange(100),
              help="Random patches drawn from --images.")
@click.option("--max-filters", default=48, show_default=True, type=click.IntRange(1),
              help="Show the experts of the largest filter norms, at most this many.")
@_seed_option("Seed of the random draws.")
@_overwrite_option
def inspect(model_name, output, image_dir, sigma_text, patches, max_filters, seed, overwrite):
    """Plot MODEL's filters and potentials (Fig. 1); with --images, its fit to their statistics."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise click.ClickException("gmdm inspect needs matplotlib: pip install 'gmdm-cli[plots]'")
    import torch

    from .diagnostics import KAPPAS, inspect_figure, nmse
    from .training import PatchSampler, TrainingDataError, find_images, load_training_images

    sigmas = [s / 255 for s in _sigmas(sigma_text, "--sigmas")]
    _check_format(output, "-o/--output", (".png", ".pdf", ".svg"))
    _check_target(output, overwrite, [_model_file(model_name)])
    model = _load_model(model_name, torch.device("cpu"), exact_patches=True)
    generator = torch.Generator().manual_seed(seed)
    samples = None
    if image_dir is not None:
        try:
            images = load_training_images(find_images([image_dir]), model.patch_size)
        except TrainingDataError as error:
            raise click.ClickException(str(error)) from None
        samples = PatchSampler(images, model.patch_size).sample(patches, generator).to(model.filters.dtype)
        _out("sigma (0-255)  " + "  ".join(f"NMSE k={k:<6g}" for k in KAPPAS))
        for sigma in sigmas:
            errors = nmse(model, samples, sigma, generator=generator)
            _out(f"{255 * sigma:13g}  " + "  ".join(f"{errors[k]:12.4f}" for k in KAPPAS))
    inspect_figure(model, output, sigmas, samples, max_filters, generator, overwrite)
    click.echo(f"wrote {shown(output)}", err=True)


@cli.command("estimate-noise", short_help="Estimate the noise level, its noise model and per-pixel maps.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_model_option
@click.option("--map", "noise_map", is_flag=True,
              help="Also write the per-pixel noise levels of the noise model: <stem>_noise_map.tif (float32, "
                   "0-255; colour: one per RGB channel) and <stem>_noise_map.png (colour-mapped with a scale bar).")
@click.option("--nlf", is_flag=True,
              help="Report the noise-level function sigma^2 = a x + b of the intensity x in [0, 1] (camera noise: "
                   "a photon, b read noise), with its binned curve in --json.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="With one input: a figure of the noise level against the intensity (binned, and the fitted "
                   "noise-level function) here (.png, .pdf or .svg; needs 'gmdm-cli[plots]').")
@_noise_model_option("The noise model of --map")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the maps here instead of beside each input (the folder is created if missing).")
@click.option("--estimator", type=click.Choice(ESTIMATORS), default=ESTIMATORS[0],
              show_default=True,
              help="Global estimate: the argmin over t of the mean energy in the flattest regions (flat), of the "
                   "experts that content raises least (quiet), or of all patches (mean-energy, the paper's Fig. 4; "
                   "biased by texture); auto: flat below sigma 20, quiet above 40, blended between.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout.")
@_device_option
@_max_pixels
@_quiet
@_overwrite_option
def estimate_noise(inputs, model_name, noise_map, nlf, plot_path, noise_model, output_dir, estimator, as_json, device,
                   max_pixels, quiet, overwrite):
    """Estimate the noise of INPUTS (0-255 scale): its global level, and which noise model explains it (one level,
    a noise-level function of the intensity, or a spatial map), with --map per pixel.

    '-' reads an image from standard input (its maps need --output-dir). Exit status: 0 all inputs done,
    1 some failed (the others are still measured), 2 usage error.
    """
    import gmdm_cli
    from .figures import write_nlf_plot

    maps = _noise_map_targets(inputs, noise_map, output_dir, plot_path)
    read = [*inputs, _model_file(model_name)]
    if plot_path is not None:
        _check_target(plot_path, overwrite, read)
    if output_dir is not None:
        _output_folder(output_dir)
    model = _load_model(model_name, _device(device))
    for note in _calibration_notes(model, model_name, estimator):
        if not quiet:
            click.echo(note, err=True)

    def one(path: Path, targets, image, info) -> tuple[dict, str]:
        sigma, levels, estimates = gmdm_cli.estimate_noise(image, True, model, estimator, noise_model,
                                                           return_estimates=True)
        record = {"sigma": round(255 * sigma, 3), "estimator": estimator, **_noise_models_record(estimates, nlf)}
        for target in targets:
            _write_levels_noted(target, 255 * levels, overwrite)
        if targets:
            record.update(noise_map_tif=str(targets[0]), noise_map_png=str(targets[1]),
                          map_mean=round(float(255 * levels.mean()), 3))
        if plot_path is not None:
            write_nlf_plot(plot_path, estimates, overwrite)
            record["plot"] = str(plot_path)
        line = (f"{shown(path)}: sigma {record['sigma']:.2f}, noise model "
                f"{'/'.join(estimate.model for estimate in estimates)}"
                + (f" (maps: {shown(targets[0])}, {shown(targets[1])})" if targets else ""))
        return record, "\n".join([line, *(_nlf_lines(estimates) if nlf else [])])

    # an input's maps are both what it writes and what must not exist yet
    _run_batch(inputs, zip(maps, maps), one, quiet, as_json, max_pixels, read, overwrite, results_on_stdout=True)


def _noise_map_targets(inputs, noise_map: bool, output_dir: Path | None, plot_path: Path | None) -> list:
    """``estimate-noise``'s usage rules (exit 2 before any work), and the map files of every input."""
    if noise_map and output_dir is None and any(str(path) == "-" for path in inputs):
        raise click.UsageError("--map of standard input ('-') needs --output-dir")
    if plot_path is not None and len(inputs) > 1:
        raise click.UsageError("--plot takes a single input")
    _check_format(plot_path, "--plot", (".png", ".pdf", ".svg"))
    maps = [_map_targets(path, output_dir) if noise_map else () for path in inputs]
    _check_distinct([target for pair in maps for target in pair] + ([plot_path] if plot_path else []),
                    "several maps (inputs with the same file name) or a map and the --plot")
    return maps


def _calibration_notes(model, name: str, estimator: str) -> list[str]:
    """What ``estimate-noise`` says of a model whose noise estimates lack a calibration."""
    from .noise import calibration_for

    notes = []
    if estimator == "auto" and calibration_for(model, "quiet") is None:
        notes.append(f"note: model {name} has no 'quiet' calibration; 'auto' is the flat estimate alone "
                     "(see gmdm calibrate)")
    measured = "flat" if estimator == "auto" else estimator
    if calibration_for(model, measured) is None:
        notes.append(f"note: model {name} has no calibration for the '{measured}' estimator; estimates are raw "
                     "(see gmdm calibrate)")
    return notes


def _map_targets(path: Path, output_dir: Path | None) -> tuple[Path, Path]:
    """The two noise-map files of an input: ``<stem>_noise_map.tif`` and ``.png``, in --output-dir or beside it."""
    folder = output_dir if output_dir is not None else (path.parent if str(path.parent) else Path("."))
    stem = "stdin" if str(path) == "-" else path.stem
    return folder / f"{stem}_noise_map.tif", folder / f"{stem}_noise_map.png"


@cli.command(short_help="Calibrate a model's noise estimates on clean images.")
@click.argument("model_name", metavar="MODEL")
@click.argument("image_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write: MODEL with the calibration added to its metadata (a new file).")
@click.option("--images", "count", default=40, show_default=True, type=click.IntRange(1),
              help="Use this many images, evenly spread over the sorted list.")
@click.option("--levels", help="Noise levels (0-255, comma-separated, at least two) at which to measure the "
                                "estimators [default: 14 levels from 0 to 100].")
@_seed_option("Seed of the synthetic noise.")
@click.option("--estimator", "estimators", multiple=True,
              type=click.Choice(RAW_ESTIMATORS),
              help="Calibrate only these (repeatable) and keep the model's other curves [default: all three]. "
                   "quiet also chooses its experts (needs a level of at least 15).")
@click.option("--keep-experts", is_flag=True,
              help="quiet keeps the model's quiet experts instead of choosing them again (its flat curve was "
                   "measured with them).")
@click.option("--uncertainty", is_flag=True,
              help="Calibrate the posterior std of EB-PA (denoise --uncertainty) instead, at --levels [default: 5, "
                   "15, 25, 50, 100]; the noise calibration is kept.")
@_overwrite_option
def calibrate(model_name, image_dirs, output, count, levels, seed, estimators, keep_experts, uncertainty, overwrite):
    """Calibrate MODEL's noise estimates (or, with --uncertainty, its posterior std) on clean images in IMAGE_DIRS
    (use training images)."""
    from .checkpoint import model_from_checkpoint, read_checkpoint, resolve_model_path, save_checkpoint
    from .calibration import CALIBRATION_LEVELS, UNCERTAINTY_LEVELS
    from .training import find_images, load_training_images, spread

    default = UNCERTAINTY_LEVELS if uncertainty else CALIBRATION_LEVELS
    sigmas = sorted(set(_sigmas(levels, "--levels"))) if levels else list(default)
    if len(sigmas) < 2 or (uncertainty and sigmas[0] <= 0):
        raise click.BadParameter(f"'{levels}' is not a list of at least two (positive) levels", param_hint="--levels")
    paths = spread(find_images(image_dirs), count)
    _check_target(output, overwrite, [resolve_model_path(model_name), *paths])
    payload = read_checkpoint(resolve_model_path(model_name))
    model = model_from_checkpoint(payload)
    images = [image.astype("float64") for image in load_training_images(paths, model.smallest_side())]
    data = ", ".join(str(d) for d in image_dirs)
    if uncertainty:
        fields, lines = _uncertainty_fields(model, images, sigmas, seed, data)
    else:
        fields, lines = _noise_fields(model, images, sigmas, seed, estimators, data, keep_experts)
    save_checkpoint(output, model, {**payload["metadata"], **fields}, payload.get("training"), overwrite)
    for line in lines:
        _out(line)
    click.echo(f"wrote {shown(output)}", err=True)


def _uncertainty_fields(model, images, sigmas, seed: int, data: str) -> tuple[dict, list[str]]:
    """``calibrate --uncertainty``: the checkpoint field and the lines that report it."""
    from .calibration import calibrate_uncertainty

    curve = {**calibrate_uncertainty(model, images, sigmas, seed), "data": data}
    lines = [f"sigma {true:5g}: std = sigma exp({curve['alpha'][row] / 2:.3f}) (own/sigma^2)^"
             f"{curve['own'][row] / 2:.3f} (spread/sigma^2)^{curve['spread'][row] / 2:.3f}"
             for row, true in enumerate(sigmas)]
    return {"uncertainty_calibration": curve}, lines


def _noise_fields(model, images, sigmas, seed: int, estimators, data: str,
                  keep_experts: bool = False) -> tuple[dict, list[str]]:
    """``calibrate``: the noise calibration (new curves, the model's others kept) and the table that reports it."""
    from .calibration import CALIBRATED, calibrate_noise
    from .noise import calibration_for

    calibration = calibrate_noise(model, images, sigmas, seed=seed, estimators=estimators or CALIBRATED,
                                  choose_experts=not keep_experts)
    kept = {name: calibration_for(model, name) for name in CALIBRATED if name not in calibration}
    curves = {**{name: curve for name, curve in kept.items() if curve},
              **{name: {**curve, "data": data} for name, curve in calibration.items()}}
    lines = ["sigma  " + "  ".join(f"{name:>12}" for name in calibration) + "   (mean raw estimates)"]
    lines += [f"{true:5g}  " + "  ".join(f"{255 * curve['raw'][row]:12.2f}" for curve in calibration.values())
              for row, true in enumerate(sigmas)]
    return {"noise_calibration": curves}, lines


def _sure_levels_record(levels) -> list:
    """The level (0-255) that SURE chose for each channel of a gray or colour image, None for one with a map."""
    import numpy as np

    from .denoisers import single_level

    values = np.asarray(levels)
    channels = [values] if values.ndim < 3 else [values[..., k] for k in range(values.shape[-1])]
    return [None if level is None else round(255 * level, 3) for level in map(single_level, channels)]


def _noise_used(sigma, levels, estimates) -> tuple[str, dict]:
    """How ``denoise`` saw the noise of one input: words for its line, and its JSON fields (the level, or the
    map's mean and, when blind, the noise models)."""
    if levels is None:
        return f"sigma {sigma:g}", {"sigma": sigma}
    mean = 255 * float(levels.mean())
    if not estimates:
        return f"noise map, mean sigma {mean:.2f}", {"sigma_map_mean": round(mean, 3)}
    chosen = "/".join(estimate.model for estimate in estimates)
    return (f"blind: {chosen} noise, mean sigma {mean:.2f}",
            {"sigma_map_mean": round(mean, 3), **_noise_models_record(estimates, False),
             "noise_estimates": [estimate.summary() for estimate in estimates]})


def _noise_models_record(estimates, nlf: bool) -> dict:
    """The JSON fields of the noise models of a gray image or of each RGB channel: the chosen ``noise_model``,
    and with ``nlf`` the noise-level function's ``a``, ``b`` and binned curve."""
    one = len(estimates) == 1
    chosen = [estimate.model for estimate in estimates]
    record = {"noise_model": chosen[0] if one else chosen}
    if nlf:
        fits = [{"a": e.nlf[0], "b": e.nlf[1], "curve": e.summary()["nlf"]["curve"]} for e in estimates]
        record["nlf"] = fits[0] if one else fits
    return record


def _nlf_lines(estimates) -> list[str]:
    """One line per gray or RGB channel: its noise-level function and the levels it gives (0-255)."""
    names = ("",) if len(estimates) == 1 else ("R ", "G ", "B ")
    lines = []
    for name, estimate in zip(names, estimates):
        a, b = estimate.nlf
        levels = " / ".join(f"{255 * (a * x + b) ** 0.5:.2f}" for x in (0.1, 0.5, 0.9))
        lines.append(f"  {name}noise-level function: sigma^2 = {a:.3g} x + {b:.3g} (x, sigma in [0, 1]); "
                     f"sigma at x = 0.1 / 0.5 / 0.9: {levels}")
    return lines


def _write_levels_noted(path: Path, levels, overwrite: bool, label: str = "noise sigma (0-255)") -> None:
    """:func:`gmdm_cli.figures.write_levels`, and its note on standard error."""
    from .figures import write_levels

    note = write_levels(path, levels, overwrite, label)
    if note:
        click.echo(note, err=True)


def _terminate(signum, frame):
    """SIGTERM (and SIGHUP) end the run like SIGINT does: through the ``finally`` blocks that remove temporary
    files, with the shell's status 128 + the signal's number."""
    raise SystemExit(128 + signum)


def main():
    """The ``gmdm`` entry point: signals that end the run clean up; a standard output that cannot be written
    (a full disk, ``> /dev/full``) is one error line and status 1, not a traceback at exit."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _terminate)
    status = 0
    try:
        cli(prog_name="gmdm")
    except SystemExit as exit:
        status = exit.code
    try:
        sys.stdout.flush()
    except OSError as error:
        if error.errno != errno.EPIPE and not status:  # not yet reported
            click.echo(f"Error: <stdout>: cannot write ({error.strerror})", err=True)
        status = status or 1
        devnull = os.open(os.devnull, os.O_WRONLY)  # the interpreter's own flush at exit must not fail again
        os.dup2(devnull, sys.stdout.fileno())
    return status


if __name__ == "__main__":
    sys.exit(main())
