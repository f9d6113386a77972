"""Small SD3-layout pipeline folders built offline: for tests and the README's runnable example (no SD3 can be
downloaded there).

The sizes are those of diffusers' own StableDiffusion3Pipeline tests: one MMDiT layer (attention_head_dim 8, 4
heads, joint_attention_dim 32, pooled_projection_dim 64), two CLIP text encoders with projection (hidden 32,
projection 32: pooled outputs concatenated = 64), a T5 encoder of width 32, a VAE with a `shift_factor`, and a
FlowMatchEulerDiscreteScheduler with SD3's shift 3.0. The CLIP tokenizers are interop/tiny_sd.py's BPE over the
fixture's words; the T5 tokenizer is a Unigram model made here over the same words with the `tokenizers` library
(each word one piece; T5's special tokens: <pad> 0, </s> 1, <unk> 2, and </s> appended to every sequence), wrapped
as transformers' T5TokenizerFast. (Training a Unigram model on a few words with tokenizers' UnigramTrainer keeps
letters and short pieces only, so that the captions would not fit 16 tokens.) Weights are random (from `seed`)
unless the caller trains them.
"""

from __future__ import annotations

from pathlib import Path

# tiny_clip_with_projection lives in tiny_sd (the SDXL fixture uses it too); importable from here as before
from .tiny_sd import tiny_clip_with_projection, tiny_tokenizer  # noqa: F401

T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def tiny_t5_tokenizer(words, max_length: int = 16):
    """A T5TokenizerFast over a Unigram model made offline with `tokenizers`: every word of `words` is one piece
    (T5's "\u2581word"), letters, digits and punctuation (with and without the word start) the fallback for any other
    lower-case text, T5's special tokens <pad> 0, </s> 1, <unk> 2, and </s> appended to every sequence."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = string.ascii_lowercase + string.digits + string.punctuation
    pieces = [(t, 0.0) for t in T5_SPECIALS] + [("\u2581", -4.0)]
    known = sorted({w.lower() for w in words if w})
    pieces += [("\u2581" + w, -1.0) for w in known] + [(w, -2.0) for w in known]  # "t-shirt": "\u2581t", "-", "shirt"
    pieces += [(c, -10.0) for c in chars] + [("\u2581" + c, -9.0) for c in chars]
    seen, vocab = set(), []
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))
    tok = Tokenizer(models.Unigram(vocab, unk_id=T5_SPECIALS.index("<unk>")))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", T5_SPECIALS.index("</s>"))])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


def tiny_t5_encoder(vocab_size: int, d_model: int = 32, seed: int = 0):
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_sd3_transformer(sample_size: int = 8, latent_channels: int = 4, seed: int = 0, **extra):
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=sample_size, patch_size=1, in_channels=latent_channels,
                                 out_channels=latent_channels, num_layers=1, attention_head_dim=8,
                                 num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                 pooled_projection_dim=64, **extra)


def tiny_sd3_vae(image_channels: int = 1, channels=(8, 16), latent_channels: int = 4, sample_size: int = 16,
                 scaling_factor: float = 1.5035, shift_factor: float = 0.0609, seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(in_channels=image_channels, out_channels=image_channels, block_out_channels=tuple(channels),
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         latent_channels=latent_channels, norm_num_groups=min(channels) // 2, layers_per_block=1,
                         sample_size=sample_size, scaling_factor=scaling_factor, shift_factor=shift_factor,
                         use_quant_conv=False, use_post_quant_conv=False).eval()


def build_tiny_sd3_folder(out: str | Path, words=("a", "photo", "of", "shirt", "shoe", "bag"), *, seed: int = 0,
                          image_channels: int = 1, image_size: int = 16, shift: float = 3.0,
                          max_length: int = 16, transformer=None) -> Path:
    """A randomly initialised SD3-layout folder of test size (latents 4 x image_size/2 squared) that
    `StableDiffusion3Pipeline.from_pretrained` loads offline; `transformer`: use this one instead of a random one."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tokenizer = tiny_tokenizer(words, max_length)
    tokenizer_3 = tiny_t5_tokenizer(words, max_length)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer if transformer is not None else tiny_sd3_transformer(image_size // 2, seed=seed + 4),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=tiny_sd3_vae(image_channels, sample_size=image_size, seed=seed + 3),
        text_encoder=tiny_clip_with_projection(len(tokenizer), max_length, seed=seed + 1), tokenizer=tokenizer,
        text_encoder_2=tiny_clip_with_projection(len(tokenizer), max_length, seed=seed + 2), tokenizer_2=tokenizer,
        text_encoder_3=tiny_t5_encoder(len(tokenizer_3), seed=seed + 5), tokenizer_3=tokenizer_3)
    pipe.save_pretrained(out)
    return Path(out)


