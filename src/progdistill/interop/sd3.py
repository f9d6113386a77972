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
from pathlib import Path

from .. import runfolder
from ..build import denoiser_from_spec, load_checkpoint, load_data, model_record
from ..checkpoint import save_checkpoint
from ..config import Config, ConfigError
from ..data.components import describe_components, load_components
from ..diffusion.schedules import schedule_spec
from ..nets.spec import ModelSpec
from . import flow_folders

SD3_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                  "tokenizer_2", "tokenizer_3", "scheduler")
UNSUPPORTED_SCHEDULER = ("use_dynamic_shifting",) + flow_folders.UNSUPPORTED_SCHEDULER


def is_sd3_folder(folder: str | Path) -> bool:
    """Whether `folder`'s transformer/ holds an SD3Transformer2DModel."""
    return flow_folders.transformer_class(folder) == "SD3Transformer2DModel"


def _check_layout(folder: Path) -> tuple[dict, dict]:
    """(transformer config, scheduler config) of an SD3 folder (SD3.5's dual-attention and qk-norm layouts are the
    same interface, taken as they are), or a ConfigError naming what is missing or unsupported."""
    transformer, sched = flow_folders.check_folder(folder, "an SD3", SD3_SUBFOLDERS, UNSUPPORTED_SCHEDULER,
                                                   "SD3's static shift")
    if int(sched.get("num_train_timesteps", 1000)) != 1000:
        raise ConfigError("the scheduler's num_train_timesteps must be 1000 (the transformer's timestep is "
                          f"1000 sigma), got {sched.get('num_train_timesteps')}")
    return transformer, sched


def _sd3_config(base: Config, folder: Path, transformer: dict, shift: float, components: dict,
                captions: str | None) -> Config:
    """The teacher's config: data.image_size defaults to the transformer's sample size times the VAE's factor."""
    vae, factor = flow_folders.vae_factor(folder)
    size = transformer.get("sample_size", 128)
    return flow_folders.teacher_config(base, "sd3", transformer, shift, captions,
                                       image_size=base.data.image_size or size * factor,
                                       channels=int(vae.get("in_channels", 3)), components=json.dumps(components))


def import_sd3(folder: str | Path, out: str | Path, base: Config, captions: str | None = None,
               max_sequence_length: int | None = None) -> Path:
    """Write out/teacher from an SD3 folder; `captions` (or base's data.root): the captioned images the distillation
    trains on, encoded into the latent cache here; `max_sequence_length`: the T5 prompt length (the pipeline's
    argument of that name; 256 by default, as there)."""
    from diffusers import SD3Transformer2DModel

    from ..nets.sd3_net import resolve_sd3_transformer_config

    folder = Path(folder).resolve()
    transformer_cfg, sched = _check_layout(folder)
    shift = float(sched.get("shift", 1.0))
    components = describe_components(folder, "sd3", max_sequence_length)
    cfg = _sd3_config(base, folder, transformer_cfg, shift, components, captions)
    null = load_components(components, need=("tokenizer", "text_encoder")).encode_prompts([""])
    transformer = flow_folders.load_transformer(SD3Transformer2DModel, folder)
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
    out = flow_folders.new_export_folder(out)
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
