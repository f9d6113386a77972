"""progdistill: progressive distillation of diffusion samplers (Salimans & Ho, ICLR 2022).

The public API (docs/api.md) is importable from here: `progdistill.load_config`, `train_teacher`, `distill`,
`distill_guided`, `load_checkpoint`, `schedule_of`, `generate`, `evaluate_run`, `export_diffusers`,
`import_diffusers`, and for latent text-to-image models `import_stable_diffusion`, `export_stable_diffusion`,
`prompt_embeddings`. Names load on first use, so `import progdistill` stays cheap."""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# name -> the module that defines it (one place; docs/api.md documents each)
PUBLIC_API = {
    "Config": "progdistill.config",
    "ConfigError": "progdistill.config",
    "load_config": "progdistill.config",
    "CheckpointError": "progdistill.checkpoint",
    "load_checkpoint": "progdistill.build",
    "schedule_of": "progdistill.build",
    "generate": "progdistill.sampling",
    "train_teacher": "progdistill.training.teacher",
    "distill": "progdistill.training.rounds",
    "distill_guided": "progdistill.training.guided",
    "evaluate_run": "progdistill.evaluation.report",
    "export_diffusers": "progdistill.interop.diffusers_io",
    "import_diffusers": "progdistill.interop.diffusers_io",
    "import_stable_diffusion": "progdistill.interop.stable_diffusion",
    "export_stable_diffusion": "progdistill.interop.stable_diffusion",
    "prompt_embeddings": "progdistill.interop.stable_diffusion",
}

__all__ = sorted(PUBLIC_API)


def __getattr__(name: str):
    if name not in PUBLIC_API:
        raise AttributeError(f"module 'progdistill' has no attribute {name!r}")
    return getattr(importlib.import_module(PUBLIC_API[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC_API))
