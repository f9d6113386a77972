"""What differs between the distillation methods (distill.method; docs/methods.md), beside the shared round loop:
their rounds, their targets, the EMA their targets come from, their loss and what they cost.

Each method is one entry of `METHODS` (below); nothing outside it asks which method runs.

- pd: progressive distillation (Salimans & Ho 2022), rounds N -> N/2, two frozen-teacher DDIM steps per target.
- cd: consistency distillation (Song et al. 2023), one phase on the teacher's N-step grid: one teacher DDIM step to
  the previous grid point, the target network's (the EMA's, decay cd_target_ema) consistency function there; one
  student for every step count, sampled with the multistep consistency sampler.
- tract: TRACT (Berthelot et al. 2023), tract_phases phases from start_steps to target_steps; every point of a
  segment learns to jump to the segment's end through one teacher step and the self-teacher (EMA, tract_self_ema).
- dmd: DMD2 (Yin et al. 2024), one phase of three players (training/dmd.py): a target_steps-step generator, an
  online fake score and a discriminator head. pd with distill.adversarial_weight > 0 is adversarial progressive
  distillation (training/adversarial.py), two players a round.

The budget of a distillation is counted in one way for all: student updates, training images seen (updates x the
global batch x grad_accum) and network evaluations per image of the teacher and of the student's own EMA network
(each objective's EVALS), summed over its phases (and a warm-up) and recorded, cumulative, in every student.
Phases of several players count their networks' forward and backward evaluations as they run (training/counting.py)
and record them beside, with forward-equivalent evaluations (a backward counted as two), the one axis of reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from ..checkpoint import BUDGET_KEYS
from ..config import Config, ConfigError, check_distill_steps
from ..config.choices import DISTILL_METHODS
from ..diffusion.weighting import PSEUDO_HUBER
from .adversarial import AdversarialPD
from .counting import STUDENT_FE_PER_IMAGE
from .dmd import DMDObjective
from .objectives import ConsistencyObjective, DistillObjective, TractObjective

COUNTED = "forward_equivalent"  # a players phase's counted budget (training/counting.py): its fields
COUNTED_KEYS = (COUNTED, "evals", "players")


@dataclass(frozen=True)
class Round:
    """Round `number`: a student of `student_steps` learns two steps of its `teacher_steps` teacher in `updates`."""

    number: int
    teacher_steps: int
    student_steps: int
    updates: int


def zero_budget() -> dict[str, int]:
    return dict.fromkeys(BUDGET_KEYS, 0)


def add_cost(budget: dict[str, int], updates: int, images_per_update: int, evals: tuple[int, int]) -> dict[str, int]:
    """`budget` plus a phase of `updates` optimizer steps over `images_per_update` images each, whose objective
    evaluates the teacher and the self-teacher `evals` times per image. A budget that a players phase counted
    (training/counting.py) keeps its counted fields, its forward-equivalent evaluations grown by this phase's."""
    images = updates * images_per_update
    out = {"student_updates": budget["student_updates"] + updates, "images_seen": budget["images_seen"] + images,
           "teacher_evals": budget["teacher_evals"] + images * evals[0],
           "self_evals": budget["self_evals"] + images * evals[1]}
    if COUNTED in budget:
        out |= {key: budget[key] for key in COUNTED_KEYS if key in budget}
        out[COUNTED] = budget[COUNTED] + images * (evals[0] + evals[1] + STUDENT_FE_PER_IMAGE)
    return out


def recorded_budget(record: dict) -> dict:
    """The budget a checkpoint's distillation has spent so far (a teacher, or a record from before budgets: 0),
    with the counted fields of a players phase where it has them."""
    budget = record.get("budget")
    if not isinstance(budget, dict):
        return zero_budget()
    return {key: int(budget.get(key, 0)) for key in BUDGET_KEYS} | {k: budget[k] for k in COUNTED_KEYS if k in budget}


