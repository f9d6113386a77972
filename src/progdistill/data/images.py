"""Image data sets (Fashion-MNIST, CIFAR-10, a folder of images) as ExampleData holding uint8 images [N, C, H, W]:
Fashion-MNIST and CIFAR-10 in memory (47 MB and 150 MB), folders memory-mapped from a one-time decoded cache
(`cache.py`). Batches are scaled to [-1, 1] as they are drawn."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .batches import ExampleData
from .cifar10 import CIFAR10_URL, load_cifar10
from .cache import cached_folder
from .decode import SPLITS, DataError, check_split  # noqa: F401 (SPLITS: part of this module's API)



# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------------------------

FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the DECOMPRESSED IDX files (distributors recompress the .gz, so hashes of the .gz themselves differ).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
NUM_CLASSES = 10
_CHUNK = 1 << 20



def default_cache_dir() -> Path:
    """Where downloads go: $PROGDISTILL_CACHE/fashion-mnist, else ~/.cache/progdistill/fashion-mnist."""
    base = os.environ.get("PROGDISTILL_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "progdistill") / "fashion-mnist"


def _find_idx(folder: Path, name: str) -> Path | None:
    """The plain or gzipped IDX file `name` in folder (plain preferred), or None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_idx(folder: Path, split: str) -> list[str]:
    """Names of the split's IDX files that are in neither plain nor gzipped form in folder."""
    return [name for name in FASHION_MNIST_FILES[split] if _find_idx(folder, name) is None]


