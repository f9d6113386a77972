"""Data sources; every one becomes an ExampleData (uint8 images or float 2-D examples) streamed in batches."""

from .batches import Batches, ExampleData, GlobalBatchSampler, TensorData, make_batches, to_unit_range
from .toy2d import TOY_DISTRIBUTIONS, sample_toy, sample_toy_labelled

__all__ = ["TOY_DISTRIBUTIONS", "Batches", "ExampleData", "GlobalBatchSampler", "TensorData", "make_batches",
           "sample_toy", "sample_toy_labelled", "to_unit_range"]
