"""The evaluation runner's pieces without a run folder: the row registry, the shared batching helper, the runner on
a small configuration, and the deprecated `progdistill.evaluation.sampling` names."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor

import progdistill.sampling
from progdistill.diffusion.registry import SAMPLERS
from progdistill.diffusion.schedules import CosineSchedule
from progdistill.evaluation import runner
from progdistill.evaluation.rows import (DATA, DIFFUSERS_SAMPLER, ROWS, STUDENT, STUDENT_STOCHASTIC, TEACHER_DDIM,
                                         rows_named)
from progdistill.evaluation.runner import (Evaluation, Job, Models, ReportFiles, Sampling, data_rows,
                                           run_evaluation)
from progdistill.sampling import generate, sample_in_batches

SHAPE = (2,)


def _denoiser(z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
    """A smooth stand-in network: x_hat depends on z and the noise level."""
    return torch.tanh(z) * torch.sigmoid(logsnr)[:, None]


class _KeepAll:
    """Figures that keep every job's samples and record where they were saved."""

    def __init__(self) -> None:
        self.added: list[tuple[Job, Tensor]] = []
        self.saved_to: Path | None = None

    def add(self, job: Job, samples: Tensor) -> None:
        self.added.append((job, samples))

    def save(self, out: Path) -> None:
        self.saved_to = out


def _mean_metric(samples: Tensor) -> dict[str, float]:
    return {"mean": float(samples.mean())}


def _evaluation(jobs: list[Job], figures: _KeepAll, **fields) -> Evaluation:
    sampling = Sampling(CosineSchedule(), 6, SHAPE, seed=5, batch_size=4, require_finite=fields.pop("finite", True))
    files = ReportFiles(tables=lambda rows: f"{len(rows)} rows\n", plots=lambda rows, out: None, figures=figures)
    return Evaluation(jobs, Models(_denoiser, {}), sampling, [_mean_metric], files, progress=False, **fields)


def test_row_registry_names_each_row_once_and_maps_onto_the_sampler_registry():
    assert list(ROWS) == ["teacher_ddim", "teacher_ancestral", "dpm_solver", "student", "student_stochastic",
                          "diffusers_ddim"]
    assert {row.sampler for row in ROWS.values()} - {DIFFUSERS_SAMPLER} <= set(SAMPLERS)
    assert DATA not in ROWS
    assert rows_named(("student", "teacher_ddim"), (TEACHER_DDIM, STUDENT)) == (STUDENT, TEACHER_DDIM)
    with pytest.raises(ValueError, match="unknown guided sampler\\(s\\) euler; choose from teacher_ddim, student$"):
        rows_named(("euler", "student"), (TEACHER_DDIM, STUDENT), "guided ")


def test_sample_in_batches_draws_one_noise_stream_and_splits_the_labels():
    labels = torch.arange(5)
    seen = []

    def denoise(z: Tensor, batch_labels: Tensor | None, generator: torch.Generator) -> Tensor:
        seen.append(batch_labels.tolist())
        return z

    x = sample_in_batches(denoise, 5, SHAPE, seed=3, batch_size=2, labels=labels)
    gen = torch.Generator().manual_seed(3)
    expected = torch.cat([torch.randn((b, *SHAPE), generator=gen) for b in (2, 2, 1)])
    assert torch.equal(x, expected) and seen == [[0, 1], [2, 3], [4]]
    # generate is the helper around a registry sampler: the same noise for the same seed.
    schedule = CosineSchedule()
    assert torch.equal(generate(_denoiser, schedule, 2, 5, SHAPE, seed=3, batch_size=2),
                       generate(_denoiser, schedule, 2, 5, SHAPE, seed=3, batch_size=2))


