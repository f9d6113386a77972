"""Stable-Diffusion-layout folders in and out: import a latent text-to-image model as a teacher, export a teacher or
student as a folder that diffusers' stock StableDiffusionPipeline loads (docs/latent.md).

Import. unet/ (a UNet2DConditionModel), scheduler/ (any DDPM-family scheduler config: linear or scaled_linear
betas, epsilon, v_prediction or sample), vae/, text_encoder/, tokenizer/. The U-Net becomes an "sd_unet" teacher on
its own discrete schedule (timesteps as in the pixel import); the empty caption's hidden states are stored with it
(its null condition); the VAE, tokenizer and text encoder stay in the folder, named in the record with their content
hashes (data/components.py). The captioned images it is distilled on are encoded into the latent cache at import.

Export. unet/ (the student's UNet2DConditionModel; a guided student's with time_cond_proj_dim, so the stock
pipeline embeds guidance_scale - 1 and calls it once per step), the teacher's vae/, text_encoder/ and tokenizer/
copied, and a DDIMScheduler on the model's timesteps with trailing spacing and set_alpha_to_one, so that
`pipe(prompt, num_inference_steps=N)` visits exactly the student's N steps (N must divide the model's timesteps) and
its last step returns x_hat, as the project's sampler does.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from .. import runfolder
from ..build import denoiser_from_spec, load_checkpoint, load_data, model_record
from ..checkpoint import save_checkpoint
from ..config import Config, ConfigError, resolve_distill
from ..data.components import describe_components, layout_of, load_components
from ..diffusion.schedules import schedule_spec
from ..nets.sd_net import SD_W_SCALE, resolve_unet2d_condition_config
from ..nets.spec import ModelSpec
from .folder_checks import check_import_layout, load_model
from .diffusers_io import DISTILL_WEIGHTINGS, PARAMETERIZATIONS, PREDICTION_TYPES, _read_json

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_SUBFOLDERS = SD_SUBFOLDERS + ("text_encoder_2", "tokenizer_2")
PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def layout_of_unet(unet_config: dict) -> str:
    """"sdxl" for a U-Net with SDXL's added text and time conditions, "sd" otherwise."""
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd"


