"""Data sources; every one becomes a TensorData of examples scaled to about [-1, 1]."""

from .batches import TensorData
from .toy2d import TOY_DISTRIBUTIONS, sample_toy

__all__ = ["TOY_DISTRIBUTIONS", "TensorData", "sample_toy"]
