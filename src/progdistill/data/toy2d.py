"""2-D distributions where the truth is known: each `sample(n, generator)` returns [n, 2] points scaled to ~[-1, 1]."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ring_with_modes(n: int, generator: torch.Generator, modes: int = 8, radius: float = 0.8, std: float = 0.05
                    ) -> tuple[Tensor, Tensor]:
    """A ring of `modes` Gaussians of standard deviation `std` at `radius`: the points and their mode (0..modes-1)."""
    k = torch.randint(modes, (n,), generator=generator)
    angle = 2 * math.pi * k.double() / modes
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float(), k


def ring(n: int, generator: torch.Generator, modes: int = 8, radius: float = 0.8, std: float = 0.05) -> Tensor:
    """A ring of `modes` Gaussians of standard deviation `std` at `radius`."""
    return ring_with_modes(n, generator, modes, radius, std)[0]


def checkerboard(n: int, generator: torch.Generator, cells: int = 4) -> Tensor:
    """Uniform on the black squares of a cells x cells board on [-1, 1]^2."""
    ij = torch.randint(cells, (n, 2), generator=generator)
    # Black squares: (i + j) even; move j by one cell within the row where needed.
    ij[:, 1] = torch.where((ij.sum(1) % 2) == 1, (ij[:, 1] + 1) % cells, ij[:, 1])
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return ((ij.double() + u) * (2.0 / cells) - 1.0).float()


def moons(n: int, generator: torch.Generator, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), centred and scaled to ~[-1, 1]."""
    upper = torch.rand(n, generator=generator) < 0.5
    theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * torch.tensor([0.6, 0.9], dtype=torch.float64)
    return (pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


def swissroll(n: int, generator: torch.Generator, noise: float = 0.03) -> Tensor:
    """A 2-D swiss roll: r = theta, theta in [1.5 pi, 4.5 pi], scaled to ~[-1, 1]."""
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
    pts = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / (4.5 * math.pi)
    return (pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


# "ring_classes": the ring with its 8 modes as class labels (0..7), for class-conditional and guided 2-D runs.
TOY_DISTRIBUTIONS = {"ring": ring, "checkerboard": checkerboard, "moons": moons, "swissroll": swissroll,
                     "ring_classes": ring}
TOY_LABELS = {"ring_classes": ring_with_modes}  # distributions with class labels: (points, labels)


def sample_toy(name: str, n: int, seed: int) -> Tensor:
    """n points of the 2-D distribution `name`, reproducible from `seed`."""
    try:
        fn = TOY_DISTRIBUTIONS[name]
    except KeyError:
        raise ValueError(f"unknown 2-D distribution {name!r}: choose one of {', '.join(TOY_DISTRIBUTIONS)}") from None
    return fn(n, torch.Generator().manual_seed(seed))


def sample_toy_labelled(name: str, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """n points of `name` and their class labels (None for a distribution without classes), from `seed`."""
    if name not in TOY_LABELS:
        return sample_toy(name, n, seed), None
    return TOY_LABELS[name](n, torch.Generator().manual_seed(seed))
