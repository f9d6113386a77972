"""Evaluation of guided runs (guided distillation, docs/guided.md): quality and class accuracy against the guidance
weight w, for the guided teacher (two network evaluations per step) and the w-conditioned students (one).

Rows are {sampler, steps, w, metric, value} with metrics `frechet_classifier` (Frechet distance in the shipped
Fashion-MNIST classifier's features, against the test split; lower is better), `class_accuracy` (share of samples
the classifier puts in the class they were sampled for; what guidance buys) and `nfe` (network evaluations per
sample). Samplers: `teacher_ddim` (the guided teacher's DDIM), `student` (a student's DDIM), `student_stochastic`
(the paper's stochastic N-step sampler); the `data` row is the floor (training images against the test split, their
true labels for the accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import runfolder
from ..build import load_denoiser, schedule_of
from ..sampling import balanced_labels, generate
from .classifier import class_accuracy, feature_stats, load_classifier
from .frechet import frechet_distance
from .images import reference_sets, save_grid
from .plots import quality_vs_accuracy

GUIDED_SAMPLERS = ("teacher_ddim", "student", "student_stochastic")
# Registry sampler and network evaluations per step (per sample) of each evaluated sampler.
_KINDS = {"teacher_ddim": ("ddim", 2), "student": ("ddim", 1), "student_stochastic": ("stochastic", 1)}


def evaluate_guided(
    run: str | Path,
    out: str | Path | None = None,
    *,
    steps: list[int],
    ws: list[float],
    num: int = 1000,
    seed: int = 1234,
    teacher_steps: list[int] | None = None,
    guided: str | Path | None = None,
    samplers: tuple[str, ...] = GUIDED_SAMPLERS,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict]:
    """Rows for every sampler, step count and w (see the module text), written to OUT/report.json, OUT/report.md,
    OUT/quality_vs_accuracy.png and a sample grid per (w, steps) under OUT/samples/.

    The guided teacher (RUN/teacher) runs at every count of `steps` and `teacher_steps` (default: the largest of
    `steps`), the w-conditioned students of the guided distillation in `guided` (default RUN/guided) at the counts
    of `steps` they were distilled for."""
    run = Path(run)
    out = Path(out) if out is not None else runfolder.eval_dir(run)
    unknown = sorted(set(samplers) - set(GUIDED_SAMPLERS))
    if unknown:
        raise ValueError(f"unknown guided sampler(s) {', '.join(unknown)}; choose from {', '.join(GUIDED_SAMPLERS)}")
    teacher, record, cfg = load_denoiser(runfolder.teacher_stem(run), device)
    spec = teacher.spec
    if spec.data_shape != (1, 28, 28) or spec.num_classes != 10:
        raise ValueError("guided evaluation measures with the Fashion-MNIST classifier: it needs a 10-class "
                         f"1x28x28 model, this teacher is {spec.num_classes}-class {spec.data_shape}")
    guided = Path(guided) if guided is not None else runfolder.guided_dir(run)
    students = {k: p for k, p in runfolder.saved_students(guided).items() if k in steps}
    if not students and any(s != "teacher_ddim" for s in samplers):
        raise ValueError(f"{guided} holds no guided students at {', '.join(map(str, steps))} steps; run "
                         f"`progdistill distill --from {runfolder.teacher_stem(run)} --guided` first")
    schedule = schedule_of(spec)
    labels = balanced_labels(num, spec.num_classes)
    clf = load_classifier(device)
    reference, floor_images, floor_labels = reference_sets(cfg, num, seed)
    ref_stats = feature_stats(reference, clf)

    def measure(x: Tensor, lab: Tensor) -> dict[str, float]:
        return {"frechet_classifier": frechet_distance(*feature_stats(x, clf), *ref_stats),
                "class_accuracy": class_accuracy(x, lab, clf)}

    # The floor: training images with their own labels (the accuracy the classifier reaches on real data).
    rows = []
    if floor_labels is not None:
        rows += [{"sampler": "data", "steps": 0, "w": None, "metric": k, "value": v}
                 for k, v in measure(floor_images, floor_labels).items()]

    teacher_counts = sorted(set(steps) | set(teacher_steps or [max(steps)]), reverse=True)
    jobs = [("teacher_ddim", k) for k in teacher_counts if "teacher_ddim" in samplers]
    jobs += [(s, k) for s in ("student", "student_stochastic") if s in samplers for k in sorted(students, reverse=True)]
    jobs = [(s, k, w) for w in ws for s, k in jobs]
    models = {}
    grids: dict[tuple[float, int], list[tuple[str, Tensor]]] = {}
    for sampler, k, w in tqdm(jobs, desc="evaluate (guided)", disable=not progress, dynamic_ncols=True):
        if sampler == "teacher_ddim":
            model = teacher
        else:
            if k not in models:
                models = {k: load_denoiser(students[k], device)[0]}  # one student in memory at a time
            model = models[k]
        kind, per_step = _KINDS[sampler]
        x = generate(model, schedule, k, num, spec.data_shape, sampler=kind, guidance=w,
                     clip=record["sampling"]["clip"], seed=seed, batch_size=batch_size, device=device, labels=labels,
                     progress=progress)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{sampler} at {k} steps and w = {w} produced non-finite samples")
        values = {**measure(x, labels), "nfe": float(per_step * k)}
        rows += [{"sampler": sampler, "steps": k, "w": w, "metric": name, "value": v} for name, v in values.items()]
        grids.setdefault((w, k), []).append((sampler, x[:10]))

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    (out / "report.md").write_text(guided_tables(rows))
    quality_vs_accuracy(rows, out / "quality_vs_accuracy.png")
    for (w, k), panels in grids.items():
        save_grid([("data", floor_images[:10]), *panels], out / "samples" / f"w{w:g}_steps_{k:04d}.png")
    return rows


def guided_tables(rows: list[dict]) -> str:
    """One markdown table per metric: (sampler, steps) down the side, w across."""
    parts = []
    for metric, better in (("frechet_classifier", "lower"), ("class_accuracy", "higher"), ("nfe", "per sample")):
        sel = [r for r in rows if r["metric"] == metric and r["sampler"] != "data"]
        if not sel:
            continue
        ws = sorted({r["w"] for r in sel})
        keys = sorted({(r["sampler"], r["steps"]) for r in sel}, key=lambda t: (t[0], -t[1]))
        value = {(r["sampler"], r["steps"], r["w"]): r["value"] for r in sel}
        lines = [f"### {metric} ({better})", "", "| sampler | steps | " + " | ".join(f"w = {w:g}" for w in ws) + " |",
                 "|---|---:|" + "---:|" * len(ws)]
        for s, k in keys:
            cells = [f"{value[(s, k, w)]:.4g}" if (s, k, w) in value else "" for w in ws]
            lines.append(f"| {s} | {k} | " + " | ".join(cells) + " |")
        floor = [r["value"] for r in rows if r["metric"] == metric and r["sampler"] == "data"]
        if floor:
            lines += ["", f"Data (training images, their own labels): {floor[0]:.4g}"]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
