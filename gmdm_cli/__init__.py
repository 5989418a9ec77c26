"""gmdm: image restoration with Gaussian Mixture Diffusion Models (Zach et al., SSVM 2023)."""

__version__ = "0.1.0"
