"""The one evaluation runner: a list of jobs (row, step count, guidance weight w) is sampled from the same noise,
checked, scored by a list of metrics and written as report.json, report.md, plots and sample figures. The 2-D,
image and guided evaluations are configurations of it (`Evaluation` values)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..build import load_denoiser
from ..diffusion.schedules import Schedule
from ..sampling import generate
from .rows import DATA, DIFFUSERS_SAMPLER, Row, Weights


@dataclass(frozen=True)
class Job:
    """One report cell to sample: a row of the registry at a step count (and, for guided models, a weight w)."""

    row: Row
    steps: int
    w: float | None = None

    def describe(self) -> str:
        """The job in words, for error messages."""
        return f"{self.row.name} at {self.steps} steps" + (f" and w = {self.w}" if self.w is not None else "")


# samples -> {metric name: value}; a metric that needs labels or a reference set holds them.
Metric = Callable[[Tensor], dict[str, float]]
# job -> {metric name: value}, for what a job costs rather than what its samples are (network evaluations).
JobMetric = Callable[[Job], dict[str, float]]


@dataclass
class Sampling:
    """How every job draws its samples: the same seed (so the same starting noise), labels and batching for all."""

    schedule: Schedule
    num: int
    shape: tuple[int, ...]
    seed: int
    variance: str = "small"
    clip: bool = True
    batch_size: int = 10_000
    device: torch.device | str = "cpu"
    labels: Tensor | None = None
    progress: bool = False
    diffusers_scheduler: dict | None = None  # an imported teacher's scheduler config, for DIFFUSERS_SAMPLER rows
    require_finite: bool = True  # raise on non-finite samples (else the metrics see them)


class Models:
    """The teacher and the students by step count; one student in memory at a time."""

    def __init__(self, teacher: torch.nn.Module, students: dict[int, Path], device: torch.device | str = "cpu",
                 sources: dict[str, dict[int, Path]] | None = None):
        self.teacher = teacher
        self.students = students
        self.sources = sources or {}  # other runs' students by row name (evaluation/methods.py), then step count
        self.device = device
        self._loaded: dict[Path, torch.nn.Module] = {}

    def student_path(self, job: Job) -> Path:
        """The checkpoint a student row's job samples: its run's student of the job's step count."""
        return self.sources.get(job.row.name, self.students)[job.steps]

    def for_job(self, job: Job) -> torch.nn.Module:
        """The weights `job` samples: the teacher, or the student of its step count (loaded on first use)."""
        if job.row.weights is Weights.TEACHER:
            return self.teacher
        path = self.student_path(job)
        if path not in self._loaded:
            self._loaded = {path: load_denoiser(path, self.device)[0]}
        return self._loaded[path]


class Figures(Protocol):
    """Collects some samples of every job and draws them once all jobs have run."""

    def add(self, job: Job, samples: Tensor) -> None:
        """Keep what the figures show of `job`'s samples."""

    def save(self, out: Path) -> None:
        """Write the figures under `out`."""


@dataclass
class ReportFiles:
    """What is written besides report.json: the markdown tables, the plots and the sample figures."""

    tables: Callable[[list[dict]], str]
    plots: Callable[[list[dict], Path], None]
    figures: Figures


@dataclass
class Evaluation:
    """A configuration of the runner: jobs, the models and sampling they use, metrics and the report files."""

    jobs: list[Job]
    models: Models
    sampling: Sampling
    metrics: list[Metric]
    files: ReportFiles
    floor: list[dict] = field(default_factory=list)  # the data rows, first in the report
    job_metrics: list[JobMetric] = field(default_factory=list)
    presampled: dict[Job, Tensor] = field(default_factory=dict)  # samples already drawn (a reference set)
    w_column: bool = False  # rows carry the guidance weight w
    desc: str = "evaluate"
    progress: bool = True


def report_row(sampler: str, steps: int, metric: str, value: float, w: float | None, w_column: bool) -> dict:
    """One row of report.json: {sampler, steps, (w,) metric, value}."""
    return {"sampler": sampler, "steps": steps, **({"w": w} if w_column else {}), "metric": metric, "value": value}


def measure(metrics: list[Metric], samples: Tensor) -> dict[str, float]:
    """Every metric's values for `samples`, in the metrics' order."""
    values: dict[str, float] = {}
    for metric in metrics:
        values.update(metric(samples))
    return values


def data_rows(metrics: list[Metric], samples: Tensor, w_column: bool = False) -> list[dict]:
    """The floor rows: `metrics` of a sample of the data."""
    return [report_row(DATA, 0, name, value, None, w_column) for name, value in measure(metrics, samples).items()]


def draw(models: Models, sampling: Sampling, job: Job) -> Tensor:
    """`job`'s samples from the shared noise; FloatingPointError on non-finite ones where `sampling` requires."""
    model = models.for_job(job)
    if job.row.sampler == DIFFUSERS_SAMPLER:
        from ..interop.diffusers_io import diffusers_default_ddim

        x = diffusers_default_ddim(model, sampling.diffusers_scheduler, job.steps, sampling.num, sampling.shape,
                                   seed=sampling.seed, batch_size=sampling.batch_size, device=sampling.device,
                                   labels=sampling.labels)
    else:
        x = generate(model, sampling.schedule, job.steps, sampling.num, sampling.shape, sampler=job.row.sampler,
                     variance=sampling.variance, clip=sampling.clip, seed=sampling.seed,
                     batch_size=sampling.batch_size, device=sampling.device, labels=sampling.labels,
                     progress=sampling.progress, guidance=job.w)
    if sampling.require_finite and not torch.isfinite(x).all():
        raise FloatingPointError(f"{job.describe()} produced non-finite samples")
    return x


def run_evaluation(evaluation: Evaluation, out: Path) -> list[dict]:
    """Sample and score every job, then write OUT/report.json, report.md, the plots and figures; returns the rows."""
    rows = list(evaluation.floor)
    for job in tqdm(evaluation.jobs, desc=evaluation.desc, disable=not evaluation.progress, dynamic_ncols=True):
        if job in evaluation.presampled:
            x = evaluation.presampled[job]
        else:
            x = draw(evaluation.models, evaluation.sampling, job)
        values = measure(evaluation.metrics, x)
        for job_metric in evaluation.job_metrics:
            values.update(job_metric(job))
        rows += [report_row(job.row.name, job.steps, name, value, job.w, evaluation.w_column)
                 for name, value in values.items()]
        evaluation.files.figures.add(job, x)
        del x  # the figures keep what they show of it
    write_report(rows, Path(out), evaluation.files)
    return rows


def write_report(rows: list[dict], out: Path, files: ReportFiles) -> None:
    """report.json, report.md, the plots and the figures under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    (out / "report.md").write_text(files.tables(rows))
    files.plots(rows, out)
    files.figures.save(out)
