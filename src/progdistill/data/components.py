"""The frozen components of a Stable-Diffusion-layout folder (VAE, tokenizer, text encoder): named with a content
hash, loaded only after the hash is checked, and used exactly as diffusers' StableDiffusionPipeline uses them, so
that what a latent model is trained, distilled and sampled with is what the stock pipeline gives it.

- Prompts: `tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)` and
  the text encoder's last hidden states (the pipeline's `encode_prompt` without clip_skip); the null prompt of
  classifier-free guidance is the empty caption "".
- Images -> latents: `vae.encode(x).latent_dist` (its mean, or a sample) times `vae.config.scaling_factor`, x in
  [-1, 1]; latents -> images: `vae.decode(z / scaling_factor)`.

An SD3 folder (layout "sd3") has three text encoders (CLIP-L and CLIP-G with projection, T5) and their tokenizers,
and a VAE with a `shift_factor`: prompts are encoded by StableDiffusion3Pipeline's own `encode_prompt` (so the
condition is exactly the pipeline's: {"encoder_hidden_states": CLIP and T5 hidden states joined on the sequence
axis, "pooled_projections": the two CLIP pooled outputs}), latents are (mean - shift_factor) * scaling_factor and
decode as z / scaling_factor + shift_factor. A FLUX folder (layout "flux") has CLIP (pooled output) and T5 and a
shifted VAE; prompts are encoded by FluxPipeline's own `encode_prompt`. An SDXL folder (layout "sdxl") has two CLIP
text encoders (the second with a projection): StableDiffusionXLPipeline's own `encode_prompt` gives
{"encoder_hidden_states": both encoders' penultimate hidden states joined on the feature axis, "text_embeds": the
second's pooled projection}; the U-Net's third added condition, `time_ids` (original size, crop corner, target
size), is per image (data/captions.py) or the pipeline's default at sampling time. The VAE has no shift factor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .decode import DataError

COMPONENTS = ("vae", "text_encoder", "tokenizer")
# Each layout's frozen components, and those that encode prompts. A block without "layout" is "sd" (records written
# before layouts existed read as before).
LAYOUT_COMPONENTS = {"sd": COMPONENTS,
                     "sd3": ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
                             "tokenizer_3"),
                     "flux": ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
                     "sdxl": ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}
TEXT_COMPONENTS = {"sd": ("tokenizer", "text_encoder"),
                   "sd3": ("tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2",
                           "text_encoder_3"),
                   "flux": ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"),
                   "sdxl": ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")}
# The transformers classes of each layout's text components.
TEXT_CLASSES = {"sd": {"text_encoder": "CLIPTextModel", "tokenizer": "CLIPTokenizer"},
                "sd3": {"text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
                        "text_encoder_3": "T5EncoderModel", "tokenizer": "CLIPTokenizer",
                        "tokenizer_2": "CLIPTokenizer", "tokenizer_3": "T5TokenizerFast"},
                "flux": {"text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel",
                         "tokenizer": "CLIPTokenizer", "tokenizer_2": "T5TokenizerFast"},
                "sdxl": {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection",
                         "tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer"}}
# The pipelines' default max_sequence_length (T5 tokens): StableDiffusion3Pipeline 256, FluxPipeline 512.
MAX_SEQUENCE_LENGTH = {"sd3": 256, "flux": 512}
SD3_MAX_SEQUENCE_LENGTH = MAX_SEQUENCE_LENGTH["sd3"]
HASH_CHUNK = 1 << 22


class ComponentError(DataError):
    """A component of a Stable Diffusion folder is missing, changed since it was recorded, or unreadable."""


def folder_sha256(folder: Path) -> str:
    """SHA-256 over every file under `folder` (relative path and content), in sorted order; hidden files skipped."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def layout_of(block: dict) -> str:
    return block.get("layout", "sd")


