"""Training a patch GMDM by denoising score matching over all diffusion times (Eq. 4, Sec. 4.1).

One step: draw ``B`` random ``b x b`` training patches ``x`` (under the 8 rotations and flips),
noise levels ``sigma = sqrt(2t) ~ U[0, sigma_max]`` (one per patch), ``y = x + sigma n``, and
minimise the mean over the batch of ``||x - y - sigma^2 grad log f(y, t)||`` (Eq. 4 as the paper
writes it: the norm of each patch's residual, not its square; ``loss="squared"`` gives the common
squared form, per pixel). The optimiser is Adam on ``(filters, logits)``; after every update the
filters are put back on the constraint set by Algorithm 1 (zero mean, pairwise orthogonal).

The band model (``model_type="conv"``, :mod:`gmdm_cli.band_model`) trains the same way on random square
crops of ``patch_size`` pixels (a multiple of its ``bands``): only its expert weights are learnt.

Under ``torchrun --nproc_per_node=N`` the batch is split over N processes (gloo on CPU, nccl on CUDA) and
``DistributedDataParallel`` averages the gradients: every process draws the same global batch from the same
random stream and trains on its ``B / N`` rows, so the run follows the one-process run up to the order of
floating-point sums, and ``--resume`` works alike.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import GmdmError
from .image_io import IMAGE_EXTENSIONS, ImageError, read_image, shown, to_gray
from .choices import LOSSES, OPTIMIZERS, TRAINING
from .kinds import GMDM, kind_class, kind_of_format
from .model import time_from_sigma
from .projection import orthogonal_projection


class TrainingDataError(GmdmError):
    """Training images that cannot be used; the message says which and why."""


class TrainingSetupError(GmdmError):
    """Options that do not fit the run (e.g. a batch that does not split over the processes)."""


def find_images(folders: list[str | Path]) -> list[Path]:
    """All image files (by extension) directly inside ``folders``, sorted."""
    paths = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise TrainingDataError(f"{folder}: not a folder")
        paths += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise TrainingDataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
                                f"{', '.join(map(str, folders))}")
    return paths


def spread(paths: list[Path], count: int) -> list[Path]:
    """``count`` of ``paths`` spread evenly over the list: every ``(len / count)``-th, from the first."""
    return paths[:: max(1, len(paths) // count)][:count]


def load_training_images(paths: list[Path], patch_size: int) -> list[np.ndarray]:
    """The images at ``paths`` as gray float32 arrays; colour is reduced to luma."""
    images = []
    for path in paths:
        try:
            image, _ = read_image(path)
        except ImageError as error:
            raise TrainingDataError(str(error)) from None
        image = to_gray(image).astype(np.float32)
        if min(image.shape) < patch_size:
            raise TrainingDataError(f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than "
                                    f"the {patch_size}x{patch_size} patches")
        images.append(image)
    return images


class PatchSampler:
    """Uniformly random ``b x b`` patches of a set of images, each under a random one of the
    8 rotations/flips. All pixels live in one flat tensor; a batch is a single gather."""

    def __init__(self, images: list[np.ndarray], patch_size: int, device="cpu"):
        b = patch_size
        self.patch_size = b
        self.pixels = torch.from_numpy(np.concatenate([im.ravel() for im in images])).to(device)
        heights = torch.tensor([im.shape[0] for im in images])
        widths = torch.tensor([im.shape[1] for im in images])
        sizes = heights * widths
        self.offsets = (torch.cumsum(sizes, 0) - sizes).to(device)
        self.widths = widths.to(device)
        self.columns = (widths - b + 1).to(device)
        positions = (heights - b + 1) * (widths - b + 1)
        self.cumulative = torch.cumsum(positions, 0).to(device)
        self.starts = self.cumulative - positions.to(device)  # first patch index of each image
        grid_r, grid_c = torch.meshgrid(torch.arange(b), torch.arange(b), indexing="ij")
        self.grid_r, self.grid_c = grid_r.reshape(-1).to(device), grid_c.reshape(-1).to(device)
        index = torch.arange(b * b).view(b, b)
        transforms = [torch.rot90(index, k, (0, 1)) for k in range(4)]
        transforms += [t.flip(1) for t in transforms]
        self.transforms = torch.stack([t.reshape(-1) for t in transforms]).to(device)  # (8, a)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``(count, b*b)`` patches, float32."""
        device = self.pixels.device
        total = int(self.cumulative[-1])
        position = torch.randint(total, (count,), generator=generator, device=device)
        image = torch.searchsorted(self.cumulative, position, right=True)
        within = position - self.starts[image]
        row, col = within // self.columns[image], within % self.columns[image]
        flat = (self.offsets[image, None] + (row[:, None] + self.grid_r) * self.widths[image, None]
                + col[:, None] + self.grid_c)
        patches = self.pixels[flat]
        transform = torch.randint(8, (count,), generator=generator, device=device)
        return patches.gather(1, self.transforms[transform])




