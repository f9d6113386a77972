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

from pathlib import Path

import torch
from torch import Tensor

from .. import runfolder
from ..build import load_denoiser, schedule_of
from ..sampling import balanced_labels
from .classifier import FashionClassifier, class_accuracy
from .figures import SampleGrids
from .images import ClassifierMetric, reference_sets
from .plots import quality_vs_accuracy
from .rows import DATA, STUDENT, STUDENT_STOCHASTIC, TEACHER_DDIM, Row, Weights, names, rows_named
from .runner import Evaluation, Job, Metric, Models, ReportFiles, Sampling, data_rows, run_evaluation

GUIDED_ROWS = (TEACHER_DDIM, STUDENT, STUDENT_STOCHASTIC)
GUIDED_SAMPLERS = names(GUIDED_ROWS)
ACCURACY_METRIC = "class_accuracy"
COST_METRIC = "nfe"


def evaluations_per_step(row: Row) -> int:
    """Network evaluations per sampling step and sample: the guided teacher runs its conditional and unconditional
    branches, a w-conditioned student one network."""
    return 2 if row.weights is Weights.TEACHER else 1


# Report name -> (registry sampler, network evaluations per step) of each evaluated sampler.
_KINDS = {row.name: (row.sampler, evaluations_per_step(row)) for row in GUIDED_ROWS}


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
    requested = rows_named(tuple(samplers), GUIDED_ROWS, "guided ")
    teacher, record, cfg = load_denoiser(runfolder.teacher_stem(run), device)
    spec = teacher.spec
    if spec.data_shape != (1, 28, 28) or spec.num_classes != 10:
        raise ValueError("guided evaluation measures with the Fashion-MNIST classifier: it needs a 10-class "
                         f"1x28x28 model, this teacher is {spec.num_classes}-class {spec.data_shape}")
    guided = Path(guided) if guided is not None else runfolder.guided_dir(run)
    students = {k: p for k, p in runfolder.saved_students(guided).items() if k in steps}
    if not students and any(row is not TEACHER_DDIM for row in requested):
        raise ValueError(f"{guided} holds no guided students at {', '.join(map(str, steps))} steps; run "
                         f"`progdistill distill --from {runfolder.teacher_stem(run)} --guided` first")
    labels = balanced_labels(num, spec.num_classes)
    reference, floor_images, floor_labels = reference_sets(cfg, num, seed)
    frechet = ClassifierMetric(reference, device)
    # The floor: training images with their own labels (the accuracy the classifier reaches on real data).
    floor = ([] if floor_labels is None else
             data_rows([frechet, _accuracy(frechet.classifier, floor_labels)], floor_images, w_column=True))
    sampling = Sampling(schedule_of(spec), num, spec.data_shape, seed, clip=record["sampling"]["clip"],
                        batch_size=batch_size, device=device, labels=labels, progress=progress)
    files = ReportFiles(tables=guided_tables, plots=_plot_quality_vs_accuracy,
                        figures=SampleGrids(floor_images, lambda job: f"w{job.w:g}_steps_{job.steps:04d}.png"))
    jobs = _guided_jobs(requested, steps, teacher_steps, students, ws)
    evaluation = Evaluation(jobs, Models(teacher, students, device), sampling,
                            [frechet, _accuracy(frechet.classifier, labels)], files, floor=floor,
                            job_metrics=[_network_evaluations], w_column=True, desc="evaluate (guided)",
                            progress=progress)
    return run_evaluation(evaluation, out)


def _guided_jobs(requested: tuple[Row, ...], steps: list[int], teacher_steps: list[int] | None,
                 students: dict[int, Path], ws: list[float]) -> list[Job]:
    """For every w: the teacher at every count of `steps` and `teacher_steps`, then each student sampler."""
    teacher_counts = sorted(set(steps) | set(teacher_steps or [max(steps)]), reverse=True)
    cells = [(row, k) for row in GUIDED_ROWS if row in requested
             for k in (teacher_counts if row is TEACHER_DDIM else sorted(students, reverse=True))]
    return [Job(row, k, w) for w in ws for row, k in cells]


def _accuracy(classifier: FashionClassifier, labels: Tensor) -> Metric:
    """The share of samples the classifier puts in the class of `labels`."""
    return lambda samples: {ACCURACY_METRIC: class_accuracy(samples, labels, classifier)}


def _network_evaluations(job: Job) -> dict[str, float]:
    """Network evaluations per sample of a job."""
    return {COST_METRIC: float(evaluations_per_step(job.row) * job.steps)}


def _plot_quality_vs_accuracy(rows: list[dict], out: Path) -> None:
    """OUT/quality_vs_accuracy.png."""
    quality_vs_accuracy(rows, out / "quality_vs_accuracy.png")


def guided_tables(rows: list[dict]) -> str:
    """One markdown table per metric: (sampler, steps) down the side, w across."""
    parts = []
    for metric, better in ((ClassifierMetric.name, "lower"), (ACCURACY_METRIC, "higher"), (COST_METRIC, "per sample")):
        sel = [r for r in rows if r["metric"] == metric and r["sampler"] != DATA]
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
        floor = [r["value"] for r in rows if r["metric"] == metric and r["sampler"] == DATA]
        if floor:
            lines += ["", f"Data (training images, their own labels): {floor[0]:.4g}"]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
