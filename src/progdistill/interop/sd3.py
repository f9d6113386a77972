"""SD3-layout folders in and out: import an SD3 (MMDiT, flow matching) text-to-image model as a teacher, export a
teacher or student as a folder that diffusers' stock StableDiffusion3Pipeline loads (docs/flow.md).

Import. transformer/ (an SD3Transformer2DModel), scheduler/ (a FlowMatchEulerDiscreteScheduler with a static
`shift`), vae/ (with its shift_factor), text_encoder/ and text_encoder_2/ (CLIP with projection), text_encoder_3/
(T5), and their three tokenizers. The transformer becomes an "sd3" teacher on the flow schedule with the
scheduler's shift and velocity output; the empty caption's condition (hidden states and pooled embeddings) is
stored with it; the other components stay in the folder, named in the record with their content hashes. The
captioned images it is distilled on are encoded into the latent cache at import.

Export. transformer/ (the student's; a guided student's with its w input folded in at one w, see nets/sd3_net.py),
the teacher's other components copied, and the FlowMatchEulerDiscreteScheduler of the teacher (same shift). The
student's steps reach the stock pipeline through its `sigmas=` argument: `pipe(prompt, num_inference_steps=N,
sigmas=[1, (N-1)/N, ..., 1/N])`, which the scheduler shifts onto exactly the student's grid. Without `sigmas` the
scheduler spaces its N steps from 1 to its smallest training sigma (1/1000 before the shift), not at k/N, and the
only scheduler setting that would move that end (num_train_timesteps = N) also rescales the transformer's timestep
input; so the export's README and summary give the call with `sigmas`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from .. import runfolder
from ..build import denoiser_from_spec, load_checkpoint, load_data, model_record
from ..checkpoint import CheckpointError, save_checkpoint
from ..config import Config, ConfigError
from ..data.components import describe_components, load_components
from ..diffusion.schedules import schedule_spec
from ..nets.spec import ModelSpec
from .diffusers_io import _read_json

SD3_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                  "tokenizer_2", "tokenizer_3", "scheduler")
# FlowMatchEulerDiscreteScheduler settings that change the sigmas it visits in ways the flow schedule does not model.
UNSUPPORTED_SCHEDULER = ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                         "invert_sigmas", "shift_terminal", "stochastic_sampling")


def is_sd3_folder(folder: str | Path) -> bool:
    """Whether `folder`'s transformer/ holds an SD3Transformer2DModel."""
    try:
        config = json.loads((Path(folder) / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("_class_name") == "SD3Transformer2DModel"


def check_transformer_layout(folder: str | Path) -> None:
    """Refuse a folder whose transformer/ holds a network other than SD3's or FLUX's, naming it (SANA, PixArt,
    ...)."""
    try:
        name = json.loads((Path(folder) / "transformer" / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return
    if name not in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
        raise ConfigError(f"{folder}/transformer holds a {name}: import takes transformer folders of the SD3 "
                          "(SD3Transformer2DModel) and FLUX (FluxTransformer2DModel) layouts only")


def _check_layout(folder: Path) -> tuple[dict, dict]:
    """(transformer config, scheduler config) of an SD3 folder, or a ConfigError naming what is missing or
    unsupported."""
    if not folder.is_dir():
        raise ConfigError(f"SD3 folder not found: {folder}")
    missing = [name for name in SD3_SUBFOLDERS if not (folder / name).is_dir()]
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(m + '/' for m in missing)}: an SD3 folder holds "
                          f"{', '.join(s + '/' for s in SD3_SUBFOLDERS)} and model_index.json")
    transformer = _read_json(folder / "transformer" / "config.json", "the transformer's config")
    sched = _read_json(folder / "scheduler" / "scheduler_config.json", "the scheduler's config")
    if sched.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
        raise ConfigError(f"{folder}'s scheduler is {sched.get('_class_name')}; an SD3 folder's is "
                          "FlowMatchEulerDiscreteScheduler")
    bad = [k for k in UNSUPPORTED_SCHEDULER if sched.get(k)]
    if bad:
        raise ConfigError(f"{folder}'s scheduler sets {', '.join(bad)}: import takes SD3's static shift only")
    if int(sched.get("num_train_timesteps", 1000)) != 1000:
        raise ConfigError("the scheduler's num_train_timesteps must be 1000 (the transformer's timestep is "
                          f"1000 sigma), got {sched.get('num_train_timesteps')}")
    if transformer.get("dual_attention_layers") or transformer.get("qk_norm"):
        pass  # SD3.5's layouts: the same interface, taken as they are
    return transformer, sched


def _sd3_config(base: Config, folder: Path, transformer: dict, shift: float, components: dict,
                captions: str | None) -> Config:
    """The teacher's config: the folder's transformer on the flow schedule with its shift, velocity output, the
    captioned data; targets never clipped (latents are not bounded)."""
    if base.distill.teacher_clip not in ("auto", "none"):
        raise ConfigError("distill.teacher_clip clips x_hat to [-1, 1], and latents are not bounded: leave it auto")
    vae = _read_json(folder / "vae" / "config.json", "the VAE's config (vae/config.json)")
    factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    size = transformer.get("sample_size", 128)
    data = replace(base.data, name="captions", root=str(Path(captions).resolve()) if captions else base.data.root,
                   image_size=base.data.image_size or size * factor, channels=int(vae.get("in_channels", 3)),
                   components=json.dumps(components), flip=False, conditional=False)
    cfg = replace(base, data=data,
                  model=replace(base.model, arch="sd3", parameterization="flow", diffusers_unet=json.dumps(transformer),
                                dropout=0.0),
                  diffusion=replace(base.diffusion, schedule="flow", shift=float(shift), weighting="velocity"),
                  distill=replace(base.distill, teacher_clip="none"), sample=replace(base.sample, clip=False))
    if not cfg.data.root:
        raise ConfigError("give the captioned images to distil on: --captions DIR (images with a metadata.jsonl)")
    return cfg.validate()


def import_sd3(folder: str | Path, out: str | Path, base: Config, captions: str | None = None,
               max_sequence_length: int | None = None) -> Path:
    """Write out/teacher from an SD3 folder; `captions` (or base's data.root): the captioned images the distillation
    trains on, encoded into the latent cache here; `max_sequence_length`: the T5 prompt length (the pipeline's
    argument of that name; 256 by default, as there)."""
    from diffusers import SD3Transformer2DModel

    from ..nets.sd3_net import resolve_sd3_transformer_config

    folder = Path(folder).resolve()
    transformer_cfg, sched = _check_layout(folder)
    transformer_cfg = {k: v for k, v in transformer_cfg.items() if not k.startswith("_")}
    shift = float(sched.get("shift", 1.0))
    components = describe_components(folder, "sd3", max_sequence_length)
    cfg = _sd3_config(base, folder, transformer_cfg, shift, components, captions)
    null = load_components(components, need=("tokenizer", "text_encoder")).encode_prompts([""])
    try:
        transformer = SD3Transformer2DModel.from_pretrained(folder / "transformer")
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"could not load the transformer weights in {folder / 'transformer'}: {e}") from None
    hidden, pooled = null["encoder_hidden_states"][0], null["pooled_projections"][0]
    size = int(transformer.config.sample_size)
    spec = ModelSpec("sd3", {"transformer": resolve_sd3_transformer_config(transformer_cfg),
                             "text_length": hidden.shape[0], "text_dim": hidden.shape[1],
                             "pooled_dim": pooled.shape[0]},
                     "flow", schedule_spec("flow", shift=shift), (int(transformer.config.in_channels), size, size),
                     components=components)
    denoiser = denoiser_from_spec(spec, cfg.perf)
    denoiser.net.transformer.load_state_dict(transformer.state_dict())
    denoiser.net.null_text.copy_(hidden)
    denoiser.net.null_pooled.copy_(pooled)
    data = load_data(cfg)  # encodes the captioned images into the latent cache (once; progress bar)
    if data.example_shape != spec.data_shape:
        raise ConfigError(f"the VAE makes latents of shape {list(data.example_shape)} from {cfg.data.image_size}px "
                          f"images, the transformer takes {list(spec.data_shape)}: set data.image_size to match")
    return save_checkpoint(runfolder.teacher_stem(Path(out)), {"model": denoiser}, {
        "kind": "teacher", "config": cfg.to_dict(), **model_record(spec, cfg, cfg.distill.start_steps),
        "sampling_weights": "model", "step": 0, "imported_from": str(folder), "diffusers_scheduler": sched,
    })


# ---------------------------------------------------------------------------------------------------- export


def student_sigmas(steps: int) -> list[float]:
    """The unshifted sigmas [1, (N-1)/N, ..., 1/N] that FlowMatchEulerDiscreteScheduler shifts onto the student's
    N-step grid (the pipeline's `sigmas=` argument)."""
    return [(steps - i) / steps for i in range(steps)]


def export_sd3(ckpt: str | Path, out: str | Path, *, steps: int | None = None, w: float | None = None,
               components_folder: str | Path | None = None) -> dict:
    """Write a StableDiffusion3Pipeline folder for the SD3 checkpoint `ckpt`; a guided (w-conditioned) student is
    written at guidance weight `w` (default: the middle of its range). Returns a summary."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    loaded = load_checkpoint(ckpt)
    spec = loaded.spec
    steps = int(steps or loaded.sampling["steps"])
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new --out folder")
    net = loaded.denoiser.net
    guided = spec.guidance is not None
    if guided:
        lo, hi = spec.guidance["w_min"], spec.guidance["w_max"]
        w = (lo + hi) / 2 if w is None else float(w)
        if not lo <= w <= hi:
            raise ConfigError(f"this student was distilled for w in [{lo:g}, {hi:g}]; got w = {w:g}")
        net.fold_w(w)
    elif w is not None:
        raise ConfigError("--w is for guided students (w-conditioned); the stock pipeline guides this model itself "
                          "(guidance_scale = 1 + w)")
    transformer = SD3Transformer2DModel.from_config(dict(net.transformer.config))
    transformer.load_state_dict(net.merged_transformer_state())  # a LoRA student's adapter merged in
    scheduler = FlowMatchEulerDiscreteScheduler(shift=float(spec.schedule["shift"]))
    frozen = load_components(spec.components, folder=components_folder)
    others = frozen.others
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=frozen.vae,
                                    text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer, **others)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    summary = _summary(ckpt, spec, steps, w if guided else None)
    if net.lora is not None and not guided:
        summary["lora"] = _save_lora(net, out / "lora")
    (out / "progdistill_export.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text(
        f"# progdistill export\n\nA {loaded.record.get('kind', 'model')} of `{ckpt}` for diffusers' stock "
        f"StableDiffusion3Pipeline: {steps} Euler steps on the student's sigmas (the scheduler shifts them by "
        f"{spec.schedule['shift']:g}).\n\n```python\nfrom diffusers import StableDiffusion3Pipeline\n"
        f"pipe = StableDiffusion3Pipeline.from_pretrained({str(out)!r})\nimage = {summary['call']}.images[0]\n```\n")
    return summary


def _save_lora(net, out: Path) -> dict:
    """An unguided LoRA student's adapter as diffusers LoRA weights (pipe.load_lora_weights on the teacher's own
    pipeline)."""
    from diffusers import StableDiffusion3Pipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(net.transformer))
    StableDiffusion3Pipeline.save_lora_weights(out, transformer_lora_layers=layers, safe_serialization=True)
    return {"folder": str(out), "rank": net.lora["rank"], "targets": net.lora["targets"],
            "load": f"pipe.load_lora_weights({str(out)!r})"}


def _summary(ckpt: str | Path, spec: ModelSpec, steps: int, w: float | None) -> dict:
    sigmas = student_sigmas(steps)
    length = spec.components["max_sequence_length"]
    # A guided student runs unguided in the pipeline (its w is folded in); any other model may also be guided by
    # the pipeline itself (guidance_scale = 1 + w > 1: two transformer calls per step).
    call = (f"pipe('a photo of a cat', num_inference_steps={steps}, sigmas={sigmas}, guidance_scale=1.0, "
            f"max_sequence_length={length})")
    return {"steps": steps, "sigmas": sigmas, "shift": float(spec.schedule["shift"]), "max_sequence_length": length,
            "transformer_calls_per_step": 1, "load": "StableDiffusion3Pipeline.from_pretrained(folder)", "call": call,
            "source": str(ckpt), **({"w": w, "guidance_scale_range": [1 + spec.guidance["w_min"],
                                                                       1 + spec.guidance["w_max"]]}
                                    if w is not None else {})}