def tract_steps(start: int, target: int, phases: int) -> list[int]:
    """The step counts after each of TRACT's phases from `start` to `target` (powers of two): the halvings split as
    evenly as they go, longer jumps first (1024 -> 1 in 2 phases: 32, 1; 32 -> 1 in 3: 8, 2, 1)."""
    halvings = int(math.log2(start // target))
    if phases > max(halvings, 1):
        raise ConfigError(f"distill.tract_phases ({phases}) is more than the halvings from {start} to {target} steps "
                          f"({halvings})")
    steps, n, left = [], start, halvings
    for p in range(phases):
        chunk = -(-left // (phases - p))  # ceil: longer jumps first
        n, left = n >> chunk, left - chunk
        steps.append(n)
    return steps


def split_updates(total: int, phases: int) -> list[int]:
    """`total` updates split over `phases` phases as equally as whole numbers go (earlier phases get the remainder)."""
    base, extra = divmod(total, phases)
    return [base + (1 if p < extra else 0) for p in range(phases)]


def plan_rounds(cfg: Config, record: dict) -> list[Round]:
    """N -> N/2 rounds from the checkpoint's step count (a student's own, or distill.start_steps for a teacher)
    down to distill.target_steps."""
    distill_cfg, student = cfg.distill, record["kind"] == "student"
    start = int(record["sampling_steps"]) if student else distill_cfg.start_steps
    check_distill_steps(start, distill_cfg.target_steps,
                        start_name="the checkpoint's step count" if student else "distill.start_steps")
    rounds, n, r = [], start, int(record.get("round", 0)) + 1
    while n > distill_cfg.target_steps:
        m = n // 2
        long_round = distill_cfg.final_updates_per_round > 0 and m <= distill_cfg.long_round_max_steps
        rounds.append(Round(r, n, m, distill_cfg.final_updates_per_round if long_round else distill_cfg.updates_per_round))
        n, r = m, r + 1
    return rounds


@dataclass(frozen=True)
class Method:
    """What one distillation method is, in one place: planning (training/plan.py), the command line and the
    reports call through its entry in METHODS.

    - `objective(teacher, schedule, rnd, plan, noise)`: the round's or phase's targets;
    - `evals`: (teacher, self-teacher) network evaluations per training image (its objective's EVALS), the budget;
    - `loss(cfg)`: the phase loss (a weighting name of diffusion/weighting.py, or a metric);
    - `self_ema(cfg)`: the EMA decay its targets come from (None: none, the student's EMA is distill.optim's);
    - `sampler`: the students' default sampler when not the teacher's (None);
    - `desc(rnd)`: the progress bar's text; `rounds(cfg, record, rounds)`: its rounds or phases from pd's halvings;
    - `guided`, `lora`: whether it takes w-conditioned teachers and LoRA students;
    - `own_folder`: without --out, its students go to RUN/<name>, beside pd's;
    - `counted(cfg)`: its phases train several players, whose network evaluations are counted as they run
      (training/counting.py) instead of from `evals`."""

    name: str
    description: str
    objective: Callable
    evals: tuple[int, int]
    loss: Callable[[Config], str]
    self_ema: Callable[[Config], float | None]
    desc: Callable[[Round], str]
    rounds: Callable[[Config, dict, list[Round]], list[Round]]
    sampler: str | None = None
    guided: bool = False
    lora: bool = False
    own_folder: bool = True
    # whether its phases train several players (training/players.py), their budget counted as they run
    counted: Callable[[Config], bool] = lambda cfg: False
    from_target: bool = False  # it also trains from a student at distill.target_steps already (its `rounds` decide)
    # its k-step student also samples with DDIM at every power-of-two count below k (on a subset of its own grid
    # t = j/k, each of whose points it was trained at): recorded as the student's sampling "counts"
    grid_counts: bool = False


def _pd_objective(teacher, schedule, rnd: Round, plan, noise):
    pd = DistillObjective(teacher, schedule, rnd.student_steps, plan.clip_below, w_range=plan.w_train, noise=noise)
    d = plan.cfg.distill
    if d.adversarial_weight <= 0:  # the paper's pd, unchanged
        return pd
    student = plan.round_settings(rnd)
    head = replace(student, lr=d.dmd_fake_lr or student.lr, ema_decay=0.0)
    return AdversarialPD(pd, plan.teacher_module, plan.method.loss(plan.cfg), d.adversarial_weight,
                         d.adversarial_relaxed, student, head, plan.spec.data_shape, plan.probe_label(),
                         d.seed + rnd.number, d.gan_r1_weight)


def _dmd_objective(teacher, schedule, rnd: Round, plan, noise):
    d = plan.cfg.distill
    if plan.spec.w_range is not None:
        raise ConfigError("distill.method = 'dmd' trains generators without a w input, and this checkpoint is a "
                          "w-conditioned (guided) student; distil its label-dropout teacher instead, with "
                          "distill.dmd_guidance = w for a student guided at w")
    base = replace(plan.round_settings(rnd), decay="constant")
    generator = replace(base, lr=d.dmd_lr or base.lr)
    critic = replace(generator, lr=d.dmd_fake_lr or generator.lr, ema_decay=0.0, total_steps=rnd.updates *
                     d.dmd_fake_updates)
    real = plan.real_score(plan.teacher_module)
    null = None
    if d.dmd_guidance > 0:
        from ..guidance import null_condition

        null = null_condition(real, real.spec)
    return DMDObjective(real, schedule, rnd.student_steps, {"generator": generator, "fake": critic, "disc": critic},
                        d.dmd_fake_updates, d.dmd_gan_weight, plan.cfg.diffusion.weighting, plan.spec.data_shape,
                        plan.probe_label(), d.seed + rnd.number, (d.dmd_t_min, d.dmd_t_max), d.dmd_guidance, null,
                        d.gan_r1_weight, noise)


def _dmd_rounds(cfg: Config, record: dict, rounds: list[Round]) -> list[Round]:
    """dmd: one phase, a distill.target_steps-step generator, from the teacher or any saved student (also a 1-step
    one); a finished dmd student of those steps has nothing left. Updates: distill.total_updates (0: pd's total,
    or distill.updates_per_round from a student at the target already)."""
    d, student = cfg.distill, record["kind"] == "student"
    recorded = record.get("config", {}).get("distill", {}).get("method")
    start = int(record["sampling_steps"]) if student else d.start_steps
    if student and recorded == "dmd" and start == d.target_steps:
        return []
    updates = d.total_updates or sum(rnd.updates for rnd in rounds) or d.updates_per_round
    return [Round(int(record.get("round", 0)) + 1, start, d.target_steps, updates)]


def _cd_objective(teacher, schedule, rnd: Round, plan, noise):
    return ConsistencyObjective(teacher=teacher, schedule=schedule, grid_steps=rnd.teacher_steps, noise=noise)


def _tract_objective(teacher, schedule, rnd: Round, plan, noise):
    return TractObjective(teacher=teacher, schedule=schedule, teacher_steps=rnd.teacher_steps,
                          student_steps=rnd.student_steps, noise=noise)


def _cd_rounds(cfg: Config, record: dict, rounds: list[Round]) -> list[Round]:
    """cd: one phase on the start grid (its student is saved as the 1-step student and samples at any count)."""
    first, start = rounds[0].number, rounds[0].teacher_steps
    return [Round(first, start, 1, cfg.distill.total_updates or sum(rnd.updates for rnd in rounds))]


def _tract_rounds(cfg: Config, record: dict, rounds: list[Round]) -> list[Round]:
    """tract: its phases, sharing distill.total_updates (0: pd's total). A tract student (resume, or a later phase)
    continues its run's schedule from distill.start_steps; a teacher or another method's student starts a schedule
    of its own from its step count."""
    first, start, d = rounds[0].number, rounds[0].teacher_steps, cfg.distill
    own = record["kind"] == "student" and record.get("config", {}).get("distill", {}).get("method") == "tract"
    if own:
        rounds = plan_rounds(cfg, {"kind": "teacher"})
    total = d.total_updates or sum(rnd.updates for rnd in rounds)
    origin = rounds[0].teacher_steps
    steps = tract_steps(origin, rounds[-1].student_steps, d.tract_phases)
    phases = [(n, m, u) for n, m, u in zip([origin] + steps, steps, split_updates(total, len(steps))) if m < start]
    return [Round(first + p, n, m, u) for p, (n, m, u) in enumerate(phases)]


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("pd", "progressive distillation (Salimans & Ho 2022): rounds N -> N/2, two teacher DDIM steps a target",
           _pd_objective, DistillObjective.EVALS, loss=lambda cfg: cfg.distill.weighting, self_ema=lambda cfg: None,
           desc=lambda rnd: f"round {rnd.number}: {rnd.teacher_steps} -> {rnd.student_steps} steps",
           rounds=lambda cfg, record, rounds: rounds, guided=True, lora=True, own_folder=False,
           counted=lambda cfg: cfg.distill.adversarial_weight > 0),
    Method("cd", "consistency distillation (Song et al. 2023): one student for every step count",
           _cd_objective, ConsistencyObjective.EVALS,
           loss=lambda cfg: "constant" if cfg.distill.cd_metric == "l2" else PSEUDO_HUBER,
           self_ema=lambda cfg: cfg.distill.cd_target_ema,
           desc=lambda rnd: f"consistency distillation on the {rnd.teacher_steps}-step grid",
           rounds=_cd_rounds, sampler="consistency"),
    Method("tract", "TRACT (Berthelot et al. 2023): a few long phases, segments jumping to their ends",
           _tract_objective, TractObjective.EVALS, loss=lambda cfg: cfg.distill.weighting,
           self_ema=lambda cfg: cfg.distill.tract_self_ema,
           desc=lambda rnd: f"TRACT phase {rnd.number}: {rnd.teacher_steps} -> {rnd.student_steps} steps",
           rounds=_tract_rounds),
    Method("dmd", "DMD2 (Yin et al. 2024): a few-step generator matched to the data through a fake score and a GAN",
           _dmd_objective, (0, 0), loss=lambda cfg: cfg.distill.weighting, self_ema=lambda cfg: None,
           desc=lambda rnd: f"DMD2: a {rnd.student_steps}-step generator", rounds=_dmd_rounds,
           counted=lambda cfg: True, from_target=True, grid_counts=True),
)}
assert tuple(METHODS) == DISTILL_METHODS, "config.choices.DISTILL_METHODS lists the registry's names"


def grid_counts(steps: int) -> list[int]:
    """The power-of-two step counts whose uniform time grids lie on a `steps`-step one (1, 2, 4 for 4)."""
    return [1 << i for i in range(steps.bit_length()) if steps % (1 << i) == 0]


def method_of(cfg: Config) -> Method:
    """The registry entry of cfg.distill.method."""
    return METHODS[cfg.distill.method]