def test_runner_samples_scores_and_writes_every_job(tmp_path):
    jobs = [Job(TEACHER_DDIM, 2), Job(TEACHER_DDIM, 1)]
    presampled = torch.full((6, 2), 0.5)
    figures = _KeepAll()
    evaluation = _evaluation(jobs, figures, floor=data_rows([_mean_metric], torch.zeros(6, 2)),
                             job_metrics=[lambda job: {"nfe": float(job.steps)}], presampled={jobs[1]: presampled})
    rows = run_evaluation(evaluation, tmp_path)
    expected_two = generate(_denoiser, CosineSchedule(), 2, 6, SHAPE, seed=5, batch_size=4)
    assert rows == [
        {"sampler": DATA, "steps": 0, "metric": "mean", "value": 0.0},
        {"sampler": "teacher_ddim", "steps": 2, "metric": "mean", "value": float(expected_two.mean())},
        {"sampler": "teacher_ddim", "steps": 2, "metric": "nfe", "value": 2.0},
        {"sampler": "teacher_ddim", "steps": 1, "metric": "mean", "value": 0.5},  # presampled: not drawn again
        {"sampler": "teacher_ddim", "steps": 1, "metric": "nfe", "value": 1.0},
    ]
    assert json.loads((tmp_path / "report.json").read_text()) == rows
    assert (tmp_path / "report.md").read_text() == "5 rows\n"
    assert [job for job, _ in figures.added] == jobs and figures.saved_to == tmp_path


def test_runner_rows_carry_w_and_non_finite_samples_raise_where_required(tmp_path):
    guided = Job(TEACHER_DDIM, 1, w=0.0)  # presampled: a guided draw needs a model with a spec
    guided_rows = run_evaluation(_evaluation([guided], _KeepAll(), w_column=True,
                                             presampled={guided: torch.zeros(6, 2)}), tmp_path)
    assert list(guided_rows[0]) == ["sampler", "steps", "w", "metric", "value"] and guided_rows[0]["w"] == 0.0

    def diverging(z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        return torch.full_like(z, float("nan"))

    evaluation = _evaluation([Job(TEACHER_DDIM, 1)], _KeepAll())
    evaluation.models = Models(diverging, {})
    with pytest.raises(FloatingPointError, match="^teacher_ddim at 1 steps produced non-finite samples$"):
        run_evaluation(evaluation, tmp_path / "a")
    lenient = _evaluation([Job(TEACHER_DDIM, 1)], _KeepAll(), finite=False)
    lenient.models = Models(diverging, {})
    assert math.isnan(run_evaluation(lenient, tmp_path / "b")[0]["value"])  # the metric sees them


def test_models_keep_one_student_in_memory(monkeypatch):
    loads = []

    def load(stem: Path, device: str = "cpu"):
        loads.append(stem.name)
        return object(), {}, None

    monkeypatch.setattr(runner, "load_denoiser", load)
    models = Models(_denoiser, {1: Path("student_1"), 2: Path("student_2")})
    first = models.for_job(Job(STUDENT, 1))
    assert models.for_job(Job(STUDENT_STOCHASTIC, 1, w=2.0)) is first  # same student, another sampler and w
    models.for_job(Job(STUDENT, 2))
    models.for_job(Job(STUDENT, 1))
    assert loads == ["student_1", "student_2", "student_1"]
    assert models.for_job(Job(TEACHER_DDIM, 1)) is _denoiser


def test_old_sampling_path_warns_and_returns_the_moved_objects():
    import progdistill.evaluation.sampling as old

    for name in ("generate", "SAMPLERS"):
        with pytest.warns(DeprecationWarning, match=f"progdistill.sampling.{name}"):
            assert getattr(old, name) is getattr(progdistill.sampling, name)
    with pytest.warns(DeprecationWarning):
        from progdistill.evaluation.sampling import generate as old_generate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the object itself is the new one: calling it warns no more
        x = old_generate(_denoiser, CosineSchedule(), 2, 3, SHAPE, seed=1)
    assert torch.equal(x, generate(_denoiser, CosineSchedule(), 2, 3, SHAPE, seed=1))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        old.nothing  # noqa: B018
