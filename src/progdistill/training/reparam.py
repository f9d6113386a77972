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

from pathlib import Path

from .. import runfolder
from ..config import Config, ConfigError
from ..data import make_batches
from .objectives import DistillObjective
from .phase import Phase, optim_settings, run_phase

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


def convert_student(teacher, student, schedule, steps: int, data, cfg: Config, out: Path, *, accelerator, runlog,
                    clip_below: float, progress: bool = True) -> list[tuple[int, float]]:
    """Train `student` (in place, no EMA, no checkpoints: a killed warm-up reruns identically) for
    cfg.distill.convert_updates updates onto the teacher's x_hat on the `steps`-step grid (clipped where the
    distillation target is); returns the loss history (logged as phase "convert")."""
    dc = cfg.distill
    phase = Phase(name="convert", desc=f"warm-up: {cfg.model.parameterization} student",
                  settings=replace(optim_settings(dc, dc.convert_updates, "linear"), ema_decay=0.0),
                  weighting=dc.weighting, seed=dc.seed + 999, grad_accum=dc.grad_accum,
                  checkpoints=runfolder.round_checkpoints(out),
                  prefix="convert_step", checkpoint_every=0, keep=0, record={},
                  fallback_note=" (the warm-up before round 1 writes no checkpoints; the teacher is intact)")

    def batches_after(start_batch: int, data_state: dict | None):
        return make_batches(data, dc.batch_size, dc.seed + 999, shard=(accelerator.process_index,
                            accelerator.num_processes), workers=cfg.data.workers, device=accelerator.device,
                            state=data_state, start=start_batch)

    return run_phase(phase, student, batches_after,
                     DistillObjective(teacher, schedule, steps, clip_below=clip_below, substeps=1),
                     accelerator=accelerator, runlog=runlog, progress=progress, perf=cfg.perf).history
