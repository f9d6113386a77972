"""Report tables: one metric, step counts down the side, samplers across."""

from __future__ import annotations

from .rows import DATA


def markdown_table(rows: list[dict], metric: str,
                   floor_text: str = "Floor (two independent data samples of the same size)") -> str:
    """Steps down the side, samplers across; lower is better."""
    samplers = sorted({r["sampler"] for r in rows if r["metric"] == metric and r["steps"] > 0})
    steps = sorted({r["steps"] for r in rows if r["metric"] == metric and r["steps"] > 0}, reverse=True)
    value = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == metric}
    lines = [f"| steps | {' | '.join(samplers)} |", "|---:|" + "---:|" * len(samplers)]
    for k in steps:
        cells = [f"{value[(s, k)]:.4f}" if (s, k) in value else "" for s in samplers]
        lines.append(f"| {k} | {' | '.join(cells)} |")
    floor = [r["value"] for r in rows if r["metric"] == metric and r["sampler"] == DATA]
    if floor:
        lines.append(f"\n{floor_text}: {floor[0]:.4f}")
    return "\n".join(lines) + "\n"
