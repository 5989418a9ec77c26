"""Accuracy, size and build time of the noise-map tables (``gmdm_cli.tables.LadderScores``) at their resolution
and exact spacing and at the neighbours of both, for the shipped 7x7 and 15x15 models and three ranges of levels.

    python benchmarks/ladder_accuracy.py

For each, the largest error over 3000 random responses (3 deviations of the patch's level plus 0.3) of the
corrections ``sigma_k^2 d/dz log psi_j`` against :func:`gmdm_cli.tables.exact_values`, relative to their scale
``sigma_k^2 / sigma_j(t_k)``; the table's size and its build time on 2 threads.
"""

from __future__ import annotations

import time

import torch

from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import LADDER_LEVELS
from gmdm_cli.tables import SCORE_RESOLUTION, LadderScores, exact_values

RANGES = ((0.004, 0.03), (0.02, 0.12), (0.08, 0.5))
SETTINGS = ((0.035, 0.25), (SCORE_RESOLUTION, 0.25), (0.1, 0.25), (SCORE_RESOLUTION, 0.125), (SCORE_RESOLUTION, 0.5))


def largest_error(table: LadderScores, levels: torch.Tensor, count: int = 3000) -> float:
    generator = torch.Generator().manual_seed(0)
    experts = table.variances.shape[0]
    level = torch.randint(0, len(levels) - 1, (count,), generator=generator)
    deviations = table.variances.sqrt()
    z = torch.randn(experts, count, generator=generator, dtype=torch.float64) * (3 * deviations[:, level] + 0.3)
    found = table.corrections(z, level, torch.zeros(count, dtype=torch.float64))
    owner = torch.arange(experts)[:, None].expand(experts, count)
    variances = table.variances[owner, level[None].expand(experts, count)]
    exact = exact_values(table.log_weights, table.means, z.reshape(-1), owner.reshape(-1), variances.reshape(-1))[1]
    exact = exact.view(experts, count) * levels[level] ** 2
    return float(((found - exact).abs() / (levels[level] ** 2 / deviations[:, level])).max())


def main() -> int:
    torch.set_num_threads(2)
    print("| model | sigma | resolution | exact spacing | max relative error | MB | build s |")
    print("|---|---|---|---|---|---|---|")
    for name in ("7x7", "15x15"):
        model = load_model(name, dtype=torch.float64)
        for low, high in RANGES:
            levels = LADDER_LEVELS[(LADDER_LEVELS > low) & (LADDER_LEVELS < high)]
            for resolution, exact_resolution in SETTINGS:
                started = time.perf_counter()
                table = LadderScores(model, levels, resolution=resolution, exact_resolution=exact_resolution)
                seconds = time.perf_counter() - started
                print(f"| {name} | {low}-{high} | {resolution} | {exact_resolution} | "
                      f"{largest_error(table, levels):.1e} | {table.values.numel() * 4 / 2**20:.0f} | {seconds:.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
