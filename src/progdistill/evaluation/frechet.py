"""Frechet distance between Gaussians fitted to feature sets (the formula behind FID)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and covariance [d, d] (float64, unbiased, rows = samples) of an [n, d] feature array."""
    if isinstance(features, Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an [n, d] feature array with n >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix, via eigh (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 sqrtm(cov1 cov2)), with tr sqrtm(cov1 cov2) = tr sqrtm(s cov2 s), s = sqrtm(cov1)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, cov {cov1.shape} {cov2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, cov1, cov2)):
        return float("inf")
    # cov1 cov2 is similar to s cov2 s (symmetric PSD), so both have the same non-negative eigenvalues and
    # tr sqrtm(cov1 cov2) = sum sqrt(eig(s cov2 s)); this avoids the complex output of a general sqrtm.
    s = _psd_sqrt(cov1)
    m = s @ cov2 @ s
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)
    return max(d, 0.0)
