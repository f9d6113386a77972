"""Students whose output parameterization differs from their teacher's (distill.parameterization).

An eps, x or v network has the same shape whatever its output means, so the student starts from the teacher's
weights with its output read the new way (an eps teacher's output read as v is right where v ~ eps, at low noise,
and wrong where v ~ -x, near t = 1). `convert_updates` > 0 warms such a student up before the first round: it
learns, on the first round's grid, the teacher's own x_hat at every grid point (one teacher step = one student
step; `ConversionObjective`), so the first round starts from a copy of the teacher's sampler.
See docs/imported_teachers.md for what was measured.
"""

from __future__ import annotations

from dataclasses import replace

from .. import runfolder
from ..denoiser import Denoiser
from ..diffusion.schedules import Schedule
from .noise import noise_for
from .objectives import ConversionObjective
from .phase import Phase, Run, optim_settings, run_phase

# The warm-up draws its data order and noise from distill.seed plus this offset: a stream apart from the rounds'.
WARM_UP_SEED_OFFSET = 999


def warm_up_student(teacher: Denoiser, student: Denoiser, schedule: Schedule, steps: int, run: Run, *,
                    clip_below: float) -> list[tuple[int, float]]:
    """Train `student` (in place, no EMA, no checkpoints: a killed warm-up reruns identically) for
    distill.convert_updates updates onto the teacher's x_hat on the `steps`-step grid (clipped where the
    distillation target is); returns the loss history (logged as phase "convert")."""
    distill_cfg = run.cfg.distill
    phase = Phase(name="convert", desc=f"warm-up: {run.cfg.model.parameterization} student",
                  settings=replace(optim_settings(distill_cfg.optim, distill_cfg.convert_updates, "linear"),
                                   ema_decay=0.0),
                  weighting=distill_cfg.weighting, seed=distill_cfg.seed + WARM_UP_SEED_OFFSET,
                  data_seed=distill_cfg.seed + WARM_UP_SEED_OFFSET, batch_size=distill_cfg.batch_size,
                  batch_field="distill.batch_size", grad_accum=distill_cfg.grad_accum,
                  checkpoints=runfolder.round_checkpoints(run.out), prefix="convert_step", checkpoint_every=0, keep=0,
                  record={}, fallback_note=" (the warm-up before round 1 writes no checkpoints; the teacher is intact)")
    objective = ConversionObjective(teacher, schedule, steps, clip_below=clip_below,
                                    noise=noise_for(run.cfg.perf.per_example_noise))
    return run_phase(phase, student, objective, run).history
