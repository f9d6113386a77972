"""CIFAR-10 from its python batches, read with a restricted unpickler (numpy arrays and plain values only)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .batches import ExampleData
from .decode import DataError, check_split

NUM_CLASSES = 10

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _numpy_global(module: str, name: str) -> Any:
    """numpy internals needed to rebuild arrays, from numpy._core (numpy 2) or numpy.core (numpy 1)."""
    import importlib

    for mod in (f"numpy._core.{module}", f"numpy.core.{module}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")  # pragma: no cover


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as used by protocol-2 pickles of bytes, restricted to latin-1."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 pickle may reference: plain containers and numpy array reconstruction."""
    allowed: dict[tuple[str, str], Any] = {}
    for builtins_module in ("builtins", "__builtin__"):
        for obj in (dict, list, tuple, set, frozenset, bytes, bytearray, str, int, float, bool):
            allowed[(builtins_module, obj.__name__)] = obj
    allowed[("_codecs", "encode")] = _latin1_encode
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _numpy_global("multiarray", "_reconstruct")
        allowed[(f"{core}.multiarray", "scalar")] = _numpy_global("multiarray", "scalar")
        allowed[(f"{core}.numeric", "_frombuffer")] = _numpy_global("numeric", "_frombuffer")
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside _safe_globals(), so a malicious file cannot run code."""

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch") from None


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch as (uint8 [N, 3072], int64 [N]); a bad or unsafe file raises DataError."""
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as e:
        raise DataError(f"cannot unpickle CIFAR-10 batch {path}: {e}; the file is corrupt, not a CIFAR-10 batch or "
                        f"unsafe; re-extract it from {CIFAR10_URL}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a CIFAR-10 batch dict; re-extract it")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} lacks the 'data' or 'labels' entry of a CIFAR-10 batch; re-extract it")
    data = np.asarray(data)
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} holds labels that are not integers; re-extract it") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} holds data of dtype {data.dtype} and shape {data.shape}, expected uint8 [N, 3072]; "
                        "re-extract it")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path} holds {data.shape[0]} images but labels of shape {labels.shape}; re-extract it")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path} holds labels outside 0..{NUM_CLASSES - 1}; re-extract it")
    return data, labels


def load_cifar10(root: str | Path, split: str = "train") -> ExampleData:
    """CIFAR-10 `split` from the python batches in root or root/cifar-10-batches-py: uint8 images [N, 3, 32, 32]."""
    check_split(split)
    root = Path(root).expanduser()
    names = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    places = [root, root / "cifar-10-batches-py"]
    for folder in places:
        if all((folder / n).is_file() for n in names):
            break
    else:
        looked = "\n".join(f"  {folder}: missing " + ", ".join(n for n in names if not (folder / n).is_file())
                           for folder in places)
        raise DataError(f"CIFAR-10 ({split} split) not found. Looked in:\n{looked}\n"
                        f"Fix: download {CIFAR10_URL}, extract it and pass the folder holding cifar-10-batches-py.")
    parts = [_load_cifar_batch(folder / n) for n in names]
    data = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([lab for _, lab in parts])
    return ExampleData(data, labels)
