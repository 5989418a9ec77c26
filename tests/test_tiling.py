"""Tiled computation equals the whole-image computation."""

import numpy as np
import torch
import torch.nn.functional as F

from conftest import random_model
from gmdm_cli.checkpoint import load_model
from gmdm_cli.denoisers import ebpa, hqs
from gmdm_cli.model import patch_counts
from gmdm_cli.tiling import automatic_tile, tiled


def test_patch_counts_equal_the_adjoint_of_valid_patch_extraction():
    model = random_model(patch_size=5)
    for height, width in ((5, 5), (9, 5), (12, 31), (6, 7)):
        ones = torch.ones(1, 1, height - 4, width - 4, dtype=torch.float64)
        expected = F.conv_transpose2d(ones, torch.ones(1, 1, 5, 5, dtype=torch.float64))
        assert torch.equal(patch_counts(model, torch.zeros(1, 1, height, width, dtype=torch.float64)), expected)


def test_tiled_ebpa_and_hqs_equal_untiled_in_float64():
    model = random_model(patch_size=3, num_components=21, seed=60)
    image = torch.rand(2, 1, 23, 37, generator=torch.Generator().manual_seed(61), dtype=torch.float64)
    sigma_map = 0.02 + 0.1 * torch.rand(2, 1, 21, 35, generator=torch.Generator().manual_seed(62), dtype=torch.float64)
    with torch.no_grad():
        for tile in (4, 7, 16):
            for boundary in ("valid", "reflect"):
                whole = ebpa(model, image, 0.1, boundary, exact=True, tile=0)
                assert torch.allclose(ebpa(model, image, 0.1, boundary, exact=True, tile=tile), whole, atol=1e-13, rtol=0)
                whole = hqs(model, image, 0.1, boundary=boundary, tile=0)
                assert torch.allclose(hqs(model, image, 0.1, boundary=boundary, tile=tile), whole, atol=1e-13, rtol=0)
            assert torch.allclose(ebpa(model, image, sigma_map, tile=tile), ebpa(model, image, sigma_map, tile=0),
                                  atol=1e-13, rtol=0)


def test_tiled_ebpa_of_the_shipped_model_is_within_1e5(camera):
    model = load_model("7x7")
    noisy = torch.tensor(camera + 0.1 * np.random.default_rng(63).standard_normal(camera.shape), dtype=torch.float32)
    with torch.no_grad():
        difference = ebpa(model, noisy, 0.1, tile=20) - ebpa(model, noisy, 0.1, tile=0)
    assert difference.abs().max() <= 1e-5


def test_tiled_assembles_cores_and_automatic_tiles_fit_the_budget():
    image = torch.arange(35.0).view(1, 1, 5, 7)
    seen = []

    def local(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.stack([x, -x], 1)[:, :, 0]

    result = tiled(local, image, halo=1, tile=2)
    assert torch.equal(result, torch.cat([image, -image], 1))
    assert max(seen) <= (4, 4) and len(seen) == 12
    tile = automatic_tile(224, 14)
    assert tile >= 4 * 14 and 224 * (tile + 28) ** 2 <= 1 << 25
