"""What the SD3 and FLUX folder importers and exporters share (interop/sd3.py, interop/flux.py): reading and checking
a transformer folder with its FlowMatchEulerDiscreteScheduler, the teacher's config on the flow schedule, loading
the transformer's weights, and the export folder's checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..config import Config, ConfigError
from .diffusers_io import _read_json
from .folder_checks import check_import_layout, load_model

# FlowMatchEulerDiscreteScheduler settings that change the sigmas it visits in ways the flow schedule does not model.
UNSUPPORTED_SCHEDULER = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                         "shift_terminal", "stochastic_sampling")


def transformer_class(folder: str | Path) -> str | None:
    """The `_class_name` of `folder`/transformer/config.json (None where there is none to read)."""
    try:
        return json.loads((Path(folder) / "transformer" / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def check_folder(folder: Path, layout: str, subfolders: tuple[str, ...], unsupported: tuple[str, ...],
                 grid: str) -> tuple[dict, dict]:
    """(transformer config without its private keys, scheduler config) of a `layout` ("an SD3", "a FLUX") folder, or
    a ConfigError naming what is missing or unsupported; `grid` says which time grids the import takes."""
    if not folder.is_dir():
        raise ConfigError(f"{layout.split()[-1]} folder not found: {folder}")
    check_import_layout(folder)
    missing = [name for name in subfolders if not (folder / name).is_dir()]
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(m + '/' for m in missing)}: {layout} folder holds "
                          f"{', '.join(s + '/' for s in subfolders)} and model_index.json")
    transformer = _read_json(folder / "transformer" / "config.json", "the transformer's config")
    sched = _read_json(folder / "scheduler" / "scheduler_config.json", "the scheduler's config")
    if sched.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
        raise ConfigError(f"{folder}'s scheduler is {sched.get('_class_name')}; {layout} folder's is "
                          "FlowMatchEulerDiscreteScheduler")
    bad = [k for k in unsupported if sched.get(k)]
    if bad:
        raise ConfigError(f"{folder}'s scheduler sets {', '.join(bad)}: import takes {grid} only")
    return {k: v for k, v in transformer.items() if not k.startswith("_")}, sched


def vae_factor(folder: Path) -> tuple[dict, int]:
    """(the VAE's config, its downsampling factor)."""
    vae = _read_json(folder / "vae" / "config.json", "the VAE's config (vae/config.json)")
    return vae, 2 ** (len(vae.get("block_out_channels", [0])) - 1)


def teacher_config(base: Config, arch: str, transformer: dict, shift: float, captions: str | None,
                   **data: object) -> Config:
    """The teacher's config: the folder's transformer on the flow schedule with `shift`, velocity output, the
    captioned data (`data`: the data block's other settings); targets never clipped (latents are not bounded)."""
    if base.distill.teacher_clip not in ("auto", "none"):
        raise ConfigError("distill.teacher_clip clips x_hat to [-1, 1], and latents are not bounded: leave it auto")
    block = replace(base.data, name="captions", root=str(Path(captions).resolve()) if captions else base.data.root,
                    flip=False, conditional=False, **data)
    cfg = replace(base, data=block,
                  model=replace(base.model, arch=arch, parameterization="flow", diffusers_unet=json.dumps(transformer),
                                dropout=0.0),
                  diffusion=replace(base.diffusion, schedule="flow", shift=float(shift), weighting="velocity"),
                  distill=replace(base.distill, teacher_clip="none"), sample=replace(base.sample, clip=False))
    if not cfg.data.root:
        raise ConfigError("give the captioned images to distil on: --captions DIR (images with a metadata.jsonl)")
    return cfg.validate()


def load_transformer(cls, folder: Path):
    """`cls.from_pretrained(folder/transformer)`, or a one-line error naming the file and what is wrong."""
    return load_model(cls, folder / "transformer", "transformer")


def new_export_folder(out: str | Path) -> Path:
    """`out` as a Path, refused when it exists with something in it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new --out folder")
    return out
