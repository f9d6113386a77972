"""Small Stable-Diffusion-layout pipeline folders built offline: for tests, the README's example and the latent
benchmark (no pretrained Stable Diffusion can be downloaded there).

The tokenizer is a real transformers `CLIPTokenizer` (CLIP's lower-casing, word splitting and `</w>` word ends)
over a small vocabulary made from the words it is given: every letter, with and without the word end, and for every
word the merges that build it letter by letter, so each known word is one token and any lower-case text still
tokenizes (into letters). The other components are diffusers' and transformers' own classes at small sizes
(the sizes of diffusers' Stable Diffusion tests), randomly initialised unless the caller trains them.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_vocabulary(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a CLIP BPE tokenizer in which every word of `words` is one token."""
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = [BOS, EOS] + letters + [c + "</w>" for c in letters]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    for word in sorted({w.lower() for w in words if w}):
        if not all(c in letters for c in word) or len(word) < 2:
            continue
        left = word[0]
        for k, c in enumerate(word[1:], start=1):
            right = c + ("</w>" if k == len(word) - 1 else "")
            merged = left + right
            if merged not in seen:
                merges.append((left, right))
                tokens.append(merged)
                seen.add(merged)
            left = merged
    return {t: i for i, t in enumerate(tokens)}, merges


def tiny_tokenizer(words, max_length: int = 16):
    """A CLIPTokenizer knowing `words` as whole tokens, padding/truncating to `max_length` (its model_max_length)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def tiny_text_encoder(vocab_size: int, max_length: int = 16, hidden: int = 32, layers: int = 2, heads: int = 4,
                      seed: int = 0):
    """A small CLIPTextModel (random weights from `seed`) for a tokenizer of `vocab_size` tokens."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1, layer_norm_eps=1e-5)
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def tiny_clip_with_projection(vocab_size: int, max_length: int = 16, hidden: int = 32, projection: int = 32,
                              seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, projection_dim=projection,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1, layer_norm_eps=1e-5, hidden_act="gelu")
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config).eval()


def tiny_unet(cross_attention_dim: int = 32, sample_size: int = 8, channels=(8, 16), latent_channels: int = 4,
              seed: int = 0, **extra):
    """A small UNet2DConditionModel on `latent_channels` x `sample_size`^2 latents (random weights from `seed`)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=min(channels) // 2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=2, **extra)


def tiny_vae(image_channels: int = 1, channels=(8, 16), latent_channels: int = 4, sample_size: int = 16,
             scaling_factor: float = 0.5, seed: int = 0):
    """A small AutoencoderKL: images of `image_channels` x `sample_size`^2 -> latents downsampled
    2^(len(channels) - 1) times (random weights from `seed`)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(in_channels=image_channels, out_channels=image_channels, block_out_channels=tuple(channels),
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         latent_channels=latent_channels, norm_num_groups=min(channels) // 2, layers_per_block=1,
                         sample_size=sample_size, scaling_factor=scaling_factor).eval()


def scheduler_config(prediction_type: str = "epsilon", beta_schedule: str = "scaled_linear",
                     num_train_timesteps: int = 1000) -> dict:
    """A Stable Diffusion 1.x scheduler (PNDMScheduler, as SD 1.5 ships) with the given prediction type."""
    return {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": beta_schedule, "num_train_timesteps":
            num_train_timesteps, "prediction_type": prediction_type, "set_alpha_to_one": False, "steps_offset": 1,
            "skip_prk_steps": True, "clip_sample": False}


def save_sd_folder(out: str | Path, unet, vae, text_encoder, tokenizer, scheduler: dict | None = None) -> Path:
    """Write a StableDiffusionPipeline folder (no safety checker) that `StableDiffusionPipeline.from_pretrained`
    loads offline."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    out = Path(out)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler.from_config(scheduler or scheduler_config()),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def build_tiny_sd_folder(out: str | Path, words=("a", "photo", "of", "shirt", "shoe", "bag"), *, seed: int = 0,
                         image_channels: int = 1, image_size: int = 16, prediction_type: str = "epsilon",
                         max_length: int = 16) -> Path:
    """A randomly initialised Stable-Diffusion-layout folder of test size (latents 4 x image_size/2 squared)."""
    tokenizer = tiny_tokenizer(words, max_length)
    text_encoder = tiny_text_encoder(len(tokenizer), max_length, seed=seed + 1)
    vae = tiny_vae(image_channels, sample_size=image_size, seed=seed + 2)
    unet = tiny_unet(text_encoder.config.hidden_size, image_size // 2, seed=seed + 3)
    return save_sd_folder(out, unet, vae, text_encoder, tokenizer, scheduler_config(prediction_type))


def write_captioned_folder(out: str | Path, images, captions, column: str = "text") -> Path:
    """Save uint8 images [N, H, W] or [N, H, W, C] as PNGs with a metadata.jsonl of captions (the layout diffusers'
    text-to-image examples and datasets' imagefolder read)."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        name = f"{i:06d}.png"
        Image.fromarray(image).save(out / name)
        lines.append(json.dumps({"file_name": name, column: caption}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out


def sdxl_scheduler_config(prediction_type: str = "epsilon") -> dict:
    """SDXL's scheduler (EulerDiscreteScheduler, as SDXL 1.0 ships): SD 1.x's betas, leading spacing."""
    return {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
            "prediction_type": prediction_type, "steps_offset": 1, "timestep_spacing": "leading",
            "interpolation_type": "linear", "use_karras_sigmas": False}


def build_tiny_sdxl_folder(out: str | Path, words=("a", "photo", "of", "shirt", "shoe", "bag"), *, seed: int = 0,
                           image_channels: int = 1, image_size: int = 16, prediction_type: str = "epsilon",
                           max_length: int = 16, force_zeros_for_empty_prompt: bool = True) -> Path:
    """A randomly initialised SDXL-layout folder at diffusers' SDXL test sizes (two CLIP text encoders of width 32,
    the second with a projection of 32: cross-attention width 64, added time ids of 6 x 8 plus the pooled 32) that
    `StableDiffusionXLPipeline.from_pretrained` loads offline (latents 4 x image_size/2 squared)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = tiny_tokenizer(words, max_length)
    text_encoder = tiny_text_encoder(len(tokenizer), max_length, seed=seed + 1)
    text_encoder_2 = tiny_clip_with_projection(len(tokenizer), max_length, seed=seed + 4)
    pooled = text_encoder_2.config.projection_dim
    unet = tiny_unet(text_encoder.config.hidden_size + text_encoder_2.config.hidden_size, image_size // 2,
                     seed=seed + 3, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + pooled)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(image_channels, sample_size=image_size, seed=seed + 2), text_encoder=text_encoder,
        text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(sdxl_scheduler_config(prediction_type)),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    pipe.save_pretrained(out)
    return Path(out)
