"""Export a checkpoint as a diffusers pipeline folder, and import a diffusers UNet2DModel + scheduler as a teacher.

Export. The project's samplers walk the grid t_i = i / N on a log-SNR schedule; diffusers' DDIMScheduler walks
discrete timesteps of an alpha_bar table. With num_train_timesteps T a multiple of N, timestep j placed at
t = (j + 1) / T, timestep_spacing="trailing" and set_alpha_to_one=True, the scheduler's N timesteps are exactly
t = 1, (N-1)/N, ..., 1/N and its last step returns x_hat, as here. Our U-Nets are conditioned on a noise level,
not on j: the exported UNet2DModel uses time_embedding_type="learned", whose table holds, for every j, the
sinusoidal embedding our network computes at that timestep's log-SNR, so every other weight is copied unchanged.
eps, x and v map to diffusers' epsilon, sample and v_prediction; "both" has no diffusers equivalent and is
exported as a small wrapper component (progdistill_unet.py) that converts its two outputs to v-prediction.
Class-conditional models get a pipeline file (pipeline_progdistill.py) that passes class labels.

Import. A UNet2DModel with a DDPMScheduler or DDIMScheduler (epsilon, v_prediction or sample; linear,
scaled_linear or squaredcos_cap_v2 betas) becomes a teacher checkpoint on its own discrete schedule
(diffusion.schedule = "discrete"), from which `progdistill distill` runs unchanged.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from .. import runfolder
from ..build import build_denoiser, load_checkpoint, load_data, model_record, schedule_of
from ..config import Config, ConfigError
from ..denoiser import noise_condition
from ..diffusion.schedules import alpha_sigma
from ..nets.families import FAMILIES
from ..checkpoint import save_checkpoint
from ..sampling import sample_in_batches
from .folder_checks import check_import_layout, load_model

PREDICTION_TYPES = {"eps": "epsilon", "x": "sample", "v": "v_prediction", "both": "v_prediction"}
PARAMETERIZATIONS = {"epsilon": "eps", "sample": "x", "v_prediction": "v"}
# The loss weighting a student of each parameterization is distilled with (eps: the eps-MSE of its training).
DISTILL_WEIGHTINGS = {"eps": "snr", "x": "snr_trunc", "v": "snr_plus1"}


def _plain_config(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def default_train_timesteps(steps: int) -> int:
    """A multiple of `steps` near 1024 (1024 itself for powers of two), so the pipeline also accepts step counts
    other than the student's (which then fall between the model's training grid points)."""
    return steps * max(1, round(1024 / steps))


def _learned_time_table(schedule, unet, num_train_timesteps: int) -> torch.Tensor:
    """For each timestep j, the embedding the project's UNet computes at t = (j + 1) / T: the same float32 log-SNR
    the sampler's grid holds, the same noise condition, and diffusers' own sinusoidal embedding of 1000 c."""
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    logsnr = schedule(t).to(torch.float32)
    proj = unet.time_proj
    return get_timestep_embedding(1000.0 * noise_condition(logsnr), unet.config.block_out_channels[0],
                                  flip_sin_to_cos=proj.flip_sin_to_cos, downscale_freq_shift=proj.downscale_freq_shift,
                                  scale=proj.scale)


def export_diffusers(ckpt: str | Path, out: str | Path, *, steps: int | None = None,
                     train_timesteps: int | None = None, clip: bool | None = None) -> dict:
    """Write a diffusers pipeline folder for checkpoint `ckpt`; returns a summary (steps, how to load it)."""
    loaded = load_checkpoint(ckpt)
    spec = loaded.spec
    shape = spec.data_shape
    if spec.consistency is not None:
        raise ConfigError(f"{ckpt} is a consistency-distilled student: its c_skip mix with z / alpha is not part of a "
                          "UNet2DModel, so no stock diffusers pipeline reproduces it; sample it with 'progdistill "
                          "sample --sampler consistency' (docs/methods.md)")
    if spec.schedule.get("name") == "flow" or spec.parameterization not in PREDICTION_TYPES:
        raise ConfigError(f"{ckpt} is a flow-matching model ({spec.parameterization!r} output on the "
                          f"{spec.schedule.get('name')!r} schedule): export to diffusers' flow-matching pipelines is "
                          "not built yet (docs/flow.md); sample it with 'progdistill sample'")
    fam = FAMILIES[spec.kind]
    if len(shape) != 3 or fam.export != "DDIMPipeline":
        raise ConfigError(f"export-diffusers needs an image model (a 'unet' or 'diffusers' network); {ckpt} is "
                          f"a {spec.kind!r} model of data shape {list(shape)}")
    steps = int(steps or loaded.sampling["steps"])
    param = spec.parameterization
    guided = spec.guidance is not None
    if guided and (param == "both" or not fam.guided_export):
        raise ConfigError(f"export of a guided student needs a 'unet' network with eps, x or v output; {ckpt} is a "
                          f"{spec.kind!r} network with {param!r} output")
    clip = loaded.sampling["clip"] if clip is None else clip
    scheduler, unet_config, state = _exported_scheduler_and_unet(spec, loaded.denoiser.net, steps, train_timesteps,
                                                                 clip)
    num_train_timesteps = scheduler.config.num_train_timesteps
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    model = _exported_unet(spec, loaded.denoiser.net, unet_config, state, num_train_timesteps)
    remote = _save_pipeline(out, model, scheduler, spec)
    summary = _export_summary(ckpt, spec, steps, num_train_timesteps, clip, remote)
    (out / "progdistill_export.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text(
        f"# progdistill export\n\nA {loaded.record.get('kind', 'model')} of `{ckpt}` for diffusers: a {steps}-step "
        f"DDIM sampler (prediction_type {PREDICTION_TYPES[param]}, {num_train_timesteps} training timesteps, "
        f"trailing spacing).\n\n"
        f"```python\nfrom diffusers import {'DiffusionPipeline' if remote else 'DDIMPipeline'}\n"
        f"pipe = {summary['load'].replace('folder', repr(str(out)))}\nimages = {summary['call']}.images\n```\n"
        + ("\nClipping: pass `use_clipped_model_output=True` so that eps is re-derived from the clipped x_hat, "
           "as the progdistill sampler does.\n" if clip and not spec.num_classes else ""))
    return summary


def _exported_scheduler_and_unet(spec, net, steps: int, train_timesteps: int | None, clip: bool):
    """(DDIMScheduler, UNet2DModel config, U-Net state dict) of the export: an imported model keeps its own
    discrete timesteps; ours get a trailing grid of T timesteps and a learned time table at their log-SNRs."""
    from diffusers import DDIMScheduler

    schedule = schedule_of(spec)
    common = dict(clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0,
                  timestep_spacing="trailing", prediction_type=PREDICTION_TYPES[spec.parameterization])
    if FAMILIES[spec.kind].own_timesteps:
        T = spec.schedule["num_timesteps"]
        if train_timesteps not in (None, T):
            raise ConfigError(f"an imported model keeps its own {T} timesteps; drop --train-timesteps")
        if T % steps:
            raise ConfigError(f"{steps} steps do not fall on this model's {T} timesteps (T must be a multiple "
                              "of the step count for the pipeline to take the same steps)")
        discrete = spec.schedule
        scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule=discrete["beta_schedule"],
                                  beta_start=discrete["beta_start"], beta_end=discrete["beta_end"], **common)
        return scheduler, _plain_config(net.unet.config), net.unet.state_dict()
    T = int(train_timesteps or default_train_timesteps(steps))
    if T % steps:
        raise ConfigError(f"--train-timesteps ({T}) must be a multiple of the step count ({steps})")
    t = torch.arange(0, T + 1, dtype=torch.float64) / T
    abar = torch.sigmoid(schedule(t))  # abar[0] is t = 0, abar[j + 1] timestep j
    betas = 1.0 - abar[1:] / abar[:-1]
    betas[0] = 1.0 - abar[1]
    scheduler = DDIMScheduler(num_train_timesteps=T, trained_betas=betas.tolist(), **common)
    unet_config = _plain_config(net.unet.config) | {"time_embedding_type": "learned", "num_train_timesteps": T}
    state = dict(net.unet.state_dict())
    state["time_proj.weight"] = _learned_time_table(schedule, net.unet, T)
    return scheduler, unet_config, state


def _exported_unet(spec, net, unet_config: dict, state: dict, num_train_timesteps: int) -> torch.nn.Module:
    """The diffusers model to save: a stock UNet2DModel, or the wrapper of a guided or "both" network."""
    shape, param = spec.data_shape, spec.parameterization
    if spec.guidance is not None:
        from .progdistill_unet import GuidedUNet2DModel

        g = spec.guidance
        model = GuidedUNet2DModel(unet_config=unet_config, embed_dim=g["embed_dim"], embed_scale=g["embed_scale"],
                                  w_min=g["w_min"], w_max=g["w_max"], sample_size=shape[1], in_channels=shape[0],
                                  num_classes=spec.num_classes, class_gate=g.get("class_gate", False))
        model.unet.load_state_dict(state)
        model.w_embed.load_state_dict(net.w_embed.state_dict())
        return model
    if param == "both":
        from .progdistill_unet import BothUNet2DModel

        model = BothUNet2DModel(unet_config=unet_config, num_train_timesteps=num_train_timesteps,
                                sample_size=shape[1], in_channels=shape[0])
        model.unet.load_state_dict(state)
        j = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        a, s = alpha_sigma(schedule_of(spec)(j).to(torch.float32))
        model.alpha_sigma.copy_(torch.stack([a, s], dim=1))
        return model
    from diffusers import UNet2DModel

    model = UNet2DModel.from_config(unet_config)
    model.load_state_dict(state)
    return model


def _save_pipeline(out: Path, model, scheduler, spec) -> bool:
    """unet/, scheduler/, model_index.json and the custom code files the pipeline needs; whether loading it needs
    trust_remote_code (a custom U-Net or a class-conditional pipeline)."""
    import diffusers

    guided, num_classes = spec.guidance is not None, spec.num_classes
    custom_unet = spec.parameterization == "both" or guided
    model.save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    index = {"_diffusers_version": diffusers.__version__, "scheduler": ["diffusers", "DDIMScheduler"],
             "unet": (["progdistill_unet", "GuidedUNet2DModel" if guided else "BothUNet2DModel"] if custom_unet
                      else ["diffusers", "UNet2DModel"])}
    if custom_unet:
        shutil.copy(Path(__file__).with_name("progdistill_unet.py"), out / "unet" / "progdistill_unet.py")
    if num_classes:
        shutil.copy(Path(__file__).with_name("pipeline_progdistill.py"), out / "pipeline_progdistill.py")
        index["_class_name"] = ["pipeline_progdistill", "ProgdistillDDIMPipeline"]
    else:
        index["_class_name"] = "DDIMPipeline"
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return custom_unet or bool(num_classes)


def _export_summary(ckpt: str | Path, spec, steps: int, num_train_timesteps: int, clip: bool, remote: bool) -> dict:
    """progdistill_export.json: the step count, timesteps, prediction type and how to load and call the pipeline."""
    param, num_classes, guidance = spec.parameterization, spec.num_classes, spec.guidance
    loader = ("DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)" if remote
              else "DDIMPipeline.from_pretrained(folder)")
    scale = f"guidance_scale={1 + (guidance['w_min'] + guidance['w_max']) / 2:g}, " if guidance is not None else ""
    call = (f"pipe(class_labels=[0, 1, 2], {scale}num_inference_steps={steps}, output_type='np')" if num_classes else
            f"pipe(batch_size=4, num_inference_steps={steps}"
            + (", use_clipped_model_output=True" if clip else "") + ", output_type='np')")
    return {"steps": steps, "num_train_timesteps": num_train_timesteps, "prediction_type": PREDICTION_TYPES[param],
            "parameterization": param, "num_classes": num_classes, "clip_sample": clip, "load": loader,
            "call": call, "source": str(ckpt),
            **({"guidance_scale_range": [1 + guidance["w_min"], 1 + guidance["w_max"]]} if guidance is not None
               else {})}


# ---------------------------------------------------------------------------------------------------- import


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None


def read_diffusers_folder(folder: str | Path):
    """(UNet2DModel, scheduler config) from a pipeline folder with unet/ and scheduler/ sub-folders."""
    from diffusers import UNet2DModel

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"diffusers folder not found: {folder}")
    check_import_layout(folder)
    unet_dir, sched_dir = folder / "unet", folder / "scheduler"
    unet_cfg = _read_json(unet_dir / "config.json", "the U-Net's config (unet/config.json)")
    if unet_cfg.get("_class_name") != "UNet2DModel":
        raise ConfigError(f"{unet_dir} holds a {unet_cfg.get('_class_name')!r}; only UNet2DModel (pixel-space "
                          "DDPM/DDIM models) can be imported")
    sched = _read_json(sched_dir / "scheduler_config.json", "the scheduler's config (scheduler/scheduler_config.json)")
    if sched.get("_class_name") not in ("DDPMScheduler", "DDIMScheduler"):
        raise ConfigError(f"{sched_dir} holds a {sched.get('_class_name')!r}; import takes a DDPMScheduler or "
                          "DDIMScheduler")
    unet = load_model(UNet2DModel, unet_dir, "U-Net")
    return unet, sched


def _importable_parameterization(unet, sched: dict) -> str:
    """The parameterization (eps, x or v) of a model import can take; ConfigError naming what it cannot."""
    if sched.get("trained_betas") is not None:
        raise ConfigError("schedulers with trained_betas are not supported: import takes beta_schedule linear, "
                          "scaled_linear or squaredcos_cap_v2")
    if sched.get("rescale_betas_zero_snr"):
        raise ConfigError("a zero-terminal-SNR schedule (rescale_betas_zero_snr) has no finite log-SNR at its last "
                          "timestep and cannot be imported")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PARAMETERIZATIONS:
        raise ConfigError(f"prediction_type {prediction!r} is not supported: epsilon, sample or v_prediction")
    if unet.config.time_embedding_type != "positional":
        raise ConfigError(f"time_embedding_type {unet.config.time_embedding_type!r} is not supported (positional "
                          "embeddings can be evaluated between timesteps; learned and fourier ones cannot)")
    return PARAMETERIZATIONS[prediction]


def import_diffusers(folder: str | Path, out: str | Path, base: Config) -> Path:
    """Write out/teacher (a progdistill teacher checkpoint) from a diffusers UNet2DModel + DDPM/DDIM scheduler.

    `base` supplies the data the distillation trains on and the [distill] settings; the model, its schedule and
    parameterization come from the folder."""
    unet, sched = read_diffusers_folder(folder)
    param = _importable_parameterization(unet, sched)
    ucfg = _plain_config(unet.config)
    # The "auto" [distill] values made explicit for this teacher (v students, warm-up and clipped-teacher targets
    # near t = 1 for eps; config.resolve_distill); a value the user set stays.
    from ..config import resolve_distill

    distill_settings = resolve_distill(replace(base, model=replace(base.model, parameterization=param))).distill
    student = param if distill_settings.parameterization == "same" else distill_settings.parameterization
    cfg = replace(
        base,
        model=replace(base.model, arch="diffusers", parameterization=param,
                      diffusers_unet=json.dumps(ucfg), dropout=float(ucfg.get("dropout", 0.0))),
        diffusion=replace(base.diffusion, schedule="discrete",
                          num_timesteps=int(sched.get("num_train_timesteps", 1000)),
                          beta_schedule=sched.get("beta_schedule", "linear"),
                          beta_start=float(sched.get("beta_start", 1e-4)), beta_end=float(sched.get("beta_end", 0.02)),
                          weighting=DISTILL_WEIGHTINGS[param]),
        distill=replace(distill_settings, weighting=DISTILL_WEIGHTINGS.get(student, distill_settings.weighting)),
        # Our best sampler for every imported model (data in [-1, 1]): DDIM with x_hat clipped and eps re-derived,
        # whatever the scheduler's clip_sample says (diffusers' own DDIM is reported beside it by evaluate).
        sample=replace(base.sample, clip=True),
    ).validate()
    size = ucfg["sample_size"]
    size = size if isinstance(size, int) else size[0]
    shape = (int(ucfg["in_channels"]), int(size), int(size))
    num_classes = int(ucfg.get("num_class_embeds") or 0)
    data = load_data(cfg)
    if data.example_shape != shape:
        raise ConfigError(f"the data ({cfg.data.name}, examples of shape {list(data.example_shape)}) does not match "
                          f"the model's input {list(shape)}; choose data of that shape (data.image_size for folders)")
    if num_classes and data.num_classes != num_classes:
        raise ConfigError(f"the model is class-conditional with {num_classes} classes but the data has "
                          f"{data.num_classes or 'no'} labels (data.conditional = true and a labelled data set)")
    if not num_classes and data.num_classes:
        cfg = replace(cfg, data=replace(cfg.data, conditional=False)).validate()
    denoiser = build_denoiser(cfg, shape, num_classes)
    denoiser.net.unet.load_state_dict(unet.state_dict())
    out = Path(out)
    return save_checkpoint(runfolder.teacher_stem(out), {"model": denoiser}, {
        "kind": "teacher", "config": cfg.to_dict(), **model_record(denoiser.spec, cfg, cfg.distill.start_steps),
        "sampling_weights": "model", "step": 0, "imported_from": str(Path(folder).resolve()),
        "diffusers_scheduler": sched,
    })


@torch.no_grad()
def diffusers_default_ddim(denoiser, scheduler_config: dict, steps: int, num: int, data_shape, *, seed: int = 0,
                           batch_size: int = 10_000, device="cpu", labels=None) -> torch.Tensor:
    """`num` samples from an imported model with diffusers' own DDIMScheduler built from the model's scheduler
    config as it stands (DDIMScheduler.from_config: its clip_sample, timestep_spacing, set_alpha_to_one and
    prediction_type; eta = 0), i.e. what a user of the pipeline gets by swapping in DDIM. The starting noise is
    `generate`'s for the same seed, so rows compare sample for sample."""
    from diffusers import DDIMScheduler

    unet = denoiser.net.unet
    sched = DDIMScheduler.from_config({k: v for k, v in scheduler_config.items() if k != "_class_name"})
    sched.set_timesteps(steps)

    def denoise(z: torch.Tensor, batch_labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        for t in sched.timesteps:
            pred = unet(z, t.to(device), class_labels=batch_labels).sample
            z = sched.step(pred, t, z, eta=0.0).prev_sample
        return z

    return sample_in_batches(denoise, num, data_shape, seed=seed, batch_size=batch_size, device=device, labels=labels)
