"""Your own captioned images for a latent text-to-image model: a folder with `metadata.jsonl` (one JSON object per
line with `file_name` and a caption column, `text` by default: the layout diffusers' text-to-image examples and
datasets' imagefolder read), encoded once into a memory-mapped cache.

Layout: CACHE/latents/KEY/ with KEY from the image cache's listing, the VAE's and text encoder's content hashes,
the image size and the latent mode, holding `latents.npy` (float32 [N, c, h, w], scaled as the pipeline scales
them: the latent distribution's mean by default, or one sample per image from data.seed), `text.npy` (float32
[U, L, D]: the text encoder's hidden states of the U distinct captions, the empty caption "" first; for a layout whose
condition is a mapping, as SD3's, one file per key instead: `text.encoder_hidden_states.npy`,
`text.pooled_projections.npy`; SDXL's also `time_ids.npy`, float32 [N, 6], per image: `sdxl_time_ids`),
`caption_index.npy` (int32 [N]: each image's row of text.npy), `ids.npy` (int32 [N, L]: the tokenised captions) and
`manifest.json`, written last. Images are decoded through the folder cache (cache.py) and encoded a chunk at a time,
so memory stays flat in the data set's size. Caching the hidden states rather than re-encoding captions every step
saves one text-encoder pass per training example; storing them once per distinct caption keeps templated or
repeated captions small (docs/latent.md has the measured sizes).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .batches import ExampleData
from .cache import _atomic_write_text, cache_root, cached_folder, listing_digest
from .components import Components, load_components
from .decode import DataError

LATENT_CACHE_VERSION = 1
ENCODE_CHUNK = 32
LATENT_MODES = ("mean", "sample")


def read_metadata(root: Path, column: str = "text") -> tuple[list[Path], list[str]]:
    """(image paths, captions) of a captioned folder, in the order of its metadata.jsonl."""
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise DataError(f"{root} has no metadata.jsonl: a captioned folder holds images and a metadata.jsonl with "
                        f'one line per image, e.g. {{"file_name": "0001.png", "{column}": "a photo of a cat"}}')
    paths, captions = [], []
    for n, line in enumerate(meta.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{meta} line {n} is not valid JSON ({e})") from None
        if not isinstance(row, dict) or "file_name" not in row or column not in row:
            raise DataError(f"{meta} line {n} needs \"file_name\" and the caption column \"{column}\" "
                            f"(data.caption_column), got {line[:120]!r}")
        caption = row[column]
        if not isinstance(caption, str):
            raise DataError(f"{meta} line {n}: the caption must be a string, got {caption!r}")
        path = root / str(row["file_name"])
        if not path.is_file():
            raise DataError(f"{meta} line {n} names {row['file_name']!r}, which is not in {root}")
        paths.append(path)
        captions.append(caption)
    if not paths:
        raise DataError(f"{meta} lists no images")
    return paths, captions


class CaptionedLatents(ExampleData):
    """Cached latents (float, memory-mapped) with each one's caption as text-encoder hidden states (or a mapping of
    named condition tensors: `text` a dict of arrays), as the batch stream's (x, labels). Never flipped (a flipped
    latent is not the latent of the flipped image)."""

    def __init__(self, latents: np.ndarray, text: np.ndarray | dict[str, np.ndarray], caption_index: np.ndarray,
                 per_image: dict[str, np.ndarray] | None = None):
        self.images, self.text, self.caption_index = latents, text, np.asarray(caption_index)
        self.per_image = dict(per_image or {})  # condition tensors of each image (SDXL's time_ids), beside `text`
        if len(self.caption_index) != len(latents):
            raise ValueError(f"{len(latents)} latents but {len(self.caption_index)} caption indices")
        if self.per_image and not isinstance(text, dict):
            raise ValueError("per-image condition tensors go with a mapping condition (text as a dict of arrays)")
        self.flip = False

    @property
    def is_uint8(self) -> bool:
        return False

    @property
    def labels(self) -> Tensor:
        """Each example's caption (its row of the distinct captions' hidden states)."""
        return torch.from_numpy(self.caption_index.astype(np.int64))

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def x(self) -> Tensor:
        return torch.from_numpy(np.array(self.images, dtype=np.float32))

    def subset(self, limit: int, keep_labels: bool = True) -> "CaptionedLatents":
        n = limit if 0 < limit < len(self) else len(self)
        return CaptionedLatents(self.images[:n], self.text, self.caption_index[:n],
                                {k: v[:n] for k, v in self.per_image.items()})

    def __getitems__(self, keys: Sequence) -> tuple[Tensor, Tensor | dict[str, Tensor]]:
        idx = np.fromiter((k[0] for k in keys), dtype=np.int64, count=len(keys))
        order = np.argsort(idx, kind="stable")
        x = np.empty((len(idx), *self.images.shape[1:]), dtype=np.float32)
        x[order] = self.images[idx[order]]
        rows = self.caption_index[idx]
        if isinstance(self.text, dict):
            cond = {k: torch.from_numpy(np.asarray(v[rows], dtype=np.float32)) for k, v in self.text.items()}
            for k, v in self.per_image.items():
                cond[k] = torch.from_numpy(np.asarray(v[idx], dtype=np.float32))
            return torch.from_numpy(x), cond
        return torch.from_numpy(x), torch.from_numpy(np.asarray(self.text[rows], dtype=np.float32))


class _NpyFile:
    """A .npy file of `shape` written chunk by chunk (arrays along the first axis), synced on close."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.dtype = dtype
        self.f = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                      "shape": tuple(shape)})

    def write(self, chunk) -> None:
        self.f.write(memoryview(np.ascontiguousarray(chunk, dtype=self.dtype)).cast("B"))

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _write_npy(path: Path, chunks, shape: tuple[int, ...], dtype, bar) -> None:
    """Stream `chunks` (arrays along the first axis) into a .npy file of `shape`."""
    out = _NpyFile(path, shape, dtype)
    try:
        for chunk in chunks:
            out.write(chunk)
            bar.update(len(chunk))
    finally:
        out.close()


