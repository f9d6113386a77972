"""Distances between sample sets."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from torch import Tensor


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance: the mean over random unit directions u of W1(<a, u>, <b, u>)
    (1-D W1 by scipy). The directions depend only on `seed`, so values are comparable across calls."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two [n, d] sample sets of equal d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(num_projections, a.shape[1], generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa = (a.double() @ dirs.T).numpy()
    pb = (b.double() @ dirs.T).numpy()
    return float(np.mean([wasserstein_distance(pa[:, k], pb[:, k]) for k in range(num_projections)]))