def is_stable_diffusion_folder(folder: str | Path) -> bool:
    """Whether `folder`'s unet/ holds a UNet2DConditionModel (a latent text-to-image model)."""
    try:
        config = json.loads((Path(folder) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("_class_name") == "UNet2DConditionModel"


def _check_layout(folder: Path) -> tuple[dict, dict]:
    """(U-Net config, scheduler config) of a Stable Diffusion (1.x/2.x or SDXL) folder, or a ConfigError naming what
    is missing."""
    if not folder.is_dir():
        raise ConfigError(f"Stable Diffusion folder not found: {folder}")
    check_import_layout(folder)
    unet = _read_json(folder / "unet" / "config.json", "the U-Net's config (unet/config.json)")
    sdxl = layout_of_unet(unet) == "sdxl"
    subfolders = SDXL_SUBFOLDERS if sdxl else SD_SUBFOLDERS
    missing = [name for name in subfolders if not (folder / name).is_dir()]
    if missing:
        kind = "an SDXL" if sdxl else "a Stable Diffusion"
        raise ConfigError(f"{folder} lacks {', '.join(m + '/' for m in missing)}: {kind} folder holds "
                          f"{', '.join(s + '/' for s in subfolders)} and model_index.json")
    sched = _read_json(folder / "scheduler" / "scheduler_config.json", "the scheduler's config")
    if unet.get("time_cond_proj_dim") is not None:
        raise ConfigError(f"{folder}'s U-Net already takes a w input (time_cond_proj_dim = "
                          f"{unet['time_cond_proj_dim']}): it is a distilled student; import its teacher instead")
    if unet.get("time_embedding_type", "positional") != "positional":
        raise ConfigError(f"time_embedding_type {unet['time_embedding_type']!r} is not supported (positional only)")
    if sched.get("trained_betas") is not None or sched.get("rescale_betas_zero_snr"):
        raise ConfigError("schedulers with trained_betas or zero terminal SNR are not supported: import takes "
                          "beta_schedule linear, scaled_linear or squaredcos_cap_v2")
    if sched.get("prediction_type", "epsilon") not in PARAMETERIZATIONS:
        raise ConfigError(f"prediction_type {sched.get('prediction_type')!r} is not supported: epsilon, sample or "
                          "v_prediction")
    return unet, sched


def _latent_config(base: Config, folder: Path, unet_cfg: dict, sched: dict, param: str, components: dict,
                   captions: str | None) -> Config:
    """The teacher's config: the folder's model and schedule, the captioned data, the [distill] "auto" values
    resolved for this teacher (v students for eps; never clipped targets: latents are not bounded)."""
    if base.distill.teacher_clip not in ("auto", "none"):
        raise ConfigError("distill.teacher_clip clips x_hat to [-1, 1], and latents are not bounded: leave it auto")
    vae = _read_json(folder / "vae" / "config.json", "the VAE's config (vae/config.json)")
    factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    size = unet_cfg.get("sample_size", 64)
    size = size if isinstance(size, int) else size[0]
    data = replace(base.data, name="captions", root=str(Path(captions).resolve()) if captions else base.data.root,
                   image_size=base.data.image_size or size * factor, channels=int(vae.get("in_channels", 3)),
                   components=json.dumps(components), flip=False, conditional=False)
    cfg = replace(base, data=data,
                  model=replace(base.model, arch="sdxl" if layout_of_unet(unet_cfg) == "sdxl" else "sd_unet",
                                parameterization=param, diffusers_unet=json.dumps(unet_cfg),
                                dropout=float(unet_cfg.get("dropout", 0.0))),
                  diffusion=replace(base.diffusion, schedule="discrete",
                                    num_timesteps=int(sched.get("num_train_timesteps", 1000)),
                                    beta_schedule=sched.get("beta_schedule", "linear"),
                                    beta_start=float(sched.get("beta_start", 1e-4)),
                                    beta_end=float(sched.get("beta_end", 0.02)), weighting=DISTILL_WEIGHTINGS[param]),
                  distill=replace(base.distill, teacher_clip="none"), sample=replace(base.sample, clip=False))
    if not cfg.data.root:
        raise ConfigError("give the captioned images to distil on: --captions DIR (images with a metadata.jsonl)")
    # The students' loss weighting for the parameterization they will get; distill.parameterization stays as given
    # ("auto": v students for an epsilon teacher, its own parameterization for a guided run's w-conditioned model).
    settings = resolve_distill(cfg).distill
    student = param if settings.parameterization == "same" else settings.parameterization
    return replace(cfg, distill=replace(cfg.distill, weighting=DISTILL_WEIGHTINGS.get(student, settings.weighting))
                   ).validate()


def import_stable_diffusion(folder: str | Path, out: str | Path, base: Config, captions: str | None = None) -> Path:
    """Write out/teacher from a Stable Diffusion folder; `captions` (or base's data.root): the captioned images the
    distillation trains on, encoded into the latent cache here."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder).resolve()
    unet_cfg, sched = _check_layout(folder)
    param = PARAMETERIZATIONS[sched.get("prediction_type", "epsilon")]
    layout = layout_of_unet(unet_cfg)
    components = describe_components(folder, layout)
    cfg = _latent_config(base, folder, {k: v for k, v in unet_cfg.items() if not k.startswith("_")}, sched, param,
                         components, captions)
    text = load_components(components, need=("tokenizer", "text_encoder"))
    null = text.encode_prompts([""])
    unet = load_model(UNet2DConditionModel, folder / "unet", "U-Net")
    d = cfg.diffusion
    size = unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]
    args = {"unet": resolve_unet2d_condition_config(unet_cfg)}
    if layout == "sdxl":
        # The empty caption as the stock pipeline's negative branch has it: zeros where the folder says
        # force_zeros_for_empty_prompt (SDXL 1.0 does), else the encoded "".
        zero = components["force_zeros_for_empty_prompt"]
        null_text, null_pooled = (torch.zeros_like(null[k][0]) if zero else null[k][0]
                                  for k in ("encoder_hidden_states", "text_embeds"))
        pixels = cfg.data.image_size
        args |= {"pooled_dim": null_pooled.shape[0], "time_ids": [pixels, pixels, 0, 0, pixels, pixels]}
    else:
        null_text = null[0]
    args |= {"text_length": null_text.shape[0], "text_dim": null_text.shape[1]}
    spec = ModelSpec("sdxl" if layout == "sdxl" else "sd_unet", args, param,
                     schedule_spec("discrete", d.logsnr_min, d.logsnr_max, num_timesteps=d.num_timesteps,
                                   beta_schedule=d.beta_schedule, beta_start=d.beta_start, beta_end=d.beta_end),
                     (int(unet.config.in_channels), int(size), int(size)), components=components)
    denoiser = denoiser_from_spec(spec, cfg.perf)
    denoiser.net.unet.load_state_dict(unet.state_dict())
    denoiser.net.null_text.copy_(null_text)
    if layout == "sdxl":
        denoiser.net.null_pooled.copy_(null_pooled)
    data = load_data(cfg)  # encodes the captioned images into the latent cache (once; progress bar)
    if data.example_shape != spec.data_shape:
        raise ConfigError(f"the VAE makes latents of shape {list(data.example_shape)} from {cfg.data.image_size}px "
                          f"images, the U-Net takes {list(spec.data_shape)}: set data.image_size to match")
    return save_checkpoint(runfolder.teacher_stem(Path(out)), {"model": denoiser}, {
        "kind": "teacher", "config": cfg.to_dict(), **model_record(spec, cfg, cfg.distill.start_steps),
        "sampling_weights": "model", "step": 0, "imported_from": str(folder), "diffusers_scheduler": sched,
    })


# ---------------------------------------------------------------------------------------------------- export


def exported_scheduler(spec: ModelSpec, steps: int):
    """The DDIMScheduler whose `steps` trailing timesteps are the student's grid t = 1, (N-1)/N, ..., 1/N."""
    from diffusers import DDIMScheduler

    s = spec.schedule
    T = int(s["num_timesteps"])
    if T % steps:
        raise ConfigError(f"{steps} steps do not fall on this model's {T} timesteps: the stock pipeline takes the "
                          f"student's steps only when the step count divides {T} (e.g. 1, 2, 4, 8 for 1000)")
    return DDIMScheduler(num_train_timesteps=T, beta_schedule=s["beta_schedule"], beta_start=s["beta_start"],
                         beta_end=s["beta_end"], prediction_type=PREDICTION_TYPES[spec.parameterization],
                         timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0, clip_sample=False)


def export_stable_diffusion(ckpt: str | Path, out: str | Path, *, steps: int | None = None,
                            components_folder: str | Path | None = None) -> dict:
    """Write a StableDiffusionPipeline (SDXL: StableDiffusionXLPipeline) folder for the latent checkpoint `ckpt`;
    returns a summary."""
    import diffusers
    from diffusers import UNet2DConditionModel

    loaded = load_checkpoint(ckpt)
    spec = loaded.spec
    steps = int(steps or loaded.sampling["steps"])
    if spec.parameterization == "both":
        raise ConfigError("a 'both' student has no diffusers prediction type; distil with distill.parameterization "
                          "= v to export to the stock pipeline")
    scheduler = exported_scheduler(spec, steps)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new --out folder")
    frozen = load_components(spec.components, folder=components_folder)
    net = loaded.denoiser.net
    unet = UNet2DConditionModel.from_config(dict(net.unet.config))
    unet.load_state_dict(net.merged_unet_state())  # a LoRA student's adapter merged in
    layout = layout_of(spec.components)
    name = PIPELINES[layout]
    if layout == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer, unet=unet,
            scheduler=scheduler, **frozen.others,
            force_zeros_for_empty_prompt=spec.components["force_zeros_for_empty_prompt"])
    else:
        pipe = diffusers.StableDiffusionPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder,
                                                 tokenizer=frozen.tokenizer, unet=unet, scheduler=scheduler,
                                                 safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    summary = _summary(ckpt, spec, steps)
    if layout == "sdxl":
        summary["pipeline"] = name
        summary["load"] = f"{name}.from_pretrained(folder)"
    if net.lora is not None:
        summary["lora"] = _save_lora(net, scheduler, out / "lora", getattr(diffusers, name))
    (out / "progdistill_export.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text(
        f"# progdistill export\n\nA {loaded.record.get('kind', 'model')} of `{ckpt}` for diffusers' stock "
        f"{name}: {steps} DDIM steps (prediction_type {summary['prediction_type']}, trailing "
        f"spacing).\n\n```python\nfrom diffusers import {name}\n"
        f"pipe = {name}.from_pretrained({str(out)!r})\nimage = {summary['call']}.images[0]\n```\n")
    return summary


def _save_lora(net, scheduler, out: Path, pipeline_class=None) -> dict:
    """A LoRA student's adapter as diffusers LoRA weights (pipe.load_lora_weights on the teacher's own pipeline)
    and the scheduler that takes the student's steps (pipe.scheduler = DDIMScheduler.from_pretrained(out,
    subfolder="scheduler"))."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(net.unet))
    (pipeline_class or StableDiffusionPipeline).save_lora_weights(out, unet_lora_layers=layers,
                                                                  safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    return {"folder": str(out), "rank": net.lora["rank"], "targets": net.lora["targets"],
            "load": f"pipe.load_lora_weights({str(out)!r}); pipe.scheduler = DDIMScheduler.from_pretrained("
                    f"{str(out)!r}, subfolder='scheduler')"}


def _summary(ckpt: str | Path, spec: ModelSpec, steps: int) -> dict:
    guided = spec.guidance is not None
    scale = (1 + (spec.guidance["w_min"] + spec.guidance["w_max"]) / 2) if guided else 1.0
    call = f"pipe('a photo of a cat', num_inference_steps={steps}, guidance_scale={scale:g})"
    return {"steps": steps, "num_train_timesteps": int(spec.schedule["num_timesteps"]),
            "prediction_type": PREDICTION_TYPES[spec.parameterization], "parameterization": spec.parameterization,
            "unet_calls_per_step": 1 if guided or scale <= 1 else 2, "load": "StableDiffusionPipeline.from_pretrained"
            "(folder)", "call": call, "source": str(ckpt),
            **({"guidance_scale_range": [1 + spec.guidance["w_min"], 1 + spec.guidance["w_max"]],
                "w_embedding": {"time_cond_proj_dim": spec.guidance["embed_dim"], "scale": SD_W_SCALE}}
               if guided else {})}


@torch.no_grad()
def prompt_embeddings(spec: ModelSpec, prompts: list[str], components_folder: str | Path | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The text-encoder hidden states of `prompts` for a latent model (its recorded, hash-checked components)."""
    frozen = load_components(spec.components, need=("tokenizer", "text_encoder"), folder=components_folder)
    return frozen.encode_prompts(list(prompts), device)

