"""Evaluate a run (its teacher and every distilled student) against the data: report.json, a markdown table,
a plot of the metric against step count and sample panels."""

from __future__ import annotations

from pathlib import Path

from .. import runfolder
from ..build import load_denoiser, schedule_of
from ..checkpoint import CheckpointError
from ..data import sample_toy
from ..data.images import IMAGE_DATASETS
from .figures import ScatterPanels
from .metrics import sliced_wasserstein
from .plots import metric_vs_steps
from .rows import DPM_SOLVER, STUDENT, TEACHER_ANCESTRAL, TEACHER_DDIM, names
from .runner import Evaluation, Job, Metric, Models, ReportFiles, Sampling, data_rows, run_evaluation
from .tables import markdown_table

__all__ = ["METRIC", "evaluate_run", "markdown_table"]

METRIC = "sliced_wasserstein"
# The reference and floor sets of 2-D data come from seeds the training data never used (it draws from the data
# seed itself), and from two different ones, so the floor compares two independent samples.
REFERENCE_SEED_OFFSET = 100_003
FLOOR_SEED_OFFSET = 200_003
# Image runs evaluated without the teacher's ancestral baseline (evaluate --no-ancestral).
IMAGE_SAMPLERS_WITHOUT_ANCESTRAL = names((TEACHER_DDIM, DPM_SOLVER, STUDENT))


def evaluate_run(
    run: str | Path,
    out: str | Path | None = None,
    *,
    steps: list[int] | None = None,
    num: int = 10_000,
    seed: int = 1234,
    ancestral: bool = True,
    progress: bool = True,
    **image_options,
) -> list[dict]:
    """Sample quality against step count for the teacher's samplers and every student of a run.

    2-D data: sliced Wasserstein distance to fresh data. Images: see `evaluation.images.evaluate_images`, which
    receives `image_options` (samplers, max_steps, inception_weights, classifier, batch_size, device)."""
    run = Path(run)
    out = Path(out) if out is not None else runfolder.eval_dir(run)
    if not runfolder.has_teacher(run):
        raise CheckpointError(f"{run} holds no teacher checkpoint (teacher.json); is it a run folder made by "
                              "'progdistill train'?")
    teacher, record, cfg = load_denoiser(runfolder.teacher_stem(run))
    students = runfolder.saved_students(run)
    if steps is None:
        top = max([record["sampling"]["steps"], *students])
        steps = [2**i for i in range(top.bit_length())]
    if cfg.data.name in IMAGE_DATASETS:
        from .images import evaluate_images

        if not ancestral:
            image_options.setdefault("samplers", IMAGE_SAMPLERS_WITHOUT_ANCESTRAL)
        return evaluate_images(run, out, steps=steps, num=num, seed=seed, progress=progress, **image_options)
    if image_options:
        raise ValueError(f"options {', '.join(image_options)} apply to image runs only")
    reference = sample_toy(cfg.data.name, num, seed=cfg.data.seed + REFERENCE_SEED_OFFSET)
    metrics = [_sliced_wasserstein_to(reference)]
    jobs = [Job(TEACHER_DDIM, k) for k in steps] + [Job(STUDENT, k) for k in sorted(students, reverse=True)]
    if ancestral:
        jobs += [Job(TEACHER_ANCESTRAL, k) for k in steps]
    floor = data_rows(metrics, sample_toy(cfg.data.name, num, seed=cfg.data.seed + FLOOR_SEED_OFFSET))
    sampling = Sampling(schedule_of(teacher.spec), num, teacher.spec.data_shape, seed,
                        variance=record["sampling"]["variance"], clip=record["sampling"]["clip"],
                        require_finite=False)  # a diverged sampler is reported with an infinite distance
    files = ReportFiles(tables=lambda rows: markdown_table(rows, METRIC), plots=_plot_with_floor,
                        figures=ScatterPanels(reference, left_out=(TEACHER_ANCESTRAL,)))
    evaluation = Evaluation(jobs, Models(teacher, students), sampling, metrics, files, floor=floor, progress=progress)
    return run_evaluation(evaluation, out)


def _sliced_wasserstein_to(reference) -> Metric:
    """The 2-D metric: sliced Wasserstein distance of a sample set to `reference`."""
    return lambda samples: {METRIC: sliced_wasserstein(samples, reference)}


def _plot_with_floor(rows: list[dict], out: Path) -> None:
    """OUT/metric_vs_steps.png, with the data row as the floor."""
    metric_vs_steps(rows, out / "metric_vs_steps.png", METRIC, floor=rows[0]["value"])