def dsm_loss(model: GMDM, clean: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             loss: str = "norm") -> torch.Tensor:
    """Denoising score matching (Eq. 4) with ``y = x + sigma n`` and ``x_EB(y) = y + sigma^2 grad log f(y, t)``.

    ``"norm"``: the mean over patches of ``||x - x_EB(y)||``, Eq. 4 as written. Against the square it
    weights each patch by ``1 / ||residual||``, which is ~``1 / sigma``: low noise levels count more.
    ``"squared"``: the mean of ``||x - x_EB(y)||^2 / a`` (per pixel).
    ``"noise"``: the mean of ``||x - x_EB(y)||^2 / (sigma^2 a)`` = ``||n + sigma grad log f(y, t)||^2 / a``, the
    noise-prediction form of diffusion models: weight ``1 / sigma^2`` against the square.
    """
    noisy = clean + sigma[:, None] * noise
    residual = model(noisy, time_from_sigma(sigma)) - clean  # patch_tweedie, through the module (or DDP)
    if loss == "squared":
        return residual.pow(2).mean()
    if loss == "noise":  # at sigma = 0 the residual is exactly 0, and so is its term
        return (residual / sigma.clamp_min(torch.finfo(residual.dtype).tiny)[:, None]).pow(2).mean()
    if loss != "norm":
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    return residual.pow(2).sum(1).clamp_min(torch.finfo(residual.dtype).tiny).sqrt().mean()


@dataclass
class TrainingConfig:
    """A training run's settings; the defaults are :data:`gmdm_cli.choices.TRAINING` (those of ``gmdm train``)."""

    patch_size: int = TRAINING["patch_size"]
    steps: int = TRAINING["steps"]
    batch_size: int = TRAINING["batch_size"]
    learning_rate: float = TRAINING["learning_rate"]
    final_learning_rate: float = TRAINING["learning_rate"] / 100
    sigma_max: float = TRAINING["sigma_max"]
    projection_steps: int = 3
    seed: int = TRAINING["seed"]
    loss: str = TRAINING["loss"]
    optimizer: str = TRAINING["optimizer"]  # "ipalm": the paper's optimiser (IPALM below)
    model_type: str = TRAINING["model_type"]  # "conv": the band model of gmdm_cli.band_model, on patch_size crops
    bands: int = TRAINING["bands"]


def learning_rate(config: TrainingConfig, step: int) -> float:
    """Cosine decay from ``learning_rate`` to ``final_learning_rate`` over ``steps``."""
    progress = min(step / max(config.steps, 1), 1.0)
    low, high = config.final_learning_rate, config.learning_rate
    return low + 0.5 * (high - low) * (1 + math.cos(math.pi * progress))


