"""The network families: what each kind of network is and can do, in one place (no `kind == ...` chains elsewhere).

A family is what a checkpoint's `model.kind` names. Each entry says which data it takes, whether `train` builds it
from a config or it is imported, which schedules it runs on, whether it is text-conditioned, takes LoRA students,
which stock diffusers pipeline it exports to, and how it is built from a ModelSpec. Importing this module imports
neither torch nor diffusers (the config checks read it); `build` imports the network's code when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# build(spec) takes a nets.spec.ModelSpec and returns a torch nn.Module (not imported here: spec.py imports this).

DATA_KINDS = ("vector", "image", "captions")  # flat examples, [C, H, W] images, captioned images in latent space


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    data: str  # one of DATA_KINDS
    build: Callable[[Any], Any]  # a freshly initialised network of a ModelSpec
    trained_here: bool = True  # `train` builds it from a config (False: imported; no label-dropout training)
    schedules: tuple[str, ...] | None = None  # the schedules it runs on (None: any)
    config_key: str | None = None  # the model config field an imported family's network config lives in
    text_conditioned: bool = False  # its labels are text-encoder hidden states
    lora: bool = False  # LoRA students (distill.lora_rank)
    export: str | None = None  # the stock diffusers pipeline `export` writes for it (None: no export)
    guided_export: bool = False  # a w-conditioned student of it exports too
    own_timesteps: bool = False  # a discrete-time network that keeps its own timesteps in the export
    checkpointing: bool = True  # built on diffusers models, whose gradient checkpointing switch it offers


def _build_mlp(spec):
    from .args import resolve_args
    from .mlp import MLPNet

    return MLPNet(**resolve_args(MLPNet.__init__, spec.args, "MLPNet"))


def _build_unet(spec):
    from .unet import UNet  # diffusers (seconds): imported only when a U-Net is built

    return UNet(spec.args)


def _build_diffusers(spec):
    from ..diffusion.schedules import schedule_from_spec
    from .diffusers_net import DiffusersUNet

    return DiffusersUNet(spec.args, schedule_from_spec(spec.schedule))


def _build_sd_unet(spec):
    from ..diffusion.schedules import schedule_from_spec
    from .args import resolve_args
    from .sd_net import TextUNet

    args = resolve_args(TextUNet.__init__, spec.args | {"schedule": None}, "TextUNet")
    return TextUNet(**(args | {"schedule": schedule_from_spec(spec.schedule)}))


def _build_sd3(spec):
    from .args import resolve_args
    from .sd3_net import SD3Net

    return SD3Net(**resolve_args(SD3Net.__init__, spec.args, "SD3Net"))


def _build_flux(spec):
    from .args import resolve_args
    from .flux_net import FluxNet

    return FluxNet(**resolve_args(FluxNet.__init__, spec.args, "FluxNet"))


FAMILIES: dict[str, Family] = {
    "mlp": Family("mlp", "an MLP on flat (2-D) data", "vector", _build_mlp, checkpointing=False),
    "unet": Family("unet", "the paper's U-Net (diffusers' UNet2DModel) on images", "image", _build_unet,
                   export="DDIMPipeline", guided_export=True),
    "diffusers": Family("diffusers", "an imported diffusers UNet2DModel on its own discrete schedule", "image",
                        _build_diffusers, trained_here=False, schedules=("discrete",), config_key="diffusers_unet",
                        export="DDIMPipeline", own_timesteps=True),
    "sd_unet": Family("sd_unet", "an imported Stable Diffusion 1.x UNet2DConditionModel (latent, text-conditioned)",
                      "captions", _build_sd_unet, trained_here=False, schedules=("discrete",), text_conditioned=True,
                      lora=True, export="StableDiffusionPipeline"),
    "sdxl": Family("sdxl", "an imported SDXL UNet2DConditionModel (latent, two text encoders, added text and time "
                   "conditions)", "captions", _build_sd_unet, trained_here=False, schedules=("discrete",),
                   text_conditioned=True, lora=True, export="StableDiffusionXLPipeline"),
    "sd3": Family("sd3", "an imported SD3 SD3Transformer2DModel (MMDiT; latent flow matching, text-conditioned)",
                  "captions", _build_sd3, trained_here=False, schedules=("flow",), text_conditioned=True, lora=True,
                  export="StableDiffusion3Pipeline", guided_export=True),
    "flux": Family("flux", "an imported FLUX FluxTransformer2DModel (latent flow matching, text-conditioned, packed "
                   "latents)", "captions", _build_flux, trained_here=False, schedules=("flow",), text_conditioned=True,
                   lora=True, export="FluxPipeline", guided_export=True),
}


def family(kind: str) -> Family:
    """The family called `kind`, or a ValueError naming the known ones."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown network kind {kind!r}; known: {', '.join(FAMILIES)}") from None


def capabilities() -> list[dict[str, Any]]:
    """Every family's capabilities as plain values (docs and `progdistill` tables)."""
    return [{k: v for k, v in vars(f).items() if k != "build"} for f in FAMILIES.values()]
