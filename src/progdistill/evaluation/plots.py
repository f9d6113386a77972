"""Figures: sample scatter panels and metric-versus-steps curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def scatter_panels(panels: list[tuple[str, Tensor]], path: Path, ncols: int = 5, lim: float = 1.3) -> Path:
    """One 2-D scatter per (title, points [n, 2]) in a grid, saved as PNG."""
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, pts) in zip(axes.flat, panels):
        pts = pts.detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.4, linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_vs_steps(rows: list[dict], path: Path, metric: str, floor: float | None = None) -> Path:
    """Metric against step count (log2 axis), one line per sampler; `floor` is drawn as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    samplers = sorted({r["sampler"] for r in rows if r["metric"] == metric and r["steps"] > 0})
    for s in samplers:
        pts = sorted((r["steps"], r["value"]) for r in rows if r["sampler"] == s and r["metric"] == metric)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", label="data vs data (floor)")
    ax.set_xscale("log", base=2)
    values = [r["value"] for r in rows if r["metric"] == metric] + ([floor] if floor is not None else [])
    if values and min(values) > 0:  # KID can be slightly negative: then a linear axis
        ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
