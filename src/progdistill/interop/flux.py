"""FLUX-layout folders in and out: import a FLUX text-to-image model (FluxTransformer2DModel, flow matching) as a
teacher, export a teacher or student as a folder that diffusers' stock FluxPipeline loads (docs/flow.md).

Import. transformer/ (a FluxTransformer2DModel), scheduler/ (a FlowMatchEulerDiscreteScheduler with FLUX's dynamic
shift), vae/ (with its shift_factor), text_encoder/ (CLIP: its pooled output), text_encoder_2/ (T5) and their
tokenizers. The time grid's shift is FLUX's resolution-dependent one, fixed by the data's resolution: shift =
e^mu with mu from the packed latent's token count and the scheduler's base/max settings (`flux_shift`). A
transformer with `guidance_embeds` (FLUX.1-dev) is a w-conditioned teacher (guidance = 1 + w, the range from
guided.w_min/w_max); one without (FLUX.1-schnell's layout) is a plain teacher whose guided students get the
guidance input (nets/flux_net.py).

Export. The student's transformer, the teacher's other components, and a FlowMatchEulerDiscreteScheduler with the
student's shift as a static shift. FluxPipeline's own default time grid is linspace(1, 1/N, N), shifted by the
scheduler: exactly the student's N-step grid, so `pipe(prompt, num_inference_steps=N, guidance_scale=1 + w)` takes
the student's steps with no further argument. The shift stays that of the resolution the teacher was imported at
(the student was distilled on that grid); the export's call gives that resolution.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import runfolder
from ..build import denoiser_from_spec, load_checkpoint, load_data, model_record
from ..checkpoint import save_checkpoint
from ..config import Config, ConfigError
from ..data.components import describe_components, load_components
from ..diffusion.schedules import flux_shift, schedule_spec
from ..nets.spec import ModelSpec, guidance_block
from . import flow_folders

FLUX_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def is_flux_folder(folder: str | Path) -> bool:
    """Whether `folder`'s transformer/ holds a FluxTransformer2DModel."""
    return flow_folders.transformer_class(folder) == "FluxTransformer2DModel"


def _check_layout(folder: Path) -> tuple[dict, dict]:
    transformer, sched = flow_folders.check_folder(folder, "a FLUX", FLUX_SUBFOLDERS,
                                                   flow_folders.UNSUPPORTED_SCHEDULER, "FLUX's shifted uniform grid")
    if sched.get("time_shift_type", "exponential") != "exponential":
        raise ConfigError(f"time_shift_type {sched.get('time_shift_type')!r} is not supported (exponential only)")
    return transformer, sched


def grid_shift(sched: dict, tokens: int) -> float:
    """The static shift equal to the scheduler's grid for images of `tokens` packed latent tokens."""
    if not sched.get("use_dynamic_shifting"):
        return float(sched.get("shift", 1.0))
    return flux_shift(tokens, sched.get("base_image_seq_len", 256), sched.get("max_image_seq_len", 4096),
                      sched.get("base_shift", 0.5), sched.get("max_shift", 1.15))


