"""The Gaussian noise of a training step's z_t, for this process's rows of the global batch.

Two ways, both giving every example the same noise whatever the number of processes:
- `global_batch_noise` (the default): every process draws the whole global batch's noise from the step's shared
  generator and keeps its rows. Simple, but each process draws N times what it uses.
- `per_example_noise` (perf.per_example_noise): one scalar key is drawn from the shared generator per step, and each
  example's noise is a counter-based function of (key, the example's index in the global batch, the element), so a
  process computes only its own rows, on the device, with no host-to-device copy. It is another noise stream than
  the default one: results differ from a default run as they would with another seed.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

# (shape of one example, dtype, device, generator, global batch size n, this process's rows) -> noise [rows, *shape]
Noise = Callable[[tuple[int, ...], torch.dtype, torch.device, torch.Generator, int, slice], Tensor]

_MASK32 = (1 << 32) - 1
# splitmix64's constants as signed int64 (torch has no uint64 arithmetic; products wrap modulo 2^64 alike).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def global_batch_noise(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                       generator: torch.Generator, n: int, rows: slice) -> Tensor:
    """N(0, I) for all n rows from `generator`; this process's rows."""
    return torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)[rows]


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 values read as unsigned 64-bit."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(z: Tensor) -> Tensor:
    """The splitmix64 finaliser of int64 counters (bits as unsigned 64-bit): a counter-based generator's output."""
    z = z + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _unit_interval(bits: Tensor) -> Tensor:
    """Uniforms in (0, 1) from the top 53 bits (never 0, so their log is finite)."""
    return (_shift_right(bits, 11).double() + 0.5) * 2.0 ** -53


def counter_normal(key: Tensor, counters: Tensor) -> Tensor:
    """N(0, 1) per counter (int64), a function of (key, counter) only: Box-Muller over two hashed uniforms."""
    base = splitmix64(key * 0x2545F491 + counters * 2)
    u1, u2 = _unit_interval(splitmix64(base)), _unit_interval(splitmix64(base + 1))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def per_example_noise(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                      generator: torch.Generator, n: int, rows: slice) -> Tensor:
    """N(0, I) for this process's rows only: a counter-based function of a key drawn from `generator` (one scalar,
    the same in every process) and each element's position in the global batch."""
    key = torch.randint(0, 1 << 62, (1,), generator=generator, device=device)
    per_row = math.prod(shape)
    first, last = rows.start or 0, rows.stop if rows.stop is not None else n
    counters = torch.arange(first * per_row, last * per_row, device=device, dtype=torch.int64)
    return counter_normal(key, counters).to(dtype).reshape(last - first, *shape)


def noise_for(per_example: bool) -> Noise:
    """The noise of perf.per_example_noise."""
    return per_example_noise if per_example else global_batch_noise
