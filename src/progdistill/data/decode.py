"""Reading one image file, and the error every data source raises. Below the folder cache and the data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data set is missing, incomplete or malformed; the message names the file or folder and how to fix it."""


def _load_square(path: Path, size: int, mode: str) -> np.ndarray:
    """One image centre-cropped to a square and resized to size x size, as uint8 [size, size, channels]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)  # first frame of animated files; converting forces a full decode
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            if side != size:
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}; delete or replace the file") from e
    return arr.reshape(size, size, -1)


SPLITS = ("train", "test")


def check_split(split: str) -> None:
    """Raise DataError unless split is 'train' or 'test'."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
