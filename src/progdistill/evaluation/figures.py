"""Sample figures of an evaluation: a grid of images per step count (or per w and step count) and 2-D scatter
panels, each collecting its share of every job's samples while the runner works through the jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .rows import DATA, Row
from .runner import Job

GRID_COLUMNS = 10  # images per row of a sample grid


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 [0, 255] (round to nearest), as images are stored."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(rows: list[tuple[str, Tensor]], path: Path, ncols: int = GRID_COLUMNS) -> Path:
    """One row of `ncols` images per (label, images) entry, labelled on the left, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    width = ncols * 0.75
    fig, axes = plt.subplots(len(rows), 1, figsize=(width + 1.6, len(rows) * 0.8 + 0.2), squeeze=False)
    fig.subplots_adjust(left=1.5 / (width + 1.6), right=0.99, top=0.98, bottom=0.02, hspace=0.1)
    for ax, (label, images) in zip(axes[:, 0], rows):
        grid = make_grid(to_uint8(images[:ncols]).float() / 255, nrow=ncols, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class SampleGrids:
    """OUT/samples/<file_name(job)>: the data's first images, then the first images of every job of that file."""

    def __init__(self, data: Tensor, file_name: Callable[[Job], str]):
        self.data = data[:GRID_COLUMNS]
        self.file_name = file_name
        self.grids: dict[str, list[tuple[str, Tensor]]] = {}

    def add(self, job: Job, samples: Tensor) -> None:
        """Keep the first GRID_COLUMNS samples of `job` for its grid."""
        self.grids.setdefault(self.file_name(job), []).append((job.row.name, samples[:GRID_COLUMNS].clone()))

    def save(self, out: Path) -> None:
        """Write every grid."""
        for name, panels in self.grids.items():
            save_grid([(DATA, self.data), *panels], out / "samples" / name)


class ScatterPanels:
    """OUT/samples.png: the reference data, then one 2-D scatter panel per job (except the rows left out)."""

    def __init__(self, reference: Tensor, left_out: tuple[Row, ...] = ()):
        self.panels: list[tuple[str, Tensor]] = [(DATA, reference)]
        self.left_out = left_out

    def add(self, job: Job, samples: Tensor) -> None:
        """Keep `job`'s samples as a panel unless its row is left out."""
        if job.row not in self.left_out:
            self.panels.append((f"{job.row.name} {job.steps} steps", samples))

    def save(self, out: Path) -> None:
        """Write the panels."""
        from .plots import scatter_panels

        scatter_panels(self.panels, out / "samples.png")
