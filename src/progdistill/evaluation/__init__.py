"""Sampling, metrics, reports and plots."""

from .metrics import sliced_wasserstein
from .report import evaluate_run
from ..sampling import generate

__all__ = ["evaluate_run", "generate", "sliced_wasserstein"]
