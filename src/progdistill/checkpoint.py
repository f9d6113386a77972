"""Checkpoints: weights as safetensors beside a JSON record of what they are and how they were made, each written
atomically. The record's format is described in docs/checkpoints.md."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "progdistill-checkpoint"
# 1: the network is rebuilt from the training config (+ the U-Net presets); records have no "format_version".
# 2: the record's "model" block describes the network (kind, resolved arguments, parameterization, schedule, data
#    shape, classes) and its "sampling" block the sampler defaults; the config is provenance only.
FORMAT_VERSION = 2
# A distilled student's "budget" record field: what its distillation spent, cumulative from the teacher
# (training/methods.py writes it, evaluation/methods.py reports it).
BUDGET_KEYS = ("student_updates", "images_seen", "teacher_evals", "self_evals")
STUDENT_FE_PER_IMAGE = 3  # a regression method's student: one forward and one backward per training image


def forward_equivalent(budget: dict) -> int:
    """Forward-equivalent evaluations of a recorded budget (a backward counted as two; training/counting.py):
    counted ones where a players phase recorded them, else (regression methods only) teacher and self-teacher
    evaluations plus the student's forward and backward per training image."""
    if "forward_equivalent" in budget:
        return int(budget["forward_equivalent"])
    return (int(budget["teacher_evals"]) + int(budget["self_evals"])
            + STUDENT_FE_PER_IMAGE * int(budget["images_seen"]))


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not what the caller needs."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFullError(CheckpointError):
    """A checkpoint file could not be written for lack of space; earlier files are intact and its temporary file is
    removed. The phase that writes it adds the command that continues the run (training/phase.py)."""


def _no_space(error: BaseException) -> bool:
    """Whether `error` says the disk is full: OSError ENOSPC, or safetensors' serialisation error wrapping it."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, SafetensorError) and ("code: 28" in str(error) or "No space left" in str(error))


def _atomic_write(path: Path, write, size: int | None = None) -> None:
    """write(tmp_path) then rename over path, so a crash leaves the old file intact. `size`: the bytes it needs
    (for the message when the disk fills)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _no_space(error):
            free = shutil.disk_usage(path.parent).free
            need = f"about {size / 2**20:.1f} MiB needed, " if size is not None else ""
            raise DiskFullError(f"no space left on the device writing {path} ({need}{free / 2**20:.1f} MiB free "
                                "there); nothing saved earlier was lost") from None
        raise


def checkpoint_paths(stem: str | Path) -> tuple[Path, Path]:
    """(weights, record) of the checkpoint `stem` (a path without suffix; a given suffix is dropped)."""
    stem = Path(stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_checkpoint(stem: str | Path, modules: dict[str, torch.nn.Module], record: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the modules' state dicts (keys prefixed "name.") plus `extra_tensors` (e.g. optimizer state) and the
    record; the record goes last, so a new checkpoint is only visible once complete. A model checkpoint's record
    holds the entries of `build.model_record` and "sampling_weights" (the module to sample with)."""
    weights_path, record_path = checkpoint_paths(stem)
    tensors = dict(extra_tensors or {})
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    # The same random token goes into the weights' metadata and the record: a crash between the two renames
    # (new weights, old record) is detected on load instead of silently pairing mismatched files.
    token = uuid.uuid4().hex
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    _atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata={"token": token}), size)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "modules": sorted(modules), **record, "token": token}

    def write_record(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(full, indent=2, sort_keys=True))

    _atomic_write(record_path, write_record)
    return weights_path.with_suffix("")


def read_record(stem: str | Path) -> dict[str, Any]:
    """The JSON record of a checkpoint, checked to be one of ours."""
    _, record_path = checkpoint_paths(stem)
    if not record_path.is_file():
        raise CheckpointError(f"no checkpoint record at {record_path} (expected NAME.json beside NAME.safetensors)")
    try:
        record = json.loads(record_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint record {record_path} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{record_path} is not a progdistill checkpoint record")
    version = record.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint record {record_path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint record {record_path} has format version {version}, newer than this "
                              f"progdistill reads (up to {FORMAT_VERSION}): upgrade progdistill "
                              "(pip install -U progdistill) to load it")
    return record


def load_tensors(stem: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of checkpoint `stem`, after checking the weights belong to its record."""
    weights_path, record_path = checkpoint_paths(stem)
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint weights {weights_path} do not exist")
    try:
        with safe_open(weights_path, "pt") as f:
            token = (f.metadata() or {}).get("token")
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights {weights_path} are corrupt or truncated ({e})") from None
    expected = read_record(stem).get("token") if record_path.is_file() else None
    if expected is not None and token != expected:
        raise CheckpointError(f"checkpoint weights {weights_path} do not belong to the record {record_path} "
                              "(a write was interrupted between the two files); use an earlier checkpoint")
    return tensors


def load_state(stem: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The state dict saved under module `name` in checkpoint `stem`."""
    weights_path, _ = checkpoint_paths(stem)
    tensors = load_tensors(stem)
    prefix = f"{name}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"checkpoint {weights_path} holds no weights for {name!r}")
    return state


def load_into(module: torch.nn.Module, stem: str | Path, name: str) -> None:
    """Load module `name` of checkpoint `stem` into `module`, refusing weights made for another network."""
    state = load_state(stem, name)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {checkpoint_paths(stem)[0]} does not fit this network ({first}); "
            "was it made with another model config?"
        ) from None


def prune(directory: Path, pattern: str, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints matching `pattern` (sorted by name) in `directory`."""
    stems = sorted({p.with_suffix("") for p in directory.glob(pattern + ".json")})
    for stem in stems[:-keep] if keep > 0 else []:
        for path in checkpoint_paths(stem):
            path.unlink(missing_ok=True)