def describe_components(folder: str | Path, layout: str = "sd", max_sequence_length: int | None = None) -> dict:
    """The `components` block a latent model's record carries: the folder, each component's sub-folder and content
    hash, and the VAE's scaling factor (and, for an SD3 folder, its layout, shift factor and the T5 prompt length)."""
    import json

    folder = Path(folder).resolve()
    block: dict = {"folder": str(folder)}
    if layout != "sd":
        block["layout"] = layout
    for name in LAYOUT_COMPONENTS[layout]:
        sub = folder / name
        if not sub.is_dir():
            raise ComponentError(f"{folder} has no {name}/ folder: a {layout} folder holds "
                                 f"{', '.join(c + '/' for c in LAYOUT_COMPONENTS[layout])} beside its network and "
                                 "scheduler/")
        block[name] = {"path": name, "sha256": folder_sha256(sub)}
    try:
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ComponentError(f"cannot read the VAE's config {folder / 'vae' / 'config.json'}: {e}") from None
    block["scaling_factor"] = float(vae_config.get("scaling_factor", 0.18215))
    if layout == "sd":
        if vae_config.get("shift_factor") not in (None, 0, 0.0):
            raise ComponentError("this VAE has a shift_factor (an SD3/Flux-style VAE) but the folder's network is a "
                                 "Stable Diffusion 1.x/2.x U-Net, whose VAEs have scaling_factor only")
    elif layout == "sdxl":
        if vae_config.get("shift_factor") not in (None, 0, 0.0):
            raise ComponentError("this VAE has a shift_factor (an SD3/Flux-style VAE) but the folder's network is an "
                                 "SDXL U-Net, whose VAE has scaling_factor only")
        block["shift_factor"] = 0.0
        block["max_sequence_length"] = None
        try:
            index = json.loads((folder / "model_index.json").read_text())
        except (OSError, ValueError):
            index = {}
        block["force_zeros_for_empty_prompt"] = bool(index.get("force_zeros_for_empty_prompt", True))
    else:
        block["shift_factor"] = float(vae_config.get("shift_factor") or 0.0)
        block["max_sequence_length"] = int(max_sequence_length or MAX_SEQUENCE_LENGTH[layout])
    return block


def check_component(block: dict, name: str, folder: str | Path | None = None) -> Path:
    """The sub-folder of component `name`, after checking it is there and its content hash is the recorded one
    (`folder`: look in this Stable Diffusion folder instead of the recorded one, e.g. after moving it)."""
    base = Path(folder) if folder is not None else Path(block["folder"])
    entry = block[name]
    path = base / entry["path"]
    if not path.is_dir():
        raise ComponentError(f"the model's {name} was {path}, which is missing: restore the Stable Diffusion folder "
                             "or point to where it is now (--components DIR)")
    digest = folder_sha256(path)
    if digest != entry["sha256"]:
        raise ComponentError(f"the model's {name} at {path} has changed since the model was imported (content "
                             f"SHA-256 {digest[:12]}..., recorded {entry['sha256'][:12]}...): restore the original "
                             "files, or import the folder again")
    return path