def tiny_flux_transformer(latent_channels: int = 1, guidance_embeds: bool = False, seed: int = 0):
    """diffusers' FluxPipeline test size: 1 + 1 layers, 2 heads of 16, joint dim 32, pooled 32."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=4 * latent_channels, out_channels=4 * latent_channels,
                                  num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                  guidance_embeds=guidance_embeds)


def build_tiny_flux_folder(out: str | Path, words=("a", "photo", "of", "shirt", "shoe", "bag"), *, seed: int = 0,
                           image_channels: int = 1, image_size: int = 16, max_length: int = 16,
                           guidance_embeds: bool = False) -> Path:
    """A randomly initialised FLUX-layout folder of test size (a CLIP text encoder for the pooled embedding, a T5
    for the hidden states, a VAE with a shift factor and 1 latent channel, 2x2-packed into 4; FLUX's dynamic shift);
    `guidance_embeds`: FLUX.1-dev's guidance input (else FLUX.1-schnell's layout)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from .tiny_sd import tiny_text_encoder

    tokenizer = tiny_tokenizer(words, max_length)
    tokenizer_2 = tiny_t5_tokenizer(words, max_length)
    pipe = FluxPipeline(
        transformer=tiny_flux_transformer(1, guidance_embeds, seed=seed + 4),
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
        vae=tiny_sd3_vae(image_channels, latent_channels=1, sample_size=image_size, seed=seed + 3),
        text_encoder=tiny_text_encoder(len(tokenizer), max_length, seed=seed + 1), tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(len(tokenizer_2), seed=seed + 5), tokenizer_2=tokenizer_2)
    pipe.save_pretrained(out)
    return Path(out)


def write_toy_captions(out: str | Path, num: int = 64, words=("a", "photo", "of", "shirt", "shoe", "bag"),
                       size: int = 20, seed: int = 0) -> Path:
    """`num` small grey images (a bright bar whose place depends on the caption) with captions, as a captioned
    folder: data for the runnable example, not for measuring anything."""
    import numpy as np

    from .tiny_sd import write_captioned_folder

    rng = np.random.default_rng(seed)
    things = list(words[3:]) or ["thing"]
    captions, images = [], rng.integers(0, 40, (num, size, size)).astype(np.uint8)
    for i in range(num):
        k = i % len(things)
        images[i, 3 + 4 * k : 7 + 4 * k, 4:16] += 200
        captions.append(f"a photo of a {things[k]}")
    return write_captioned_folder(out, images, captions)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m progdistill.interop.tiny_sd3",
                                     description="Write a tiny, randomly initialised SD3-layout folder (diffusers' "
                                                 "test sizes; StableDiffusion3Pipeline loads it offline), or with "
                                                 "--flux a FLUX-layout one (FluxPipeline), with --sdxl an SDXL-layout "
                                                 "one (StableDiffusionXLPipeline), and with --captions a "
                                                 "small captioned image folder to distil it on.")
    parser.add_argument("out", help="folder to write the SD3 pipeline into")
    parser.add_argument("--flux", action="store_true", help="a FLUX-layout folder (FLUX.1-schnell's layout)")
    parser.add_argument("--sdxl", action="store_true", help="an SDXL-layout folder (StableDiffusionXLPipeline: a "
                        "UNet2DConditionModel with added text and time conditions, two CLIP text encoders)")
    parser.add_argument("--flux-dev", action="store_true", help="a FLUX-layout folder with guidance_embeds "
                        "(FLUX.1-dev's layout: w is an input of the teacher)")
    parser.add_argument("--captions", metavar="DIR", help="also write captioned toy images here")
    parser.add_argument("--num", type=int, default=64, help="how many captioned images (default 64)")
    parser.add_argument("--max-length", type=int, default=16, help="the tokenizers' length (default 16)")
    a = parser.parse_args(argv)
    if a.sdxl:
        from .tiny_sd import build_tiny_sdxl_folder

        print(f"SDXL folder: {build_tiny_sdxl_folder(a.out, max_length=a.max_length)}")
    elif a.flux or a.flux_dev:
        print(f"FLUX folder: {build_tiny_flux_folder(a.out, max_length=a.max_length, guidance_embeds=a.flux_dev)}")
    else:
        print(f"SD3 folder: {build_tiny_sd3_folder(a.out, max_length=a.max_length)}")
    if a.captions:
        print(f"captioned images: {write_toy_captions(a.captions, a.num)}")


if __name__ == "__main__":
    main()
