import numpy as np
import pytest
import torch

from gmdm_cli.model import PatchGMDM
from gmdm_cli.projection import orthogonal_projection

# parametrize a test over both devices; the CUDA case is skipped where no CUDA device exists
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


def random_model(patch_size=3, num_components=15, dtype=torch.float64, seed=0, gamma=1.0):
    """A small model with random orthogonal filters and random (non-uniform) weights."""
    generator = torch.Generator().manual_seed(seed)
    model = PatchGMDM.initial(patch_size, num_components, gamma, generator=generator, dtype=dtype)
    with torch.no_grad():
        model.filters.copy_(orthogonal_projection(model.filters, steps=20))
        model.logits.copy_(torch.randn(model.logits.shape, generator=generator, dtype=dtype))
    return model


@pytest.fixture
def small_model():
    return random_model()


@pytest.fixture
def camera():
    """A 96x96 crop of skimage's camera image, float64 in [0, 1]."""
    from skimage import data

    return data.camera()[200:296, 200:296].astype(np.float64) / 255