@dataclass
class Components:
    """A latent model's frozen VAE, tokenizer and text encoder (eval mode, no gradients), as the pipeline uses them."""

    vae: torch.nn.Module | None
    tokenizer: object | None
    text_encoder: torch.nn.Module | None
    scaling_factor: float
    layout: str = "sd"
    shift_factor: float = 0.0
    others: dict | None = None  # an SD3 folder's second and third tokenizers and text encoders
    max_sequence_length: int | None = None

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> Tensor | dict[str, Tensor]:
        """The condition of `prompts` exactly as the layout's stock pipeline computes it: text-encoder hidden states
        [B, L, D] (StableDiffusionPipeline.encode_prompt), or for SD3 the mapping {"encoder_hidden_states",
        "pooled_projections"} of StableDiffusion3Pipeline.encode_prompt."""
        if self.layout == "sd3":
            return self._encode_sd3(list(prompts), device)
        if self.layout == "flux":
            return self._encode_flux(list(prompts), device)
        if self.layout == "sdxl":
            return self._encode_sdxl(list(prompts), device)
        ids = self.tokenize(prompts)
        encoder = self.text_encoder.to(device)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").attention_mask.to(device)
        return encoder(ids.to(device), attention_mask=mask)[0].float()

    def _encode_sd3(self, prompts: list[str], device) -> dict[str, Tensor]:
        from diffusers import StableDiffusion3Pipeline

        encoders = {k: v.to(device) for k, v in self.others.items() if k.startswith("text_encoder")}
        pipe = StableDiffusion3Pipeline(transformer=None, scheduler=None, vae=None, tokenizer=self.tokenizer,
                                        text_encoder=self.text_encoder.to(device), **encoders,
                                        **{k: v for k, v in self.others.items() if k.startswith("tokenizer")})
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=torch.device(device),
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": hidden.float(), "pooled_projections": pooled.float()}

    def _encode_flux(self, prompts: list[str], device) -> dict[str, Tensor]:
        from diffusers import FluxPipeline

        pipe = FluxPipeline(transformer=None, scheduler=None, vae=None, tokenizer=self.tokenizer,
                            text_encoder=self.text_encoder.to(device), tokenizer_2=self.others["tokenizer_2"],
                            text_encoder_2=self.others["text_encoder_2"].to(device))
        hidden, pooled, _ = pipe.encode_prompt(prompts, None, device=torch.device(device),
                                               max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": hidden.float(), "pooled_projections": pooled.float()}

    def _encode_sdxl(self, prompts: list[str], device) -> dict[str, Tensor]:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(vae=None, unet=None, scheduler=None, tokenizer=self.tokenizer,
                                         text_encoder=self.text_encoder.to(device),
                                         tokenizer_2=self.others["tokenizer_2"],
                                         text_encoder_2=self.others["text_encoder_2"].to(device))
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, device=torch.device(device),
                                                  do_classifier_free_guidance=False)
        return {"encoder_hidden_states": hidden.float(), "text_embeds": pooled.float()}

    def tokenize(self, prompts: list[str]) -> Tensor:
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_images(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents of images x in [-1, 1]: the latent distribution's mean, or a sample from `generator`."""
        dist = self.vae.encode(x.to(next(self.vae.parameters()).device)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        if self.shift_factor:
            return (z.float() - self.shift_factor) * self.scaling_factor
        return z.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1] (clamped) of scaled latents."""
        device = next(self.vae.parameters()).device
        z = latents.to(device) / self.scaling_factor
        if self.shift_factor:
            z = z + self.shift_factor
        return self.vae.decode(z).sample.clamp(-1, 1).float().cpu()


def load_components(block: dict, need=COMPONENTS, folder: str | Path | None = None,
                    device: torch.device | str = "cpu") -> Components:
    """The components named in `need` (the rest None), each checked against its recorded hash first. For an SD3 or
    FLUX block, "tokenizer" and "text_encoder" stand for all of each."""
    import transformers

    layout = layout_of(block)
    if layout != "sd" and ("text_encoder" in need or "tokenizer" in need):
        need = tuple(need) + tuple(c for c in TEXT_COMPONENTS[layout] if c not in need)
    classes = TEXT_CLASSES[layout]
    loaded: dict = {}
    for name in need:
        path = check_component(block, name, folder)
        try:
            if name == "vae":
                from diffusers import AutoencoderKL

                loaded[name] = AutoencoderKL.from_pretrained(path).to(device).eval().requires_grad_(False)
            elif name.startswith("text_encoder"):
                cls = getattr(transformers, classes[name])
                loaded[name] = cls.from_pretrained(path).to(device).eval().requires_grad_(False)
            else:
                loaded[name] = getattr(transformers, classes[name]).from_pretrained(path)
        except (OSError, ValueError, RuntimeError) as e:
            raise ComponentError(f"cannot load the {name} in {path}: {e}") from None
    others = {k: v for k, v in loaded.items() if k[-2:] in ("_2", "_3")} or None
    return Components(loaded.get("vae"), loaded.get("tokenizer"), loaded.get("text_encoder"),
                      float(block["scaling_factor"]), layout, float(block.get("shift_factor", 0.0)), others,
                      block.get("max_sequence_length"))