def _encode(components: Components, images: np.ndarray, captions: list[str], directory: Path, mode: str,
            seed: int, progress: bool) -> dict:
    """Write the latent, text and token files into `directory`; returns their names and shapes."""
    distinct = [""] + sorted(set(captions) - {""})
    row = {c: i for i, c in enumerate(distinct)}
    n = len(images)
    probe = components.encode_images(torch.zeros(1, *images.shape[1:]))
    ids = components.tokenize(captions[:1])
    files = {}
    with tqdm(total=n, desc="encoding images (VAE)", unit="img", disable=not progress, file=sys.stderr) as bar:
        def latent_chunks():
            for k, start in enumerate(range(0, n, ENCODE_CHUNK)):
                x = torch.from_numpy(np.array(images[start : start + ENCODE_CHUNK], dtype=np.float32)) / 127.5 - 1
                gen = torch.Generator().manual_seed(seed * 1_000_003 + k) if mode == "sample" else None
                yield components.encode_images(x, sample=mode == "sample", generator=gen).numpy()
        _write_npy(directory / "latents.npy", latent_chunks(), (n, *probe.shape[1:]), np.float32, bar)
    with tqdm(total=len(distinct), desc="encoding captions (text encoder)", unit="caption", disable=not progress,
              file=sys.stderr) as bar:
        probe_text = components.encode_prompts([""])
        if isinstance(probe_text, dict):  # a mapping condition: one file per key, one pass of the encoders
            outs = {key: _NpyFile(directory / f"text.{key}.npy", (len(distinct), *v.shape[1:]), np.float32)
                    for key, v in probe_text.items()}
            try:
                for s in range(0, len(distinct), 64):
                    encoded = components.encode_prompts(distinct[s : s + 64])
                    for key, out in outs.items():
                        out.write(encoded[key].numpy())
                    bar.update(len(distinct[s : s + 64]))
            finally:
                for out in outs.values():
                    out.close()
            files["text_keys"] = list(probe_text)
            probe_text = probe_text[next(iter(probe_text))]
        else:
            chunks = (components.encode_prompts(distinct[s : s + 64]).numpy() for s in range(0, len(distinct), 64))
            _write_npy(directory / "text.npy", chunks, (len(distinct), *probe_text.shape[1:]), np.float32, bar)
    np.save(directory / "caption_index.npy", np.fromiter((row[c] for c in captions), dtype=np.int32, count=n))
    np.save(directory / "ids.npy", np.concatenate([components.tokenize(captions[s : s + 256]).numpy().astype(np.int32)
                                                   for s in range(0, n, 256)]).reshape(n, ids.shape[1]))
    files.update(latents=[n, *probe.shape[1:]], text=[len(distinct), *probe_text.shape[1:]])
    return files


