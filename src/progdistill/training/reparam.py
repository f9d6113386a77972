"""Students whose output parameterization differs from their teacher's (distill.parameterization).

An eps, x or v network has the same shape whatever its output means, so the student starts from the teacher's
weights with its output read the new way (an eps teacher's output read as v is right where v ~ eps, at low noise,
and wrong where v ~ -x, near t = 1). `convert_updates` > 0 warms such a student up before the first round: it
learns, on the first round's grid, the teacher's own x_hat at every grid point (one teacher step = one student
step; `DistillObjective(substeps=1)`), so the first round starts from a copy of the teacher's sampler.
See docs/imported_teachers.md for what was measured.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import Config, ConfigError
from .loop import OptimSettings, fit
from .objectives import DistillObjective

SAME_SHAPE = ("eps", "x", "v")  # one output channel per data channel: weights carry over between these


def resolve_distill(cfg: Config) -> Config:
    """cfg with the "auto" [distill] values made explicit for its model's (the teacher's) parameterization: an eps
    teacher gets v students, a warm-up of 2 x updates_per_round and clipped-teacher targets at the noisy grid
    points; any other teacher its own parameterization, no warm-up and the paper's target."""
    dc, teacher = cfg.distill, cfg.model.parameterization
    student = dc.parameterization
    if student == "auto":
        student = "v" if teacher == "eps" else "same"
    changes = student not in ("same", teacher)
    convert = dc.convert_updates if dc.convert_updates >= 0 else (2 * dc.updates_per_round if changes else 0)
    clip = dc.teacher_clip if dc.teacher_clip != "auto" else ("noisy" if teacher == "eps" else "none")
    return replace(cfg, distill=replace(dc, parameterization=student, convert_updates=convert,
                                        teacher_clip=clip)).validate()


def student_config(cfg: Config) -> Config:
    """cfg (its "auto" [distill] values resolved) with model.parameterization set to the students'
    (distill.parameterization; "same" keeps the teacher's)."""
    cfg = resolve_distill(cfg)
    teacher, student = cfg.model.parameterization, cfg.distill.parameterization
    if student in ("same", teacher):
        return cfg
    if teacher not in SAME_SHAPE or student not in SAME_SHAPE:
        raise ConfigError(f"distill.parameterization {student!r}: a {teacher!r} teacher's weights cannot start a "
                          f"{student!r} student (the output has another number of channels); choose one of "
                          f"{', '.join(SAME_SHAPE)} for eps, x and v teachers, or 'same'")
    return replace(cfg, model=replace(cfg.model, parameterization=student)).validate()


def convert_student(teacher, student, schedule, steps: int, data, cfg: Config, *, accelerator, clip_below: float,
                    progress: bool = True, log=None) -> list[tuple[int, float]]:
    """Train `student` (in place) for cfg.distill.convert_updates updates onto the teacher's x_hat on the
    `steps`-step grid (clipped where the distillation target is); returns the loss history."""
    dc = cfg.distill
    settings = OptimSettings(lr=dc.lr, total_steps=dc.convert_updates, warmup=dc.warmup, decay="linear",
                             grad_clip=dc.grad_clip, betas=(dc.adam_beta1, dc.adam_beta2))
    return fit(student, data.batches(dc.batch_size, dc.seed + 999), DistillObjective(
        teacher, schedule, steps, clip_below=clip_below, substeps=1), dc.weighting, settings,
        accelerator=accelerator, seed=dc.seed + 999, desc=f"warm-up: {cfg.model.parameterization} student",
        progress=progress, grad_accum=dc.grad_accum, log=log, perf=cfg.perf)
