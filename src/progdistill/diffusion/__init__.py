"""Pure diffusion math: schedules (schedules.py), parameterizations (parameterization.py), loss weightings
(weighting.py), samplers (samplers.py, dpm_solver.py, registry.py), guidance (guidance.py) and the distillation
target (distillation.py). Import from the modules; the package itself imports nothing, so that reading the sampler
names (sampler_names.py) does not load torch."""