def _read_maybe_gzip(path: Path) -> bytes:
    """The bytes of path, decompressed when it ends in .gz; a corrupt or unreadable file raises DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}; the file is truncated or corrupt, delete it and reinstall or "
                        "download it again") from e


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """A uint8 IDX file (plain or .gz) as an array with the header's dims; validates magic and byte length."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    fix = "the file is truncated or corrupt, delete it and reinstall or download it again"
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes); {fix}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path} has IDX magic number {found}, expected {magic}; it is not the right IDX file ({fix})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} ends inside its IDX header ({len(data)} bytes); {fix}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DataError(f"{path} holds {len(data)} bytes but its header dims {dims} need {expected}; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(images_path: Path, labels_path: Path) -> ExampleData:
    """Fashion-MNIST images and labels from two IDX files, validated against each other."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds images of {images.shape[1]}x{images.shape[2]} pixels, expected 28x28 "
                        "for Fashion-MNIST")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} "
                        "labels; the files belong to different splits or one is damaged")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{labels_path} holds label {int(labels.max())}, Fashion-MNIST has {NUM_CLASSES} classes")
    return ExampleData(images[:, None], labels.astype(np.int64))


def _sha256_decompressed(path: Path) -> str:
    """SHA-256 of the decompressed contents of a .gz file."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download_one(url: str, target: Path, expected_sha256: str) -> None:
    """Fetch url to target via a temp file in the same folder; verify the decompressed SHA-256, then rename."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out, _CHUNK)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise DataError(f"downloading {url} failed: {e}; check the network, or install Debian's "
                            f"dataset-fashion-mnist package, or put the IDX files in a folder and pass it") from e
        try:
            found = _sha256_decompressed(tmp)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"the download of {url} is not a valid gzip file ({e}); it was deleted, try again or "
                            "use another --base-url / mirror") from e
        if found != expected_sha256:
            raise DataError(f"the download of {url} has SHA-256 {found} (decompressed), expected {expected_sha256}; "
                            "it was deleted, the server holds different data: try again or use another mirror")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_fashion_mnist(target: str | Path, base_url: str = FASHION_MNIST_URL) -> Path:
    """Download the four Fashion-MNIST .gz files missing from target (created if needed), checksum-verified."""
    target = Path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {target}: {e}; set PROGDISTILL_CACHE to a writable "
                        "folder") from e
    for names in FASHION_MNIST_FILES.values():
        for name in names:
            if _find_idx(target, name) is None:
                url = f"{base_url.rstrip('/')}/{name}.gz"
                _download_one(url, target / f"{name}.gz", FASHION_MNIST_SHA256[name])
    return target


def load_fashion_mnist(
    root: str | Path | None = None,
    split: str = "train",
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
    base_url: str = FASHION_MNIST_URL,
) -> ExampleData:
    """Fashion-MNIST `split` as uint8 images [N, 1, 28, 28] and int64 labels [N].

    With root None it looks in FASHION_MNIST_DEFAULT, then the cache dir (cache_dir, else default_cache_dir());
    with a root it looks only there. If nothing is found and download is True, the files are fetched from
    base_url into the cache dir (or into root when one is given).
    """
    check_split(split)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    places = [Path(root).expanduser()] if root is not None else [FASHION_MNIST_DEFAULT, cache]
    for folder in places:
        if not _missing_idx(folder, split):
            images_name, labels_name = FASHION_MNIST_FILES[split]
            return _load_idx_pair(_find_idx(folder, images_name), _find_idx(folder, labels_name))  # type: ignore[arg-type]
    if download:
        target = download_fashion_mnist(places[0] if root is not None else cache, base_url)
        images_name, labels_name = FASHION_MNIST_FILES[split]
        return _load_idx_pair(_find_idx(target, images_name), _find_idx(target, labels_name))  # type: ignore[arg-type]
    looked = "\n".join(
        f"  {folder}: " + ("folder does not exist" if not folder.is_dir() else "missing " + ", ".join(
            f"{n}(.gz)" for n in _missing_idx(folder, split)))
        for folder in places
    )
    raise DataError(
        f"Fashion-MNIST ({split} split) not found. Looked in:\n{looked}\n"
        "Fix: install Debian's `dataset-fashion-mnist` package (apt install dataset-fashion-mnist), "
        "pass a folder holding the IDX files, or allow download (`--download`)."
    )


# ----------------------------------------------------------------------------------------------------------------
# A folder of images
# ----------------------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def list_images(root: Path) -> list[Path]:
    """Every image file under root (recursively, by extension, hidden files skipped), sorted by path."""
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def load_image_folder(root: str | Path, size: int, *, channels: int = 3, workers: int | None = None,
                      progress: bool = True) -> ExampleData:
    """All images under root, centre-cropped and resized: uint8 images [N, channels, size, size], memory-mapped
    from the folder's cache (decoded once in parallel, rebuilt when the folder listing, a file's size or mtime,
    the size or the channel count changes; see cache.py). channels 1 reads the images as grayscale.

    If every image sits inside a subfolder of root, labels are the index of its top-level subfolder in sorted
    order (class folders); otherwise labels are None.
    """

    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), not {channels!r}")
    if not isinstance(size, int) or size < 1:
        raise DataError(f"image size must be a positive integer, not {size!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder; pass a folder of images")
    paths = list_images(root)
    if not paths:
        raise DataError(f"image folder {root} holds no images (looked recursively for "
                        f"{', '.join(IMAGE_EXTENSIONS)}); pass a folder of images")
    x = cached_folder(root, paths, size, channels, workers=workers, progress=progress)
    tops = [p.relative_to(root).parts for p in paths]
    labels = None
    if all(len(parts) > 1 for parts in tops):
        classes = sorted({parts[0] for parts in tops})
        index = {c: i for i, c in enumerate(classes)}
        labels = np.fromiter((index[parts[0]] for parts in tops), dtype=np.int64, count=len(tops))
    return ExampleData(x, labels)


# ----------------------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------------------

IMAGE_DATASETS = ("fashion-mnist", "cifar10", "folder")
_NATIVE_SIZE = {"fashion-mnist": 28, "cifar10": 32}
_NATIVE_CHANNELS = {"fashion-mnist": 1, "cifar10": 3}


def load_image_dataset(
    name: str,
    root: str | None,
    *,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    progress: bool = True,
) -> ExampleData:
    """The image data set `name` ('fashion-mnist', 'cifar10' or 'folder') as ExampleData of uint8 images.
    `channels` (None: native, RGB for folders) must match Fashion-MNIST's 1 and CIFAR-10's 3."""
    if name not in IMAGE_DATASETS:
        raise DataError(f"unknown image data set {name!r}: choose one of {', '.join(IMAGE_DATASETS)}")
    check_split(split)
    if name in _NATIVE_SIZE and image_size is not None and image_size != _NATIVE_SIZE[name]:
        raise DataError(f"{name} images are {_NATIVE_SIZE[name]}x{_NATIVE_SIZE[name]}; image_size {image_size} is "
                        f"not supported (leave it unset or set it to {_NATIVE_SIZE[name]})")
    if name in _NATIVE_CHANNELS and channels is not None and channels != _NATIVE_CHANNELS[name]:
        raise DataError(f"{name} images have {_NATIVE_CHANNELS[name]} channel(s); channels {channels} is only for "
                        f"folders (leave data.channels unset or set it to {_NATIVE_CHANNELS[name]})")
    if name == "fashion-mnist":
        return load_fashion_mnist(root, split, download=download)
    if name == "cifar10":
        if root is None:
            raise DataError(f"cifar10 needs a root folder (automatic download is not supported): download "
                            f"{CIFAR10_URL}, extract it and pass the folder")
        return load_cifar10(root, split)
    if root is None or image_size is None:
        raise DataError("the 'folder' data set needs both a root folder of images and an image_size")
    if split != "train":
        raise DataError(f"the 'folder' data set has no {split!r} split: it only provides training images")
    return load_image_folder(root, image_size, channels=channels or 3, progress=progress)