def import_flux(folder: str | Path, out: str | Path, base: Config, captions: str | None = None,
                max_sequence_length: int | None = None) -> Path:
    """Write out/teacher from a FLUX folder; `captions` (or base's data.root): the captioned images, encoded into
    the latent cache here; `max_sequence_length`: the T5 prompt length (FluxPipeline's; 512 by default, as there)."""
    from diffusers import FluxTransformer2DModel

    from ..nets.flux_net import FLUX_GUIDANCE_DIM, FLUX_W_SCALE, resolve_flux_transformer_config

    folder = Path(folder).resolve()
    transformer_cfg, sched = _check_layout(folder)
    vae, factor = flow_folders.vae_factor(folder)
    if not (base.data.image_size or captions is None):
        raise ConfigError("FLUX has no native sample size: set data.image_size (the resolution to distil at)")
    image_size = base.data.image_size
    if not image_size or image_size % (2 * factor):
        raise ConfigError(f"set data.image_size to the resolution to distil at, a multiple of {2 * factor} (the "
                          f"VAE's factor {factor} times FLUX's 2x2 packing)")
    latent = image_size // factor
    shift = grid_shift(sched, (latent // 2) ** 2)
    components = describe_components(folder, "flux", max_sequence_length)
    cfg = flow_folders.teacher_config(base, "flux", transformer_cfg, shift, captions,
                                      channels=int(vae.get("in_channels", 3)), components=json.dumps(components))
    null = load_components(components, need=("tokenizer", "text_encoder")).encode_prompts([""])
    transformer = flow_folders.load_transformer(FluxTransformer2DModel, folder)
    hidden, pooled = null["encoder_hidden_states"][0], null["pooled_projections"][0]
    channels = int(transformer.config.in_channels) // 4
    guidance = (guidance_block(cfg.guided.w_min, cfg.guided.w_max, FLUX_GUIDANCE_DIM, FLUX_W_SCALE)
                if transformer.config.guidance_embeds else None)
    spec = ModelSpec("flux", {"transformer": resolve_flux_transformer_config(transformer_cfg),
                              "text_length": hidden.shape[0], "text_dim": hidden.shape[1],
                              "pooled_dim": pooled.shape[0], "latent_size": [latent, latent]},
                     "flow", schedule_spec("flow", shift=shift), (channels, latent, latent), components=components,
                     guidance=guidance)
    denoiser = denoiser_from_spec(spec, cfg.perf)
    denoiser.net.transformer.load_state_dict(transformer.state_dict())
    denoiser.net.null_text.copy_(hidden)
    denoiser.net.null_pooled.copy_(pooled)
    loaded = load_data(cfg)
    if loaded.example_shape != spec.data_shape:
        raise ConfigError(f"the VAE makes latents of shape {list(loaded.example_shape)} from {image_size}px images, "
                          f"the transformer takes {list(spec.data_shape)}")
    return save_checkpoint(runfolder.teacher_stem(Path(out)), {"model": denoiser}, {
        "kind": "teacher", "config": cfg.to_dict(), **model_record(spec, cfg, cfg.distill.start_steps),
        "sampling_weights": "model", "step": 0, "imported_from": str(folder), "diffusers_scheduler": sched,
    })


def export_flux(ckpt: str | Path, out: str | Path, *, steps: int | None = None,
                components_folder: str | Path | None = None) -> dict:
    """Write a FluxPipeline folder for the FLUX checkpoint `ckpt`; returns a summary."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    loaded = load_checkpoint(ckpt)
    spec = loaded.spec
    steps = int(steps or loaded.sampling["steps"])
    out = flow_folders.new_export_folder(out)
    net = loaded.denoiser.net
    transformer = FluxTransformer2DModel.from_config(dict(net.transformer.config))
    transformer.load_state_dict(net.merged_transformer_state())
    # The grid the student was distilled on, as a static shift: FluxPipeline's default sigmas shifted by it are the
    # student's grid whatever mu the pipeline computes (a scheduler without dynamic shifting ignores mu).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=float(spec.schedule["shift"]), use_dynamic_shifting=False)
    frozen = load_components(spec.components, folder=components_folder)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=frozen.vae, text_encoder=frozen.text_encoder,
                        tokenizer=frozen.tokenizer, **frozen.others)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    guided = spec.guidance is not None
    scale = 1 + (spec.guidance["w_min"] + spec.guidance["w_max"]) / 2 if guided else 1.0
    size = net.h * (2 ** (len(frozen.vae.config.block_out_channels) - 1))
    call = (f"pipe('a photo of a cat', num_inference_steps={steps}, guidance_scale={scale:g}, height={size}, "
            f"width={size}, max_sequence_length={spec.components['max_sequence_length']})")
    summary = {"steps": steps, "shift": float(spec.schedule["shift"]), "height": size, "width": size,
               "transformer_calls_per_step": 1, "load": "FluxPipeline.from_pretrained(folder)", "call": call,
               "source": str(ckpt), **({"guidance_scale_range": [1 + spec.guidance["w_min"],
                                                                  1 + spec.guidance["w_max"]]} if guided else {})}
    (out / "progdistill_export.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text(
        f"# progdistill export\n\nA {loaded.record.get('kind', 'model')} of `{ckpt}` for diffusers' stock "
        f"FluxPipeline: {steps} steps at {size}x{size} (the pipeline's own grid is the student's there).\n\n"
        f"```python\nfrom diffusers import FluxPipeline\npipe = FluxPipeline.from_pretrained({str(out)!r})\n"
        f"image = {call}.images[0]\n```\n")
    return summary
