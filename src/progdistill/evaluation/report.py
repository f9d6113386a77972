"""Evaluate a run (its teacher and every distilled student) against the data: report.json, a markdown table,
a plot of the metric against step count and sample panels."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .. import runfolder
from ..build import load_denoiser, schedule_of
from ..data import sample_toy
from ..data.images import IMAGE_DATASETS
from ..checkpoint import CheckpointError
from .metrics import sliced_wasserstein
from .tables import markdown_table
from .plots import metric_vs_steps, scatter_panels
from ..sampling import generate

METRIC = "sliced_wasserstein"


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
    sampling = record["sampling"]
    if steps is None:
        top = max([sampling["steps"], *students])
        steps = [2**i for i in range(top.bit_length())]
    if cfg.data.name in IMAGE_DATASETS:
        from .images import evaluate_images

        if not ancestral:
            image_options.setdefault("samplers", ("teacher_ddim", "dpm_solver", "student"))
        return evaluate_images(run, out, steps=steps, num=num, seed=seed, progress=progress, **image_options)
    if image_options:
        raise ValueError(f"options {', '.join(image_options)} apply to image runs only")
    schedule = schedule_of(teacher.spec)
    shape = teacher.spec.data_shape
    # Reference and floor sets come from seeds the training data never used.
    reference = sample_toy(cfg.data.name, num, seed=cfg.data.seed + 100_003)
    rows = [{"sampler": "data", "steps": 0, "metric": METRIC,
             "value": sliced_wasserstein(sample_toy(cfg.data.name, num, seed=cfg.data.seed + 200_003), reference)}]
    panels = [("data", reference)]
    jobs = [("teacher_ddim", k) for k in steps] + [("student", k) for k in sorted(students, reverse=True)]
    if ancestral:
        jobs += [("teacher_ancestral", k) for k in steps]
    for sampler, k in tqdm(jobs, desc="evaluate", disable=not progress, dynamic_ncols=True):
        model = load_denoiser(students[k])[0] if sampler == "student" else teacher
        x = generate(model, schedule, k, num, shape, sampler="ancestral" if sampler == "teacher_ancestral" else "ddim",
                     variance=sampling["variance"], clip=sampling["clip"], seed=seed)
        rows.append({"sampler": sampler, "steps": k, "metric": METRIC, "value": sliced_wasserstein(x, reference)})
        if sampler != "teacher_ancestral":
            panels.append((f"{sampler} {k} steps", x))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    (out / "report.md").write_text(markdown_table(rows, METRIC))
    metric_vs_steps(rows, out / "metric_vs_steps.png", METRIC, floor=rows[0]["value"])
    scatter_panels(panels, out / "samples.png")
    return rows
