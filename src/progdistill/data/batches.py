"""Shuffled mini-batches from an in-memory tensor dataset, reproducible from a seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor


@dataclass
class TensorData:
    """Examples `x` (first dimension = examples) with optional integer `labels` and an optional horizontal flip."""

    x: Tensor
    labels: Tensor | None = None
    flip: bool = False

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    def batches(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Endless batches: each epoch a new permutation; the last incomplete batch of an epoch is dropped.
        `skip` batches are drawn (random numbers only, no data) and dropped, so a resumed run sees exactly the
        batches an uninterrupted one would."""
        if batch_size > len(self):
            raise ValueError(f"batch_size {batch_size} is larger than the data ({len(self)} examples)")
        gen = torch.Generator().manual_seed(seed)
        drawn = 0
        while True:
            perm = torch.randperm(len(self), generator=gen)
            for start in range(0, len(self) - batch_size + 1, batch_size):
                idx = perm[start : start + batch_size]
                flip = torch.rand(batch_size, generator=gen) < 0.5 if self.flip else None
                drawn += 1
                if drawn <= skip:
                    continue
                x = self.x[idx]
                if flip is not None:
                    x = torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
                yield x, (self.labels[idx] if self.labels is not None else None)
