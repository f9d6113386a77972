"""What differs between the distillation methods (distill.method; docs/methods.md), beside the shared round loop:
their rounds, their targets, the EMA their targets come from, their loss and what they cost.

- pd: progressive distillation (Salimans & Ho 2022), rounds N -> N/2, two frozen-teacher DDIM steps per target.
- cd: consistency distillation (Song et al. 2023), one phase on the teacher's N-step grid: one teacher DDIM step to
  the previous grid point, the target network's (the EMA's, decay cd_target_ema) consistency function there; one
  student for every step count, sampled with the multistep consistency sampler.
- tract: TRACT (Berthelot et al. 2023), tract_phases phases from start_steps to target_steps; every point of a
  segment learns to jump to the segment's end through one teacher step and the self-teacher (EMA, tract_self_ema).

The budget of a distillation is counted in one way for all: student updates, training images seen (updates x the
global batch x grad_accum) and network evaluations per image of the teacher and of the student's own EMA network
(each objective's EVALS), summed over its phases (and a warm-up) and recorded, cumulative, in every student.
"""

from __future__ import annotations

import math

from ..checkpoint import BUDGET_KEYS
from ..config import Config, ConfigError
from ..diffusion.weighting import PSEUDO_HUBER


def zero_budget() -> dict[str, int]:
    return dict.fromkeys(BUDGET_KEYS, 0)


def add_cost(budget: dict[str, int], updates: int, images_per_update: int, evals: tuple[int, int]) -> dict[str, int]:
    """`budget` plus a phase of `updates` optimizer steps over `images_per_update` images each, whose objective
    evaluates the teacher and the self-teacher `evals` times per image."""
    images = updates * images_per_update
    return {"student_updates": budget["student_updates"] + updates, "images_seen": budget["images_seen"] + images,
            "teacher_evals": budget["teacher_evals"] + images * evals[0],
            "self_evals": budget["self_evals"] + images * evals[1]}


def recorded_budget(record: dict) -> dict[str, int]:
    """The budget a checkpoint's distillation has spent so far (a teacher, or a record from before budgets: 0)."""
    budget = record.get("budget")
    return {key: int(budget.get(key, 0)) for key in BUDGET_KEYS} if isinstance(budget, dict) else zero_budget()


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


def loss_of(cfg: Config) -> str:
    """The phase loss of the method: distill.weighting, or for cd its metric (L2: unweighted x error)."""
    if cfg.distill.method != "cd":
        return cfg.distill.weighting
    return "constant" if cfg.distill.cd_metric == "l2" else PSEUDO_HUBER


def self_ema(cfg: Config) -> float | None:
    """The EMA decay the method's targets come from (None: pd, whose EMA, if any, is distill.optim.ema_decay)."""
    return {"cd": cfg.distill.cd_target_ema, "tract": cfg.distill.tract_self_ema}.get(cfg.distill.method)
