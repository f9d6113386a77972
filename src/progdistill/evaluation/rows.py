"""The registry of report row names: each evaluated sampler's name in report.json, the sampler it runs and whose
weights it samples. Every evaluation (2-D, image, guided) takes its row names from here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# The floor rows: the metric between a sample of the data and the reference set.
DATA = "data"
# Not in the sampler registry: diffusers' own DDIMScheduler on an imported model
# (interop.diffusers_io.diffusers_default_ddim), reported beside ours for every imported teacher.
DIFFUSERS_SAMPLER = "diffusers"


class Weights(Enum):
    """Whose weights a row samples: the run's teacher, or the student distilled for the row's step count."""

    TEACHER = "teacher"
    STUDENT = "student"


@dataclass(frozen=True)
class Row:
    """A report row name, the sampler it runs (a sampler-registry name or DIFFUSERS_SAMPLER) and whose weights."""

    name: str
    sampler: str
    weights: Weights


TEACHER_DDIM = Row("teacher_ddim", "ddim", Weights.TEACHER)
TEACHER_ANCESTRAL = Row("teacher_ancestral", "ancestral", Weights.TEACHER)
DPM_SOLVER = Row("dpm_solver", "dpm_solver", Weights.TEACHER)
STUDENT = Row("student", "ddim", Weights.STUDENT)
# The paper's stochastic N-step sampler for guided students.
STUDENT_STOCHASTIC = Row("student_stochastic", "stochastic", Weights.STUDENT)
DIFFUSERS_DDIM = Row("diffusers_ddim", DIFFUSERS_SAMPLER, Weights.TEACHER)

ROWS: dict[str, Row] = {row.name: row for row in (TEACHER_DDIM, TEACHER_ANCESTRAL, DPM_SOLVER, STUDENT,
                                                  STUDENT_STOCHASTIC, DIFFUSERS_DDIM)}
# The few-step baselines of the teacher that --max-baseline-steps limits.
BASELINE_ROWS = (TEACHER_ANCESTRAL.name, DPM_SOLVER.name)


def names(rows: tuple[Row, ...]) -> tuple[str, ...]:
    """The report names of `rows`, in order."""
    return tuple(row.name for row in rows)


def rows_named(requested: tuple[str, ...], allowed: tuple[Row, ...], what: str = "") -> tuple[Row, ...]:
    """The rows of `allowed` named in `requested` (in the requested order); ValueError naming the unknown ones."""
    by_name = {row.name: row for row in allowed}
    unknown = sorted(set(requested) - set(by_name))
    if unknown:
        raise ValueError(f"unknown {what}sampler(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    return tuple(by_name[name] for name in requested)
