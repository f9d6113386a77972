"""Training examples as a torch Dataset, and the seeded, resumable, endless stream of global batches over them.

Images stay uint8 (memory-mapped when they come from a folder cache) and become float in [-1, 1] one batch at a
time; 2-D data stays a float tensor used as it is. A `GlobalBatchSampler` fixes, from a seed alone, which
examples form every global batch and which of them are flipped; each process takes only its own rows of every
global batch, so the data a step trains on does not depend on the process count. Its state is one number, the
count of global batches consumed, from which any later position is reached without replaying the stream.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import conditioning

Key = tuple[int, bool]  # (example index, flip it horizontally)


def _as_numpy(x) -> np.ndarray:
    return x.numpy() if torch.is_tensor(x) else np.asarray(x) if not isinstance(x, np.ndarray) else x


class ExampleData(Dataset):
    """Examples (first dimension = examples) with optional integer labels and an optional horizontal flip.

    `x` is either uint8 images [N, C, H, W] (a numpy array, possibly a read-only memory map, or a tensor), handed
    out as uint8 and scaled to [-1, 1] per batch by `to_unit_range`, or float examples (2-D data) used as they are.
    Items are fetched a batch at a time (`__getitems__`), so a memory-mapped cache is read with one fancy index.
    """

    def __init__(self, x, labels=None, flip: bool = False):
        self.images = _as_numpy(x) if not (torch.is_tensor(x) and x.is_floating_point()) else x
        if isinstance(self.images, np.ndarray) and self.images.dtype != np.uint8:
            if not np.issubdtype(self.images.dtype, np.floating):
                raise TypeError(f"examples must be uint8 images or floats, not {self.images.dtype}")
            self.images = torch.from_numpy(np.ascontiguousarray(self.images, dtype=np.float32))
        self.labels = None if labels is None else torch.as_tensor(_as_numpy(labels), dtype=torch.int64)
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"{len(self)} examples but {len(self.labels)} labels")
        self.flip = flip

    @property
    def is_uint8(self) -> bool:
        return isinstance(self.images, np.ndarray)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one example (without the example dimension); reads no data."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def nbytes_float32(self) -> int:
        """What the whole data set would take as float32 in memory."""
        return 4 * int(np.prod(self.images.shape, dtype=np.int64))

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else 0

    @property
    def x(self) -> Tensor:
        """Every example as one float32 tensor in [-1, 1]: materialises the whole data set (for small sets and
        evaluation references; training never calls it)."""
        if not self.is_uint8:
            return self.images
        return to_unit_range(torch.from_numpy(np.array(self.images, dtype=np.uint8)))

    def subset(self, limit: int, keep_labels: bool = True) -> "ExampleData":
        """The first `limit` examples (0: all), a view without copying; labels dropped unless keep_labels."""
        n = limit if 0 < limit < len(self) else len(self)
        labels = self.labels[:n] if keep_labels and self.labels is not None else None
        return ExampleData(self.images[:n], labels, self.flip)

    def __getitems__(self, keys: Sequence[Key]) -> tuple[Tensor, Tensor | None]:
        """A batch: examples as uint8 (images) or float (2-D), flipped where the key says, and the labels."""
        idx = np.fromiter((k[0] for k in keys), dtype=np.int64, count=len(keys))
        flip = np.fromiter((k[1] for k in keys), dtype=bool, count=len(keys))
        if self.is_uint8:
            order = np.argsort(idx, kind="stable")  # ascending reads: sequential-ish through a memory map
            x = np.empty((len(idx), *self.images.shape[1:]), dtype=np.uint8)
            x[order] = self.images[idx[order]]
            if flip.any():
                x[flip] = x[flip][..., ::-1]
            x = torch.from_numpy(x)
        else:
            x = self.images[torch.from_numpy(idx)]
            if flip.any():
                f = torch.from_numpy(flip)
                x[f] = x[f].flip(-1)
        return x, (self.labels[torch.from_numpy(idx)] if self.labels is not None else None)

    def __getitem__(self, key: Key):
        x, labels = self.__getitems__([key])
        return x[0], (labels[0] if labels is not None else None)

    def batches(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Endless global batches in this process without workers (benchmarks, tests); `skip` batches are
        jumped over, so a resumed stream sees exactly the batches an uninterrupted one would."""
        return Batches(self, GlobalBatchSampler(len(self), batch_size, seed, flip=self.flip, start=skip),
                       workers=0)


TensorData = ExampleData  # the earlier name, kept for callers


def to_unit_range(x: Tensor) -> Tensor:
    """uint8 -> float32 scaled to [-1, 1] (x / 127.5 - 1); float input is returned unchanged."""
    if x.is_floating_point():
        return x
    return x.to(torch.float32).div_(127.5).sub_(1.0)


