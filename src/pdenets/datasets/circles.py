"""The two-noisy-concentric-circles data set of Ruseckas §5.1.

The paper gives only the ratio of the radii (outer = 2 × inner). We use inner radius 1, outer radius 2,
isotropic Gaussian noise σ = 0.2 and 200 points per class (400 in all), as docs/design.md §5 records; the
Bayes accuracy is then about 99.4 %. All of it is configurable.
"""

from __future__ import annotations

import math

import torch


def make_circles(
    n_per_class: int = 200,
    r_inner: float = 1.0,
    r_outer: float = 2.0,
    noise: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (2·n_per_class, 2) and labels (0 = inner circle, 1 = outer circle), shuffled."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be positive, got {n_per_class}")
    if not 0 < r_inner < r_outer:
        raise ValueError(f"need 0 < r_inner < r_outer, got r_inner={r_inner}, r_outer={r_outer}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(2 * n_per_class, generator=g, dtype=torch.float64) * 2 * math.pi
    radius = torch.cat([torch.full((n_per_class,), r_inner), torch.full((n_per_class,), r_outer)]).double()
    x = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], 1)
    x = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    y = torch.cat([torch.zeros(n_per_class), torch.ones(n_per_class)]).long()
    perm = torch.randperm(2 * n_per_class, generator=g)
    return x[perm].to(dtype), y[perm]
