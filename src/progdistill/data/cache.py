"""A folder of images decoded once into a uint8 .npy file that every later run memory-maps.

Layout: CACHE/folders/KEY/ with KEY from the folder's absolute path, the image size and the channel count, holding
`images-TOKEN.npy` (uint8 [N, C, S, S], plain .npy, so `np.load(mmap_mode="r")` maps it) and `manifest.json`
(what the images were made from: the folder, size, channels, image count and a SHA-256 over every file's relative
path, byte size and mtime). The manifest is written last, atomically, and names its images file: a run sees either
the old complete cache or the new complete one. A manifest that does not match the folder listing (an image added,
removed, replaced or touched) or whose images file is missing or of the wrong length makes the cache rebuild.

Decoding runs in a process pool (PIL releases little of the GIL), chunk by chunk, in order, with a progress bar;
the main process streams each chunk to the file, so building never holds the whole data set in memory.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing
import os
import secrets
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .decode import DataError, _load_square
from tqdm.auto import tqdm

CACHE_VERSION = 1
CHUNK = 256  # images per task sent to a decoding worker


def cache_root() -> Path:
    """$PROGDISTILL_CACHE, else ~/.cache/progdistill."""
    base = os.environ.get("PROGDISTILL_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "progdistill"


def folder_cache_dir(root: Path, size: int, channels: int) -> Path:
    key = hashlib.sha256(f"{Path(root).resolve()}|{size}|{channels}".encode()).hexdigest()[:20]
    return cache_root() / "folders" / key


def listing_digest(root: Path, paths: Sequence[Path]) -> str:
    """SHA-256 over every image's relative path, size in bytes and modification time (ns)."""
    digest = hashlib.sha256()
    for p in paths:
        st = p.stat()
        digest.update(f"{p.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_chunk(task: tuple[list[str], int, int]) -> np.ndarray:
    """Worker: decode a chunk of paths to uint8 [k, C, S, S]."""

    names, size, channels = task
    mode = "RGB" if channels == 3 else "L"
    out = np.empty((len(names), channels, size, size), dtype=np.uint8)
    for i, name in enumerate(names):
        out[i] = _load_square(Path(name), size, mode).transpose(2, 0, 1)
    return out


def _bounded_imap(pool, tasks: list, in_flight: int):
    """pool.imap(_decode_chunk, tasks) in order, with at most `in_flight` chunks decoded ahead of the writer
    (pool.imap queues every result: a writer slowed down by a busy machine would let the decoded data pile up)."""
    pending: collections.deque = collections.deque()
    rest = iter(tasks)
    for task in itertools.islice(rest, in_flight):
        pending.append(pool.apply_async(_decode_chunk, (task,)))
    while pending:
        chunk = pending.popleft().get()
        task = next(rest, None)
        if task is not None:
            pending.append(pool.apply_async(_decode_chunk, (task,)))
        yield chunk


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _valid(directory: Path, manifest: dict, expect: dict) -> Path | None:
    """The images file the manifest names, if the manifest matches `expect` and the file is whole."""
    if any(manifest.get(k) != v for k, v in expect.items()):
        return None
    path = directory / str(manifest.get("images", ""))
    if path.parent != directory or not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    shape = (expect["count"], expect["channels"], expect["image_size"], expect["image_size"])
    return path if arr.dtype == np.uint8 and arr.shape == shape else None


def build(directory: Path, root: Path, paths: Sequence[Path], size: int, channels: int, expect: dict, *,
          workers: int | None = None, progress: bool = True) -> Path:
    """Decode `paths` into directory/images-TOKEN.npy and commit it with manifest.json; returns the images path."""

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the image cache folder {directory}: {e}; set PROGDISTILL_CACHE to a "
                        "writable folder") from e
    token = secrets.token_hex(6)
    final = directory / f"images-{token}.npy"
    tmp = directory / f".images-{token}.npy.part"
    names = [str(p) for p in paths]
    tasks = [(names[i : i + CHUNK], size, channels) for i in range(0, len(names), CHUNK)]
    workers = min(workers or default_workers(), len(tasks))
    bar = tqdm(total=len(names), desc=f"caching {root.name or root} ({size}x{size}x{channels})", unit="img",
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    pool = None
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.dtype(np.uint8).str, "fortran_order": False,
                    "shape": (len(names), channels, size, size)})
            if workers > 1:
                ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                  else None)
                pool = ctx.Pool(workers)
                chunks = _bounded_imap(pool, tasks, 2 * workers)
            else:
                chunks = map(_decode_chunk, tasks)
            for chunk in chunks:
                f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _atomic_write_text(directory / "manifest.json", json.dumps({**expect, "images": final.name}, indent=1))
    except OSError as e:
        raise DataError(f"cannot write the image cache in {directory}: {e}; free some space or set "
                        "PROGDISTILL_CACHE to another folder") from e
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
        tmp.unlink(missing_ok=True)
    for old in directory.glob("images-*.npy"):  # superseded caches (a run still mapping one keeps its inode)
        if old != final:
            old.unlink(missing_ok=True)
    return final


def cached_folder(root: Path, paths: Sequence[Path], size: int, channels: int, *, workers: int | None = None,
                  progress: bool = True, on_build: Callable[[], None] | None = None) -> np.ndarray:
    """The images of `paths` (under root) as a read-only memory-mapped uint8 [N, C, S, S] array, decoded into the
    cache first when the cache is missing or no longer matches the folder."""
    root = Path(root).resolve()
    directory = folder_cache_dir(root, size, channels)
    expect = {"version": CACHE_VERSION, "root": str(root), "image_size": size, "channels": channels,
              "count": len(paths), "listing_sha256": listing_digest(root, paths)}
    path = None
    try:
        path = _valid(directory, json.loads((directory / "manifest.json").read_text()), expect)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    if path is None:
        if on_build is not None:
            on_build()
        path = build(directory, root, paths, size, channels, expect, workers=workers, progress=progress)
    return np.load(path, mmap_mode="r")