class GlobalBatchSampler(Sampler):
    """Endless, seeded global batches, of which this process yields its own rows.

    Epoch e is a permutation of all examples drawn from numpy's generator seeded with (seed, e), and (with flip)
    one coin per example; global batch b of the epoch is positions [b * batch_size, (b + 1) * batch_size) of the
    permutation; the last incomplete batch of an epoch is dropped. Process `rank` of `world` yields the contiguous
    rows `shard_rows` of every global batch, as (index, flip) keys. `start` global batches are skipped: the state
    a checkpoint stores is that one count (`state_dict`)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, *, rank: int = 0, world: int = 1,
                 flip: bool = False, start: int = 0):
        if batch_size > num_examples:
            raise ValueError(f"batch_size {batch_size} is larger than the data ({num_examples} examples)")
        if batch_size % world:
            raise ValueError(f"the global batch ({batch_size}) must be divisible by the number of processes "
                             f"({world}): change the batch size or the process count")
        if not 0 <= rank < world or start < 0:
            raise ValueError(f"bad rank {rank} of {world} or start {start}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world, self.flip, self.start = rank, world, flip, start
        self.per_epoch = num_examples // batch_size

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(permutation of all examples, flip per position or None) of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.num_examples)
        return perm, (rng.random(self.num_examples) < 0.5 if self.flip else None)

    def __iter__(self) -> Iterator[list[Key]]:
        epoch, b = divmod(self.start, self.per_epoch)
        local = self.batch_size // self.world
        while True:
            perm, flips = self.epoch_order(epoch)
            for batch in range(b, self.per_epoch):
                lo = batch * self.batch_size + self.rank * local
                idx = perm[lo : lo + local].tolist()
                fl = flips[lo : lo + local].tolist() if flips is not None else [False] * local
                yield list(zip(idx, fl))
            epoch, b = epoch + 1, 0

    def state_dict(self, position: int) -> dict:
        """The data-order state after `position` global batches (what a checkpoint stores)."""
        epoch, batch = divmod(position, self.per_epoch)
        return {"position": position, "epoch": epoch, "batch_in_epoch": batch, "seed": self.seed,
                "batch_size": self.batch_size, "num_examples": self.num_examples}

    def check_state(self, state: dict) -> int:
        """The position stored in `state`, after checking it describes this very data order."""
        for key in ("seed", "batch_size", "num_examples"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"the checkpoint's data order was for {key} = {state[key]}, this run has "
                                 f"{getattr(self, key)}: the data set or the config changed since the checkpoint")
        return int(state["position"])


def _keep(batch):
    """collate_fn: `__getitems__` already returns a collated batch."""
    return batch


class Batches:
    """Iterator of this process's (x, labels) rows of every global batch, x float in [-1, 1] on `device`.

    A DataLoader with `workers` processes (0: load in this process) reads the uint8 rows; the conversion to float
    happens here, a batch at a time (on the device when it is a GPU: a quarter of the bytes cross the bus).
    `state_dict()` is the sampler state after the batches consumed so far (not those prefetched)."""

    def __init__(self, data: ExampleData, sampler: GlobalBatchSampler, *, workers: int = 0,
                 device: torch.device | str = "cpu", prefetch: int = 4):
        self.data, self.sampler, self.device = data, sampler, torch.device(device)
        self.position = sampler.start
        cuda = self.device.type == "cuda"
        self.loader = DataLoader(data, batch_sampler=sampler, num_workers=workers, collate_fn=_keep,
                                 pin_memory=cuda, prefetch_factor=prefetch if workers > 0 else None,
                                 persistent_workers=False)
        self._it = None

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> tuple[Tensor, Tensor | None]:
        if self._it is None:
            self._it = iter(self.loader)
        x, labels = next(self._it)
        self.position += 1
        x = to_unit_range(x.to(self.device, non_blocking=True))
        return x, conditioning.to(labels, self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return self.sampler.state_dict(self.position)

    def close(self) -> None:
        """Stop the loader's worker processes: the last reference to its iterator goes, and the iterator's
        finaliser shuts its workers down."""
        self._it = None


def make_batches(data: ExampleData, batch_size: int, seed: int, *, shard: tuple[int, int] = (0, 1),
                 workers: int = 0, device: torch.device | str = "cpu", state: dict | None = None,
                 start: int = 0) -> Batches:
    """This process's batches of the seeded global batch stream, from `state` (a checkpoint's data state) or
    after `start` global batches."""
    sampler = GlobalBatchSampler(len(data), batch_size, seed, rank=shard[0], world=shard[1], flip=data.flip)
    sampler.start = sampler.check_state(state) if state else start
    return Batches(data, sampler, workers=workers, device=device)