def sdxl_time_ids(paths: Sequence[Path], size: int) -> np.ndarray:
    """SDXL's added time ids of each image as the cache prepares it (float32 [N, 6]): its original size (h, w), the
    top-left corner of its centre crop in the resized image (top, left; cropping the centre square and resizing it
    to `size` is resizing the short side to `size` and cropping there), and the target size (size, size)."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(paths), 6), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {path}: {e}; delete or replace the file") from e
        side = min(w, h)
        scale = size / side
        out[i] = (h, w, round((h - side) // 2 * scale), round((w - side) // 2 * scale), size, size)
    return out


def _cached(directory: Path, expect: dict) -> dict | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if any(manifest.get(k) != v for k, v in expect.items()):
        return None
    keys = manifest.get("files", {}).get("text_keys")
    text = [f"text.{k}.npy" for k in keys] if keys else ["text.npy"]
    per_image = [f"{k}.npy" for k in manifest.get("files", {}).get("per_image", [])]
    names = ("latents.npy", *text, *per_image, "caption_index.npy", "ids.npy")
    return manifest if all((directory / name).is_file() for name in names) else None


def load_captioned_latents(root: str | Path, components: dict, *, image_size: int, channels: int,
                           column: str = "text", mode: str = "mean", seed: int = 0, workers: int | None = None,
                           progress: bool = True) -> CaptionedLatents:
    """The captioned folder `root` as cached latents and caption hidden states of the latent model whose
    `components` block (data/components.py) names its VAE, tokenizer and text encoder."""
    if mode not in LATENT_MODES:
        raise DataError(f"data.latents must be one of {', '.join(LATENT_MODES)}, got {mode!r}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"captioned image folder {root} does not exist; pass a folder of images with a "
                        "metadata.jsonl (data.root, or --captions)")
    paths, captions = read_metadata(root, column)
    expect = {"version": LATENT_CACHE_VERSION, "root": str(root), "listing_sha256": listing_digest(root, paths),
              "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
              "vae": components["vae"]["sha256"], "text_encoder": components["text_encoder"]["sha256"],
              "tokenizer": components["tokenizer"]["sha256"], "image_size": image_size, "channels": channels,
              "mode": mode, "seed": seed if mode == "sample" else None, "count": len(paths)}
    if components.get("layout", "sd") != "sd":  # the other layouts' extra components (SD 1.x keys as before)
        expect |= {"layout": components["layout"], "shift_factor": components["shift_factor"],
                   "max_sequence_length": components["max_sequence_length"],
                   **{name: components[name]["sha256"] for name in ("text_encoder_2", "text_encoder_3", "tokenizer_2",
                                                                    "tokenizer_3") if name in components}}
    key = hashlib.sha256(json.dumps(expect, sort_keys=True).encode()).hexdigest()[:20]
    directory = cache_root() / "latents" / key
    manifest = _cached(directory, expect)
    if manifest is None:
        images = cached_folder(root, paths, image_size, channels, workers=workers, progress=progress)
        loaded = load_components(components)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            files = _encode(loaded, images, captions, directory, mode, seed, progress)
            if loaded.layout == "sdxl":
                np.save(directory / "time_ids.npy", sdxl_time_ids(paths, image_size))
                files["per_image"] = ["time_ids"]
        except OSError as e:
            raise DataError(f"cannot write the latent cache in {directory}: {e}; free some space or set "
                            "PROGDISTILL_CACHE to another folder") from e
        manifest = expect | {"files": files}
        _atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))
    latents = np.load(directory / "latents.npy", mmap_mode="r")
    keys = manifest["files"].get("text_keys")
    text = ({k: np.load(directory / f"text.{k}.npy", mmap_mode="r") for k in keys} if keys
            else np.load(directory / "text.npy", mmap_mode="r"))
    per_image = {k: np.load(directory / f"{k}.npy") for k in manifest["files"].get("per_image", [])}
    return CaptionedLatents(latents, text, np.load(directory / "caption_index.npy"), per_image)


def cache_directory_of(data: CaptionedLatents) -> Path | None:
    """The cache folder a loaded data set maps (None for in-memory data)."""
    filename = getattr(data.images, "filename", None)
    return Path(filename).parent if filename else None
