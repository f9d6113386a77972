"""Figures: sample scatter panels and metric-versus-steps curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from .rows import DATA, STUDENT_STOCHASTIC, TEACHER_DDIM  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return _save(fig, path)


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
    return _save(fig, path)


def quality_vs_accuracy(rows: list[dict], path: Path, quality: str = "frechet_classifier",
                        accuracy: str = "class_accuracy") -> Path:
    """Guided evaluation: one line per (sampler, steps) through its points at each guidance weight w (labelled),
    class accuracy across, Frechet distance up (log axis): the guided teacher at its largest step count (thick),
    every student (stochastic sampler dashed); the data row as a star."""
    value = {(r["sampler"], r["steps"], r["w"], r["metric"]): r["value"] for r in rows}
    keys = sorted({(r["sampler"], r["steps"]) for r in rows if r["sampler"] != DATA}, key=lambda t: (t[0], -t[1]))
    # The teacher at its reference (largest) step count only: its few-step rows are in the tables.
    top = max((k for s, k in keys if s == TEACHER_DDIM.name), default=None)
    keys = [(s, k) for s, k in keys if s != TEACHER_DDIM.name or k == top]
    fig, ax = plt.subplots(figsize=(7, 5))
    for s, k in keys:
        ws = sorted({r["w"] for r in rows if (r["sampler"], r["steps"]) == (s, k)})
        pts = [(value[(s, k, w, accuracy)], value[(s, k, w, quality)], w) for w in ws
               if (s, k, w, accuracy) in value and (s, k, w, quality) in value]
        if not pts:
            continue
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{s}, {k} steps",
                        linestyle="--" if s == STUDENT_STOCHASTIC.name else "-",
                        linewidth=2.5 if s == TEACHER_DDIM.name else 1.5)
        for a, q, w in pts:
            ax.annotate(f"w={w:g}", (a, q), fontsize=6, color=line.get_color(), xytext=(3, 3),
                        textcoords="offset points")
    if (DATA, 0, None, accuracy) in value and (DATA, 0, None, quality) in value:
        ax.plot([value[(DATA, 0, None, accuracy)]], [value[(DATA, 0, None, quality)]], marker="*",
                markersize=12, color="black", linestyle="none", label="data (training images)")
    ax.set_yscale("log")
    ax.set_xlabel(f"{accuracy} (higher: samples match their label)")
    ax.set_ylabel(f"{quality} (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
