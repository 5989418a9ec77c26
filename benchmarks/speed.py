"""Speed and memory of gmdm: denoising, training, and the command line.

    python benchmarks/speed.py --threads 2 --markdown benchmarks/results/speed.md
    python benchmarks/speed.py --threads 2 --huge        # + a 50-Mpixel image through `gmdm denoise`
    python benchmarks/speed.py --devices cuda --threads 16 --markdown benchmarks/results/speed-cuda.md

Every measurement runs in a fresh subprocess (so that its peak resident memory is its own) with the given
number of torch threads:

* denoising: EB-PA and HQS with the 7x7 and 15x15 models on a 481x321 and a 12-Mpixel (3000x4000) gray
  image (scikit-image's camera, resized; noise sigma 25), on the CPU and, when present, on CUDA. "first" is
  the first call in a fresh process (it builds the expert tables), "median" the median of the following
  calls (the 12-Mpixel image: one call after a warm-up on the small image at the same sigma). The PSNR
  shows that every configuration computes the same thing;
* on the 481x321 image with the 7x7 model, also blind EB-PA and HQS (what ``gmdm denoise --blind`` runs: the
  noise model estimated first; SURE's level for EB-PA at one level) and ``estimate-noise`` with and without
  ``--map``, with their ratios to one EB-PA (HQS) pass at a known sigma on the same image, timed in turn with them
  in the same process (a shared machine's speed drifts between processes); and blind EB-PA and HQS of the same
  image with signal-dependent noise (``blind-ebpa-sd``, ``blind-hqs-sd``: a noise-level function and a level per
  pixel, where the constant noise's blind estimate denoises at one level);
* the same images through ``skimage.restoration.denoise_nl_means`` and, when the optional ``bm3d`` package
  is installed, BM3D (481x321 only), as time ratios to EB-PA 7x7;
* training: one optimiser step of denoising score matching (Eq. 4) on a batch of 3200 patches with the
  project's hand-written posterior-mean derivatives, against a direct version written here that lets
  autograd differentiate the log-sum-exp energy twice; throughput in patch-sigma samples per second;
* ``gmdm --help`` wall time (a fresh interpreter; torch must not be imported);
* with ``--huge``: ``gmdm denoise --model 15x15`` of a 50-Mpixel gray PNG, wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

SIZES = {"481x321": (321, 481), "12MP": (3000, 4000)}
SIGMA = 25


def test_image(size: str, signal_dependent: bool = False):
    """Clean and noisy (sigma 25, or with ``signal_dependent`` sigma^2 = 0.01 x + 0.0004 of the clean intensity x;
    seeded, not clipped) gray float64 images of ``SIZES[size]``."""
    import numpy as np
    from skimage import data
    from skimage.transform import resize

    clean = resize(data.camera() / 255.0, SIZES[size], order=3, anti_aliasing=True)
    sigma = np.sqrt(0.01 * clean.clip(0, 1) + 0.0004) if signal_dependent else SIGMA / 255
    noisy = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    return clean, noisy


def load(model_name: str, device: str):
    """A shipped model, or, when it is not shipped yet, untrained weights of its size (same cost)."""
    from gmdm_cli.checkpoint import CheckpointError, load_model
    from gmdm_cli.model import PatchGMDM

    try:
        return load_model(model_name, device=device), ""
    except CheckpointError:
        size = int(Path(model_name).name.split("x")[0].split("-")[-1])
        return PatchGMDM.initial(size).to(device), " (untrained weights)"


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronise(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def child_denoise(method: str, model_name: str, size: str, device: str, repeats: int) -> dict:
    import numpy as np

    from gmdm_cli.denoisers import psnr

    model, note = load(model_name, device)
    varying = method.endswith("-sd")
    clean, noisy = test_image(size, varying)
    small = test_image("481x321", varying)[1]
    run = lambda image: operation(model, image, method)  # noqa: E731
    started = time.perf_counter()
    result = run(noisy if size == "481x321" else small)
    synchronise(device)
    first = time.perf_counter() - started
    # a row measured against one pass: that pass timed in turn with it, in this process (the same phase of a
    # shared machine, whose speed drifts by tens of % between processes minutes apart)
    reference = REFERENCES.get(method.removesuffix("-sd"))
    if reference is not None:
        operation(model, noisy, reference)
    times, passes = [], []
    for _ in range(repeats if size == "481x321" else 1):
        started = time.perf_counter()
        result = run(noisy)
        synchronise(device)
        times.append(time.perf_counter() - started)
        if reference is not None:
            started = time.perf_counter()
            operation(model, noisy, reference)
            synchronise(device)
            passes.append(time.perf_counter() - started)
    estimate = method.startswith("estimate")
    return {"first": first if size == "481x321" else None, "median": statistics.median(times),
            "ratio": statistics.median(times) / statistics.median(passes) if passes else None,
            "psnr": None if estimate else psnr(result, clean), "note": note, "rss": peak_rss_mb(),
            "output": np.asarray(result[:64, :64]).tolist()}


REFERENCES = {"blind-ebpa": "ebpa", "blind-hqs": "hqs", "estimate": "ebpa", "estimate-map": "ebpa"}
"""What a row of blind denoising or noise estimation is measured against: one pass of this method at one sigma
on the same image."""


def operation(model, noisy, method: str):
    """What a denoising row times: ``ebpa``/``hqs`` at sigma 25; ``blind-ebpa``/``blind-hqs`` what ``gmdm denoise
    --blind`` runs (the noise model estimated, then its levels, and for EB-PA at one level SURE's choice of it);
    ``estimate`` (the global level, ``gmdm estimate-noise``) and ``estimate-map`` (with the per-pixel map,
    ``--map``), which return the map (or the level as an image)."""
    import numpy as np

    import gmdm_cli
    from gmdm_cli.denoisers import denoise_array
    from gmdm_cli.noise import estimate_noise

    if method.startswith("blind-"):
        return gmdm_cli.denoise(noisy, method=method[6:].removesuffix("-sd"), model=model, blind=True)
    if method == "estimate":
        return np.full((64, 64), estimate_noise(model, noisy)[0])
    if method == "estimate-map":
        return estimate_noise(model, noisy, noise_map=True)[1]
    return denoise_array(model, noisy, SIGMA / 255, method)


def denoise_row(method: str, model_name: str, size: str, device: str, record: dict) -> str:
    first = "-" if record["first"] is None else f"{record['first']:.3f}"
    quality = "-" if record["psnr"] is None else f"{record['psnr']:.2f}"
    return (f"| {method} | {model_name}{record['note']} | {size} | {device} | {first} | {record['median']:.3f} | "
            f"{quality} | {record['rss']:.0f} |")


def child_reference(name: str, size: str, repeats: int) -> dict:
    import numpy as np

    from gmdm_cli.denoisers import psnr

    clean, noisy = test_image(size)
    sigma = SIGMA / 255
    if name == "nl_means":
        from skimage.restoration import denoise_nl_means

        run = lambda: denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, fast_mode=True,  # noqa: E731
                                       patch_size=5, patch_distance=6)
    else:
        import bm3d

        run = lambda: bm3d.bm3d(noisy, sigma_psd=sigma)  # noqa: E731
    times = []
    for _ in range(repeats if size == "481x321" else 1):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "psnr": psnr(np.asarray(result), clean), "rss": peak_rss_mb()}


def direct_dsm_loss(model, clean, sigma, noise):
    """Eq. 4 (the norm of each patch's residual, ``dsm_loss``'s default) the direct way: the energy
    ``-sum_j log psi_j`` through one (B, J, L) log-sum-exp, its gradient by autograd (``create_graph``), the
    loss's gradient by autograd through that graph."""
    import math

    import torch

    noisy = (clean + sigma[:, None] * noise).requires_grad_(True)
    t = sigma**2 / 2
    variances = model.sigma0**2 + 2 * t[:, None] * model.filters.pow(2).sum(1)  # (B, J)
    z = noisy @ model.filters.T
    log_weights = torch.log_softmax(model.logits, 1)
    terms = log_weights - (z[..., None] - model.means) ** 2 / (2 * variances[..., None])
    log_density = (torch.logsumexp(terms, -1) - 0.5 * torch.log(2 * math.pi * variances)).sum()
    score = torch.autograd.grad(log_density, noisy, create_graph=True)[0]
    return (noisy + sigma[:, None] ** 2 * score - clean).pow(2).sum(1).sqrt().mean()


def child_training(patch_size: int, direct: bool, device: str, steps: int) -> dict:
    import torch

    from gmdm_cli.model import PatchGMDM
    from gmdm_cli.training import dsm_loss

    generator = torch.Generator().manual_seed(0)
    model = PatchGMDM.initial(patch_size, generator=generator).to(device)
    batch = 3200
    clean = torch.rand(batch, patch_size**2, generator=generator).to(device)
    sigma = (0.4 * torch.rand(batch, generator=generator)).to(device)
    noise = torch.randn(batch, patch_size**2, generator=generator).to(device)
    loss_function = direct_dsm_loss if direct else dsm_loss
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times, losses = [], []
    for _ in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_function(model, clean, sigma, noise)
        loss.backward()
        if not losses:
            gradient = model.filters.grad.double().cpu()
        optimizer.step()
        synchronise(device)
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    step = statistics.median(times[1:])
    return {"step": step, "samples_per_s": batch / step, "loss": losses[0], "gradient": gradient.flatten().tolist(),
            "rss": peak_rss_mb()}


def relative_difference(a: list[float], b: list[float]) -> float:
    """``max |a - b| / max |b|``."""
    return max(abs(x - y) for x, y in zip(a, b)) / max(abs(y) for y in b)


def run_child(threads: int, kind: str, *arguments) -> dict:
    """Run ``kind`` in a fresh interpreter with ``threads`` torch threads; returns its JSON record."""
    code = (f"import torch, json, sys; torch.set_num_threads({threads}); sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import speed; print(json.dumps(speed.child_{kind}(*{arguments!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind}{arguments}: failed\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def help_seconds() -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gmdm_cli", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def huge_run(threads: int, model15: str, megapixels: float = 50) -> dict:
    """``gmdm denoise --model 15x15`` on a synthetic noisy gray PNG of ``megapixels``, in a wrapper process whose
    only child is the CLI, so that the wrapper's RUSAGE_CHILDREN maximum is the CLI's peak RSS."""
    import numpy as np

    side = int((megapixels * 1e6) ** 0.5)
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "huge.png", Path(folder) / "huge-denoised.png"
        clean, _ = test_image("481x321")
        tiles = np.tile(clean, (side // clean.shape[0] + 1, side // clean.shape[1] + 1))[:side, :side]
        rng = np.random.default_rng(0)
        noisy = np.empty_like(tiles)
        for top in range(0, side, 1024):
            noisy[top:top + 1024] = tiles[top:top + 1024] + SIGMA / 255 * rng.standard_normal(tiles[top:top + 1024].shape)
        from gmdm_cli.image_io import write_image

        write_image(source, noisy)
        del tiles, noisy
        wrapper = ("import resource, subprocess, sys, time; started = time.perf_counter(); "
                   "subprocess.run(sys.argv[1:], check=True); "
                   "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
        command = [sys.executable, "-c", wrapper, sys.executable, "-m", "gmdm_cli", "denoise", str(source), "-o",
                   str(target), "--sigma", str(SIGMA), "--model", model15, "--device", "cpu"]
        env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"huge image: failed\n{done.stderr}")
        seconds, rss = map(float, done.stdout.split())
    return {"pixels": side * side, "seconds": seconds, "rss": rss}


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of every measurement")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls on the small image")
    parser.add_argument("--training-steps", type=int, default=5)
    parser.add_argument("--skip-12mp", action="store_true", help="only the 481x321 image")
    parser.add_argument("--huge", action="store_true", help="also a 50-Mpixel image through the CLI")
    parser.add_argument("--model15", default="15x15", help="the 15x15 model (name or checkpoint path)")
    parser.add_argument("--devices", choices=("all", "cpu", "cuda"), default="all",
                        help="measure on the CPU, on CUDA, or on both (all: CUDA where present); the reference "
                             "denoisers and the CPU/CUDA comparison need the CPU")
    parser.add_argument("--markdown", type=Path, help="also write the results as markdown here")
    args = parser.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.devices != "all":
        if args.devices not in devices:
            raise SystemExit(f"--devices {args.devices}: no CUDA device")
        devices = [args.devices]
    sizes = ["481x321"] + ([] if args.skip_12mp else ["12MP"])
    cpu = platform.processor() or platform.machine()
    lines = [f"# gmdm speed ({date.today()})", "",
             f"Machine: {platform.node()}, {cpu}, {__import__('os').cpu_count()} cores visible, "
             f"{args.threads} torch threads; torch {torch.__version__}"
             + (f"; CUDA: {torch.cuda.get_device_name()}" if "cuda" in devices else "; no CUDA device") + ".",
             f"Command: `python benchmarks/speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]

    def show(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    show("## Denoising (sigma 25)")
    show()
    show("| method | model | image | device | first call s | median s | PSNR dB | peak RSS MB |")
    show("|---|---|---|---|---|---|---|---|")
    timings, outputs, ratios = {}, {}, {}
    for size in sizes:
        for device in devices:
            for model_name in ("7x7", args.model15):
                for method in ("ebpa", "hqs"):
                    record = run_child(args.threads, "denoise", method, model_name, size, device, args.repeats)
                    timings[method, model_name, size, device] = record["median"]
                    outputs[method, model_name, size, device] = record["output"]
                    show(denoise_row(method, model_name, size, device, record))
            if size == "481x321":  # blind and noise estimation, 7x7: against one pass of the same method
                for method in ("blind-ebpa", "blind-hqs", "estimate", "estimate-map", "blind-ebpa-sd", "blind-hqs-sd"):
                    record = run_child(args.threads, "denoise", method, "7x7", size, device, args.repeats)
                    timings[method, "7x7", size, device], ratios[method, device] = record["median"], record["ratio"]
                    show(denoise_row(method, "7x7", size, device, record))
        for name in ("nl_means", "bm3d") if "cpu" in devices else ():
            if name == "bm3d":
                import importlib.util

                if importlib.util.find_spec("bm3d") is None:
                    show(f"| bm3d | - | {size} | cpu | - | not installed (pip install bm3d) | - | - |")
                    continue
                if size != "481x321":  # about 10 s per 0.15 Mpixel on 2 cores: a 12-Mpixel run would take ~15 min
                    show(f"| bm3d | - | {size} | cpu | - | skipped (~80x its 481x321 time) | - | - |")
                    continue
            record = run_child(args.threads, "reference", name, size, args.repeats)
            ratio = record["median"] / timings["ebpa", "7x7", size, "cpu"]
            show(f"| {name} | - | {size} | cpu | - | {record['median']:.3f} ({ratio:.0f}x EB-PA 7x7) | "
                 f"{record['psnr']:.2f} | {record['rss']:.0f} |")
    show()
    for device in devices:
        ratio = lambda method: ratios[method, device]  # noqa: E731
        show(f"- {device}, 7x7, 481x321, medians against one pass of the same method at one sigma on the same image, "
             f"timed in turn in one process: blind EB-PA {ratio('blind-ebpa'):.1f}x, "
             f"blind HQS {ratio('blind-hqs'):.1f}x, "
             f"estimate-noise {ratio('estimate'):.1f}x EB-PA, with --map {ratio('estimate-map'):.1f}x EB-PA "
             f"(issue 26 asks <= 3x, <= 2x); blind EB-PA of signal-dependent noise (its own noise-level function and "
             f"levels per pixel) {ratio('blind-ebpa-sd'):.1f}x, blind HQS of it {ratio('blind-hqs-sd'):.1f}x")
    if devices == ["cpu", "cuda"]:
        import numpy as np

        show()
        for key in outputs:
            if key[3] == "cuda":
                difference = np.abs(np.array(outputs[key]) - np.array(outputs[key[:3] + ("cpu",)])).max()
                show(f"- CPU vs CUDA, {key[0]} {key[1]} {key[2]}: max abs difference {difference:.2e} (64x64 corner)")
    show()
    show("## Training (one step of Eq. 4, batch 3200, Adam)")
    show()
    show("| patch | device | direct autograd s/step | gmdm s/step | gmdm samples/s | speed-up | first-step loss, "
         "gradient: relative difference |")
    show("|---|---|---|---|---|---|---|")
    for device in devices:
        for patch_size in (7, 15):
            direct = run_child(args.threads, "training", patch_size, True, device, args.training_steps)
            ours = run_child(args.threads, "training", patch_size, False, device, args.training_steps)
            show(f"| {patch_size}x{patch_size} | {device} | {direct['step']:.3f} | {ours['step']:.3f} | "
                 f"{ours['samples_per_s']:.0f} | {direct['step'] / ours['step']:.1f}x | "
                 f"{abs(direct['loss'] / ours['loss'] - 1):.1e}, {relative_difference(direct['gradient'], ours['gradient']):.1e} |")
    show()
    show(f"`gmdm --help`: {help_seconds():.3f} s (median of 5, fresh interpreter)")
    if args.huge:
        record = huge_run(args.threads, args.model15)
        show()
        show(f"`gmdm denoise --model {args.model15}` of a {record['pixels'] / 1e6:.1f}-Mpixel gray PNG on the CPU: "
             f"{record['seconds']:.0f} s, peak RSS {record['rss']:.0f} MB")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
