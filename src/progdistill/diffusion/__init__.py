"""Pure diffusion math: schedules, parameterizations, weightings, samplers and the distillation target."""

from .distillation import distillation_target, x_tilde_from_two_steps
from .parameterization import PARAMETERIZATIONS, eps_from_x, get_parameterization, v_from_x
from .registry import SAMPLERS, get_sampler
from .samplers import ancestral, ancestral_step, ddim, ddim_step
from .schedules import CosineSchedule, LinearBetaSchedule, alpha_sigma, broadcast, make_schedule, step_grid
from .weighting import WEIGHTINGS, check_combination, get_weighting, per_example_x_mse, weighted_loss

__all__ = [
    "CosineSchedule", "LinearBetaSchedule", "PARAMETERIZATIONS", "SAMPLERS", "WEIGHTINGS", "alpha_sigma",
    "ancestral", "ancestral_step", "broadcast", "check_combination", "ddim", "ddim_step", "distillation_target",
    "eps_from_x", "get_parameterization", "get_sampler", "get_weighting", "make_schedule", "per_example_x_mse",
    "step_grid", "v_from_x", "weighted_loss", "x_tilde_from_two_steps",
]
