"""The samplers' names and one-line descriptions, without their code (and without torch): what the command line's
--help shows. diffusion/registry.py pairs each name with its implementation."""

SAMPLER_DESCRIPTIONS = {
    "ddim": "deterministic DDIM (the sampler students are distilled for)",
    "ancestral": "stochastic ancestral sampling (variance small, large or interp)",
    "dpm_solver": "DPM-Solver++(2M), one network evaluation per step",
    "stochastic": "guided distillation's stochastic N-step sampler: a DDIM step of twice the length, then noise back "
                  "to the next grid point; the last step deterministic",
    "consistency": "multistep consistency sampling for consistency-distilled students: the model's x estimate, "
                   "re-noised to the next grid point with fresh noise",
}
