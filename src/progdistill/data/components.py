"""The frozen components of a Stable-Diffusion-layout folder (VAE, tokenizer, text encoder): named with a content
hash, loaded only after the hash is checked, and used exactly as diffusers' StableDiffusionPipeline uses them, so
that what a latent model is trained, distilled and sampled with is what the stock pipeline gives it.

- Prompts: `tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)` and
  the text encoder's last hidden states (the pipeline's `encode_prompt` without clip_skip); the null prompt of
  classifier-free guidance is the empty caption "".
- Images -> latents: `vae.encode(x).latent_dist` (its mean, or a sample) times `vae.config.scaling_factor`, x in
  [-1, 1]; latents -> images: `vae.decode(z / scaling_factor)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .decode import DataError

COMPONENTS = ("vae", "text_encoder", "tokenizer")
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


def describe_components(folder: str | Path) -> dict:
    """The `components` block a latent model's record carries: the folder, each component's sub-folder and content
    hash, and the VAE's scaling factor."""
    import json

    folder = Path(folder).resolve()
    block: dict = {"folder": str(folder)}
    for name in COMPONENTS:
        sub = folder / name
        if not sub.is_dir():
            raise ComponentError(f"{folder} has no {name}/ folder: a Stable Diffusion folder holds unet/, vae/, "
                                 "text_encoder/, tokenizer/ and scheduler/")
        block[name] = {"path": name, "sha256": folder_sha256(sub)}
    try:
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ComponentError(f"cannot read the VAE's config {folder / 'vae' / 'config.json'}: {e}") from None
    block["scaling_factor"] = float(vae_config.get("scaling_factor", 0.18215))
    if vae_config.get("shift_factor") not in (None, 0, 0.0):
        raise ComponentError("this VAE has a shift_factor (an SD3/Flux-style VAE); only Stable Diffusion 1.x/2.x "
                             "VAEs (scaling_factor only) are supported")
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

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device: torch.device | str = "cpu") -> Tensor:
        """Text-encoder hidden states [B, L, D] of `prompts`, exactly as StableDiffusionPipeline.encode_prompt."""
        ids = self.tokenize(prompts)
        encoder = self.text_encoder.to(device)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").attention_mask.to(device)
        return encoder(ids.to(device), attention_mask=mask)[0].float()

    def tokenize(self, prompts: list[str]) -> Tensor:
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_images(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents of images x in [-1, 1]: the latent distribution's mean, or a sample from `generator`."""
        dist = self.vae.encode(x.to(next(self.vae.parameters()).device)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1] (clamped) of scaled latents."""
        device = next(self.vae.parameters()).device
        return self.vae.decode(latents.to(device) / self.scaling_factor).sample.clamp(-1, 1).float().cpu()


def load_components(block: dict, need=COMPONENTS, folder: str | Path | None = None,
                    device: torch.device | str = "cpu") -> Components:
    """The components named in `need` (the rest None), each checked against its recorded hash first."""
    loaded: dict = {}
    for name in need:
        path = check_component(block, name, folder)
        try:
            if name == "vae":
                from diffusers import AutoencoderKL

                loaded[name] = AutoencoderKL.from_pretrained(path).to(device).eval().requires_grad_(False)
            elif name == "text_encoder":
                from transformers import CLIPTextModel

                loaded[name] = CLIPTextModel.from_pretrained(path).to(device).eval().requires_grad_(False)
            else:
                from transformers import CLIPTokenizer

                loaded[name] = CLIPTokenizer.from_pretrained(path)
        except (OSError, ValueError, RuntimeError) as e:
            raise ComponentError(f"cannot load the {name} in {path}: {e}") from None
    return Components(loaded.get("vae"), loaded.get("tokenizer"), loaded.get("text_encoder"),
                      float(block["scaling_factor"]))