def distributed_setup(device: torch.device) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` of this process: ``(0, 1, device)`` alone, and under ``torchrun`` the
    process group (nccl for CUDA, gloo otherwise) is joined and CUDA processes take their local GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, device


def _unconstrained(block: torch.Tensor) -> torch.Tensor:
    return block


class IPALM:
    """iPALM (Pock and Sabach, 2016), the optimiser of the paper's Sec. 4.1. Each step takes the parameter blocks
    in turn (the filters, then the weights' logits): an inertial point ``z = x + inertia (x - x_previous)``, a
    gradient step ``1 / L`` from it on the batch's loss ``H``, then the block's proximal map (for the filters
    Algorithm 1, the projection of Eq. 19; the logits have none). ``L`` is found by backtracking: halved at each
    step, then doubled until ``H(x_new) <= H(z) + <grad H(z), x_new - z> + L / 2 ||x_new - z||^2``."""

    MAX_DOUBLINGS = 60

    def __init__(self, blocks: list[torch.Tensor], projections: list, inertia: float = 2**-0.5):
        self.blocks, self.projections, self.inertia = blocks, projections, inertia
        self.previous = [block.detach().clone() for block in blocks]
        self.lipschitz = [1.0] * len(blocks)

    def step(self, loss_function) -> float:
        """Update every block for the batch that ``loss_function()`` evaluates; returns the loss at the first
        inertial point."""
        first = None
        for i, (block, project) in enumerate(zip(self.blocks, self.projections)):
            current = block.detach().clone()
            with torch.no_grad():
                block.add_(current - self.previous[i], alpha=self.inertia)
            point = block.detach().clone()
            value = loss_function()
            gradient, = torch.autograd.grad(value, block)
            value = value.detach()
            first = value.item() if first is None else first
            tolerance = 8 * torch.finfo(block.dtype).eps * value.abs()  # the loss's own rounding
            self.lipschitz[i] /= 2
            for _ in range(self.MAX_DOUBLINGS):
                with torch.no_grad():
                    candidate = project(point - gradient / self.lipschitz[i])
                    change = candidate - point
                    block.copy_(candidate)
                    bound = value + (gradient * change).sum() + self.lipschitz[i] / 2 * change.pow(2).sum()
                    if loss_function() <= bound + tolerance:  # one device synchronisation per trial
                        break
                self.lipschitz[i] *= 2
            self.previous[i] = current
        return first

    def state_dict(self) -> dict:
        return {"previous": [block.clone() for block in self.previous], "lipschitz": list(self.lipschitz)}

    def load_state_dict(self, state: dict) -> None:
        self.previous = [saved.to(block) for saved, block in zip(state["previous"], self.blocks)]
        self.lipschitz = [float(value) for value in state["lipschitz"]]


class Trainer:
    """State of a training run: model, optimiser (Adam or :class:`IPALM`), RNG and step count; checkpointable at
    any step.

    With ``world_size > 1`` (a process group is initialised) this process trains on rows
    ``rank * B / N ... (rank + 1) * B / N`` of every global batch through ``DistributedDataParallel``.
    """

    def __init__(self, config: TrainingConfig, sampler: PatchSampler, device="cpu",
                 model: GMDM | None = None, rank: int = 0, world_size: int = 1):
        if config.optimizer not in OPTIMIZERS:
            raise TrainingSetupError(f"unknown optimizer {config.optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
        if config.optimizer == "ipalm" and world_size > 1:
            raise TrainingSetupError("--optimizer ipalm runs in one process (not under torchrun)")
        if config.batch_size % world_size:
            raise TrainingSetupError(f"--batch-size {config.batch_size} does not split evenly over "
                                     f"{world_size} processes")
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.sampler = sampler
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        try:
            kind_class(config.model_type).check_training(config)
        except ValueError as error:
            raise TrainingSetupError(str(error)) from None
        if model is None:
            model = kind_class(config.model_type).for_training(config)
            self._project(model)
        self.model = model.to(self.device)
        self.network = self.model
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.network = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if config.optimizer == "ipalm":
            projected = [getattr(self.model, name) for name in self.model.projected]
            self.optimizer = IPALM(projected + [self.model.logits],
                                   [self._filter_projection] * len(projected) + [_unconstrained])
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.step = 0

    def _filter_projection(self, filters: torch.Tensor) -> torch.Tensor:
        return orthogonal_projection(filters, self.config.projection_steps)

    def _project(self, model) -> None:
        """Put ``model``'s projected parameters (the patch model's filters) back on the zero-mean orthogonal set."""
        with torch.no_grad():
            for name in model.projected:
                getattr(model, name).copy_(self._filter_projection(getattr(model, name)))

    def train_step(self) -> float:
        """One update on a fresh batch (Adam then Algorithm 1, or one :class:`IPALM` step); returns the batch loss."""
        config = self.config
        clean = self.sampler.sample(config.batch_size, self.generator)
        sigma = config.sigma_max * torch.rand(config.batch_size, generator=self.generator, device=self.device)
        noise = torch.randn(clean.shape, generator=self.generator, device=self.device)
        if config.optimizer == "ipalm":
            loss = self.optimizer.step(lambda: dsm_loss(self.model, clean, sigma, noise, config.loss))
            self.step += 1
            return loss
        rows = slice(self.rank * config.batch_size // self.world_size,
                     (self.rank + 1) * config.batch_size // self.world_size)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, self.step)
        loss = dsm_loss(self.network, clean[rows], sigma[rows], noise[rows], config.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DistributedDataParallel averages the gradients over the processes here
        self.optimizer.step()
        self._project(self.model)
        self.step += 1
        if self.world_size > 1:
            import torch.distributed as dist

            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= self.world_size
        return loss.item()

    def state(self) -> dict:
        """Everything ``--resume`` needs besides the model: plain tensors and numbers."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "generator_device": self.device.type,
            "config": dict(vars(self.config)),
        }

    def restore(self, state: dict) -> bool:
        """Take up ``state``; ``True`` if its random stream continues exactly. A generator's state is only
        valid on its own device type, so a run taken up on another one draws from a fresh stream, seeded
        from the seed and the step (deterministic, but not the batches an uninterrupted run would draw)."""
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        if generator_device(state) == self.device.type:
            self.generator.set_state(state["generator"])
            return True
        self.generator.manual_seed(self.config.seed * 1_000_003 + self.step)
        return False


def generator_device(state: dict) -> str:
    """The device type of a saved training state's random generator (older checkpoints do not record it:
    a CPU generator's state is thousands of bytes, a CUDA one's 16)."""
    return state.get("generator_device", "cpu" if state["generator"].numel() > 16 else "cuda")


LOG_EVERY = 100
LOG_HEADER = "# gmdm train log: step, mean loss of the last 200 steps, seconds"


def check_log(path: Path, resume: bool) -> None:
    """A ``--log`` file may be new, or, with ``resume``, a gmdm training log to append to; any other existing file
    (a training image, a checkpoint, someone's notes) is refused, never appended to."""
    if not path.exists():
        return
    if not resume:
        raise TrainingSetupError(f"{shown(path)}: exists (give a new log file, or --resume to append to its run's log)")
    try:
        with open(path, "rb") as file:
            first = file.readline(200).decode("utf-8").split()
    except (OSError, UnicodeDecodeError):
        first = []
    if " ".join(first) != LOG_HEADER and not (len(first) == 3 and all(_is_number(field) for field in first)):
        raise TrainingSetupError(f"{shown(path)}: not a gmdm training log (refusing to append to it)")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _open_log(path: Path):
    """The log file for appending; a new one starts with :data:`LOG_HEADER`."""
    new = not path.exists()
    log = open(path, "a")
    if new:
        print(LOG_HEADER, file=log, flush=True)
    return log


def run_training(config: TrainingConfig, image_dirs, output: Path, device="cpu", resume: bool = False,
                 checkpoint_every: int = 1000, log_path: Path | None = None, progress: bool = True,
                 initial: dict | None = None, initial_name: str | None = None, previous: dict | None = None) -> dict:
    """Train (or, with ``resume``, continue) a model and save it to ``output``; returns a summary.

    ``initial`` (a checkpoint dictionary, see :func:`~gmdm_cli.checkpoint.read_checkpoint`, named
    ``initial_name``) starts from its filters and weights instead of a random model, with a fresh
    optimiser and schedule (fine-tuning). ``previous``: the checkpoint at ``output`` when the caller has read it
    already (``resume``). The checkpoint holds the model, the metadata and the training state, and is rewritten
    every ``checkpoint_every`` steps, so an interrupted run loses at most that many steps.
    """
    from .checkpoint import model_from_checkpoint, save_checkpoint

    output = Path(output)
    if log_path is not None:
        if Path(log_path).resolve() == output.resolve():
            raise TrainingSetupError(f"{shown(log_path)}: --log and the checkpoint are the same file")
        check_log(Path(log_path), resume)
    rank, world_size, device = distributed_setup(torch.device(device))
    config, previous, origin = _resolve_run(config, output, resume, previous, initial, initial_name, rank)
    paths = find_images(image_dirs)
    sampler = PatchSampler(load_training_images(paths, config.patch_size), config.patch_size, device)
    start = previous if previous is not None else initial
    trainer = Trainer(config, sampler, device, model_from_checkpoint(start) if start else None, rank, world_size)
    elapsed, exact_resume = 0.0, True
    if previous is not None:
        exact_resume = trainer.restore(previous["training"])
        elapsed = float(previous["metadata"].get("wall_seconds", 0.0))
    metadata = _run_metadata(config, trainer, image_dirs, len(paths), device, world_size, origin)

    def save(recent: list[float], elapsed: float) -> float:
        final_loss = sum(recent) / len(recent) if recent else float("nan")
        if rank == 0:
            save_checkpoint(output, trainer.model, {**metadata, "steps": trainer.step, "final_loss": final_loss,
                                                     "wall_seconds": elapsed}, trainer.state())
        return final_loss

    recent, elapsed = _train_loop(trainer, save, elapsed, checkpoint_every, progress and rank == 0,
                                  log_path if rank == 0 else None)
    final_loss = save(recent, elapsed)
    if world_size > 1:  # leave the process group before exit: its threads must not outlive the interpreter
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return {"steps": trainer.step, "final_loss": final_loss, "loss_window": len(recent),
            "wall_seconds": elapsed, "device": metadata["device"], "rank": rank, "exact_resume": exact_resume}


def _resolve_run(config: TrainingConfig, output: Path, resume: bool, previous: dict | None, initial: dict | None,
                 initial_name: str | None, rank: int) -> tuple[TrainingConfig, dict | None, str | None]:
    """The run's configuration (a resumed run's own, to ``config.steps``), the checkpoint it continues, and the
    model it was initialised from; refuses what does not fit."""
    from .checkpoint import CheckpointError, read_checkpoint

    if resume:
        if previous is None and not output.is_file():
            raise CheckpointError(f"{shown(output)}: nothing to resume (no such checkpoint)")
        previous = previous if previous is not None else read_checkpoint(output)
        if "training" not in previous:
            raise CheckpointError(f"{shown(output)}: has no training state to resume from (use --init to fine-tune "
                                  f"from it)")
        saved = previous["training"]["config"]
        if saved.get("model_type", "patch") != config.model_type:
            raise CheckpointError(f"{shown(output)}: is a {saved.get('model_type', 'patch')} model, not "
                                  f"{config.model_type}")
        if saved["patch_size"] != config.patch_size:
            raise CheckpointError(f"{shown(output)}: was trained with --patch-size {saved['patch_size']}, "
                                  f"not {config.patch_size}")
        config = TrainingConfig(**{"loss": "squared", **saved, "steps": config.steps})  # older runs: squared
        return config, previous, previous["metadata"].get("initialised_from")
    if output.exists() and rank == 0:
        raise CheckpointError(f"{shown(output)}: exists (use --resume to continue it, or choose another name)")
    if not output.parent.is_dir():
        raise CheckpointError(f"{shown(output)}: folder {shown(output.parent)} does not exist")
    if initial is None:
        return config, None, None
    kind = kind_of_format(initial["format"])
    if kind != config.model_type:
        raise CheckpointError(f"{initial_name}: is a {kind} model, not {config.model_type}")
    try:
        kind_class(kind).adopt(config, initial["metadata"])
    except ValueError as error:
        raise CheckpointError(f"{initial_name}: {error}") from None
    return config, None, f"{initial_name} ({initial['metadata'].get('steps', '?')} steps)"


def _run_metadata(config: TrainingConfig, trainer: Trainer, image_dirs, images: int, device, world_size: int,
                  origin: str | None) -> dict:
    """What the checkpoint records of the run: data, optimiser, loss, batch, noise range, seed, device."""
    metadata = {
        "training_data": ", ".join(str(Path(d)) for d in image_dirs) + f" ({images} images)",
        "optimizer": (f"iPALM (inertia {trainer.optimizer.inertia:.3g}, backtracking), Algorithm 1 "
                      f"({config.projection_steps} steps) as the filters' proximal map" if config.optimizer == "ipalm"
                      else f"Adam, cosine learning rate {config.learning_rate:g} -> {config.final_learning_rate:g}, "
                           f"Algorithm 1 ({config.projection_steps} steps) after every update"),
        "loss": f"Eq. 4, {config.loss}",
        "batch_size": config.batch_size,
        "sigma_max": config.sigma_max,
        "seed": config.seed,
        "device": str(torch.device(device)) + (f" x {world_size} processes" if world_size > 1 else ""),
        **kind_class(config.model_type).run_metadata(config),
    }
    if origin is not None:
        metadata["initialised_from"] = origin
    return metadata


LOSS_WINDOW = 200
"""The progress bar, the log and the checkpoint's ``final_loss`` give the mean loss of this many last steps."""


def _train_loop(trainer: Trainer, save, elapsed: float, checkpoint_every: int, progress: bool,
                log_path: Path | None) -> tuple[list[float], float]:
    """Steps up to ``trainer.config.steps``: a progress bar on standard error (a terminal only), a log line every
    ``LOG_EVERY`` steps and at the end, ``save(recent, elapsed)`` every ``checkpoint_every`` steps. Returns the
    last :data:`LOSS_WINDOW` losses and the run's seconds."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    steps, recent = trainer.config.steps, []
    log = _open_log(log_path) if log_path is not None else None
    columns = [TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeRemainingColumn()]
    console = Console(stderr=True)
    try:
        with Progress(*columns, console=console, disable=not (progress and console.is_terminal)) as bar:
            task = bar.add_task("train", total=steps, completed=trainer.step, loss="-")
            started = time.perf_counter() - elapsed
            while trainer.step < steps:
                recent.append(trainer.train_step())
                del recent[:-LOSS_WINDOW]
                elapsed = time.perf_counter() - started
                mean = sum(recent) / len(recent)
                bar.update(task, completed=trainer.step, loss=f"{mean:.3e}")
                if log is not None and (trainer.step % LOG_EVERY == 0 or trainer.step == steps):
                    print(trainer.step, f"{mean:.6e}", f"{elapsed:.1f}", file=log, flush=True)
                if trainer.step % checkpoint_every == 0:
                    save(recent, elapsed)
    finally:
        if log is not None:
            log.close()
    return recent, elapsed
