"""The "auto" values of [distill] made explicit for a teacher, and the config of that teacher's students."""

from __future__ import annotations

from dataclasses import replace

from . import choices
from .constraints import ConfigError
from .schema import Config

# Outputs of one value per data channel: a network trained for one of these starts a student of another with the
# same weights, its output read the new way ("both" outputs two values per data channel).
INTERCHANGEABLE_PARAMETERIZATIONS = ("eps", "x", "v")


def resolve_distill(cfg: Config) -> Config:
    """cfg with the "auto" [distill] values made explicit for its model's (the teacher's) parameterization: an eps
    teacher gets v students, a warm-up of 2 x updates_per_round and clipped-teacher targets at the noisy grid
    points; any other teacher its own parameterization, no warm-up and the paper's target."""
    distill, teacher = cfg.distill, cfg.model.parameterization
    student = distill.parameterization
    if student == "auto":
        student = "v" if teacher == "eps" else "same"
    changes = student not in ("same", teacher)
    convert = (distill.convert_updates if distill.convert_updates >= 0
               else (2 * distill.updates_per_round if changes else 0))
    clip = distill.teacher_clip if distill.teacher_clip != "auto" else ("noisy" if teacher == "eps" else "none")
    return replace(cfg, distill=replace(distill, parameterization=student, convert_updates=convert,
                                        teacher_clip=clip)).validate()


def student_config(cfg: Config) -> Config:
    """cfg (its "auto" [distill] values resolved) with model.parameterization set to the students'
    (distill.parameterization; "same" keeps the teacher's); refuses a student that cannot start from the
    teacher's weights or whose loss weighting (distill.weighting) is known to diverge."""
    cfg = resolve_distill(cfg)
    teacher, student = cfg.model.parameterization, cfg.distill.parameterization
    if student not in ("same", teacher):
        if teacher not in INTERCHANGEABLE_PARAMETERIZATIONS or student not in INTERCHANGEABLE_PARAMETERIZATIONS:
            raise ConfigError(f"distill.parameterization {student!r}: a {teacher!r} teacher's weights cannot start "
                              f"a {student!r} student (the output has another number of channels); choose one of "
                              f"{', '.join(INTERCHANGEABLE_PARAMETERIZATIONS)} for eps, x and v teachers, or "
                              "'same'")
        cfg = replace(cfg, model=replace(cfg.model, parameterization=student)).validate()
    reason = choices.FORBIDDEN.get((cfg.model.parameterization, cfg.distill.weighting))
    if reason:
        raise ConfigError(f"distill.weighting: {reason}")
    return cfg
