"""Does the convolutional model of Sec. 3.2 (Eq. 11) satisfy the diffusion equation under (16)-(17)?

A tiny case, checked exactly with autograd in float64: a cyclic 1-D "image" of n = 4 pixels, J = 3 filters
whose spectra are the disjoint regions {0}, {1, 3}, {2} with constant magnitudes xi_j (Eqs. 16-17), 3-component
experts with variances sigma_0^2 + 2 t xi_j^2 (Theorem 3). Printed: d/dt f and the Laplacian of f at random
points. For contrast, the patch model of Theorem 2 (J = n orthogonal filters) on the same points, where the
two agree. For the convolutional product they do not: each response image K_j x has only |Gamma_j| degrees of
freedom, yet the product over all n pixels treats its n values as independent, so both the Gaussian
normalisation and the mixture weights of Eq. (14) change with t in a way the diffusion does not.

    python benchmarks/conv_theorem3_check.py
"""

import math

import torch

torch.set_default_dtype(torch.float64)
N = 4
REGIONS = [[0], [1, 3], [2]]
XI = torch.tensor([0.7, 1.3, 0.9])
MEANS = torch.tensor([-0.5, 0.0, 0.8])
WEIGHTS = torch.tensor([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.6, 0.1, 0.3], [0.2, 0.5, 0.3]])
SIGMA0 = 0.3


def mixture(z, weights, variance):
    """prod_i sum_l w_l N(z_i; mu_l, variance)."""
    terms = weights * torch.exp(-(z[..., None] - MEANS) ** 2 / (2 * variance)) / torch.sqrt(2 * math.pi * variance)
    return terms.sum(-1).prod()


def circulant(j):
    spectrum = torch.zeros(N, dtype=torch.complex128)
    spectrum[REGIONS[j]] = complex(XI[j])
    kernel = torch.fft.ifft(spectrum).real  # real and even: |F k_j| = xi_j on its region, 0 elsewhere
    return torch.stack([torch.roll(kernel, shift) for shift in range(N)])


CONVOLUTIONS = [circulant(j) for j in range(len(REGIONS))]
ORTHOGONAL = torch.linalg.qr(torch.randn(N, N, generator=torch.Generator().manual_seed(1)))[0]
SCALES = torch.tensor([0.7, 1.3, 0.9, 1.1])


def convolutional_density(x, t):
    """Eq. (11) with Theorem 3's variances."""
    return math.prod(mixture(K @ x, WEIGHTS[j], SIGMA0**2 + 2 * t * XI[j] ** 2) for j, K in enumerate(CONVOLUTIONS))


def patch_density(x, t):
    """Eq. (5) with Theorem 2's variances (filters: rows of an orthogonal matrix, scaled)."""
    return math.prod(mixture(SCALES[j] * ORTHOGONAL[j] @ x, WEIGHTS[j], SIGMA0**2 + 2 * t * SCALES[j] ** 2)
                     for j in range(N))


def main():
    generator = torch.Generator().manual_seed(0)
    for name, density in (("convolutional (Eq. 11)", convolutional_density), ("patch (Eq. 5)", patch_density)):
        for t in (0.05, 0.15, 0.25):
            x = 0.5 * torch.randn(N, generator=generator)
            time_derivative = torch.autograd.functional.jacobian(lambda s: density(x, s), torch.tensor(t))
            laplacian = torch.autograd.functional.hessian(lambda y: density(y, torch.tensor(t)), x).diagonal().sum()
            print(f"{name:24s} t={t:.2f}  d/dt f = {float(time_derivative):+.6e}  Laplacian f = {float(laplacian):+.6e}"
                  f"  ratio {float(time_derivative / laplacian):.4f}")


if __name__ == "__main__":
    main()
