"""Tiled computation equals the whole-image computation."""

import threading

import numpy as np
import torch
import torch.nn.functional as F

from conftest import random_model
from gmdm_cli.checkpoint import load_model
from gmdm_cli import denoisers as gmdm_denoisers
from gmdm_cli import model as gmdm_model
from gmdm_cli import tiling as gmdm_tiling
from gmdm_cli.denoisers import ebpa, hqs
from gmdm_cli.model import patch_counts
from gmdm_cli.tiling import STRIP_VALUES, strip_rows
from gmdm_cli.sites import site_energies
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


def test_strips_of_rows_equal_one_piece_in_float64(monkeypatch):
    model = random_model(patch_size=3, num_components=21, seed=64)
    image = torch.rand(1, 1, 30, 19, generator=torch.Generator().manual_seed(65), dtype=torch.float64)
    sigma_map = 0.02 + 0.1 * torch.rand(1, 1, 28, 17, generator=torch.Generator().manual_seed(66), dtype=torch.float64)
    rows_seen = []

    def strip_rows(model, patch_rows, patch_columns, device, rows=None):
        rows_seen.append(rows or patch_rows)
        return rows or patch_rows

    with torch.no_grad():
        monkeypatch.setattr(gmdm_tiling, "strip_rows", strip_rows)
        whole = [ebpa(model, image, 0.1, exact=True, tile=0), ebpa(model, image, sigma_map, tile=0)]
        for rows in (1, 4, 5, 27):
            monkeypatch.setattr(gmdm_tiling, "strip_rows", lambda *a, rows=rows: strip_rows(*a, rows=rows))
            strips = [ebpa(model, image, 0.1, exact=True, tile=0), ebpa(model, image, sigma_map, tile=0)]
            for a, b in zip(strips, whole):
                assert torch.allclose(a, b, atol=1e-13, rtol=0)
    assert rows_seen == [28, 28, 1, 1, 4, 4, 5, 5, 27, 27]


def test_site_inputs_of_every_other_patch_in_blocks_of_any_height(monkeypatch):
    """site_inputs with a step: the responses of the patches in rows and columns that are multiples of it, by
    strided convolutions of blocks of rows of any size (a multiple of the step, the last one shorter), as the full
    responses sliced; each block's rows of patch positions given to the function."""
    from gmdm_cli import model as gmdm_model_module
    from gmdm_cli.model import image_responses

    model = random_model(patch_size=3, num_components=21, seed=67)
    image = torch.rand(2, 1, 30, 20, generator=torch.Generator().manual_seed(68), dtype=torch.float64)
    with torch.no_grad():
        full = image_responses(model, image)
        for step in (2, 3):
            columns = (20 - 3) // step + 1
            for values in (1, 2 * 2 * columns * model.num_filters, 5 * 2 * columns * model.num_filters, 1 << 23):
                monkeypatch.setattr(gmdm_model_module, "SITE_BLOCK_VALUES", values)
                spans = []
                found = torch.cat(model.site_inputs(image, lambda top, bottom, z: spans.append((top, bottom)) or z,
                                                    step), 2)
                assert torch.allclose(found, full[..., ::step, ::step], atol=1e-13, rtol=0)
                assert spans[0][0] == 0 and spans[-1][1] == 28 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
                assert all(top % step == 0 for top, _ in spans)


def test_blocks_of_strips_on_worker_threads_equal_one_thread(monkeypatch):
    model = random_model(patch_size=3, num_components=21, seed=67)
    image = torch.rand(1, 1, 40, 23, generator=torch.Generator().manual_seed(68), dtype=torch.float64)
    sigma_map = 0.02 + 0.1 * torch.rand(1, 1, 38, 21, generator=torch.Generator().manual_seed(69), dtype=torch.float64)
    monkeypatch.setattr(gmdm_tiling, "strip_rows", lambda *args: 4)  # 10 strips
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    grad_modes = []  # the gradient mode in which each strip's patch sum ran

    def patch_sum(*args):
        grad_modes.append(torch.is_grad_enabled())
        return gmdm_model.patch_sum(*args)

    monkeypatch.setattr(gmdm_denoisers, "patch_sum", patch_sum)

    def run():
        grad_modes.clear()
        with torch.no_grad():
            results = [ebpa(model, image, 0.1, exact=True, tile=0), ebpa(model, image, sigma_map, tile=0),
                       ebpa(model, image, 0.1, tile=0), site_energies(model, image[0, 0]).energies]
        x = image.clone().requires_grad_()
        ebpa(model, x, 0.1, exact=True, tile=0).square().sum().backward()  # autograd through the workers
        assert grad_modes == [False] * 30 + [True] * 10
        return results + [x.grad]

    def default_of_a_new_thread() -> int:
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return seen[0]

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        several = run()
        assert sum(t.name.startswith("gmdm-strips") for t in threading.enumerate()) >= 3
        # the workers' one-thread setting stays theirs; the caller's settings are restored
        assert torch.get_num_threads() == 3 and default_of_a_new_thread() == 3
        assert torch.backends.mkldnn.enabled == mkldnn
    finally:
        torch.set_num_threads(threads)
    assert one[-1].abs().max() > 0
    for a, b in zip(one, several):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_strips_stay_within_the_budget_on_the_cpu():
    for patch_size, width in ((7, 315), (15, 307), (15, 4000), (7, 100_000)):
        model = random_model(patch_size=patch_size, num_components=5)
        rows = strip_rows(model, 10_000, width, torch.device("cpu"))
        assert 4 <= rows <= 16 and (rows == 4 or model.num_filters * width * rows <= STRIP_VALUES)
    assert strip_rows(model, 321, 100, torch.device("meta")) == 321


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
