"""What a checkpoint needs beyond weights so a run continues exactly: optimizer state, the objective's RNG state,
the EMA's average count and the loss history. Tensors go into the checkpoint's safetensors file (no pickle
anywhere), everything else into its JSON record."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from ..denoiser import Denoiser
from ..checkpoint import CheckpointError, checkpoint_paths, load_tensors, read_record

OPTIM, RNG, TORCH_RNG = "optim.state", "rng.objective", "rng.torch"


def loop_tensors(snapshot: dict, ema: AveragedModel | None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, record fields) for a loop snapshot from `fit`."""
    opt = snapshot["optimizer"]
    tensors = {f"{OPTIM}.{pid}.{key}": value.detach().cpu().contiguous()
               for pid, entry in opt["state"].items() for key, value in entry.items() if torch.is_tensor(value)}
    tensors[RNG] = snapshot["generator"].cpu()
    tensors[TORCH_RNG] = snapshot["torch_rng"].cpu()
    extra = {
        "optimizer_param_groups": opt["param_groups"],
        "history": [list(h) for h in snapshot["history"]],
        "running_loss": snapshot["running"],
        "ema_n_averaged": int(ema.n_averaged.item()) if ema is not None else None,
        "data_state": snapshot.get("data"),  # the data order's position (sampler state), see data/batches.py
    }
    return tensors, extra


def restore_loop_state(stem: Path, denoiser: Denoiser, ema: AveragedModel | None) -> dict:
    """Load the raw and EMA weights of checkpoint `stem` into denoiser/ema and return `fit`'s resume dict."""
    record = read_record(stem)
    tensors = load_tensors(stem)
    try:
        groups = record["optimizer_param_groups"]
        step = int(record["step"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{checkpoint_paths(stem)[1]} has no optimizer state: it cannot be resumed "
                              "(only periodic checkpoints can)") from None
    _load_module(denoiser, tensors, "model", stem)
    if ema is not None:
        if "ema" not in record.get("modules", []) or record.get("ema_n_averaged") is None:
            raise CheckpointError(f"{checkpoint_paths(stem)[1]} holds no EMA state, but the config uses EMA")
        _load_module(ema.module, tensors, "ema", stem)
        ema.n_averaged.fill_(int(record["ema_n_averaged"]))
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM + "."):
            pid, name = key[len(OPTIM) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    if RNG not in tensors or TORCH_RNG not in tensors:
        raise CheckpointError(f"{checkpoint_paths(stem)[0]} has no RNG state: it cannot be resumed exactly")
    return {"step": step, "optimizer": {"state": state, "param_groups": groups}, "generator": tensors[RNG],
            "torch_rng": tensors[TORCH_RNG],
            "history": record.get("history", []), "running": record.get("running_loss"),
            "data": record.get("data_state")}


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str, stem: Path) -> None:
    prefix = name + "."
    sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {checkpoint_paths(stem)[0]} does not fit this network "
                              f"({str(e).splitlines()[0]})") from None


def latest_loadable(directory: Path, pattern: str) -> Path | None:
    """The newest checkpoint matching `pattern` whose record and weights both load; damaged ones are reported
    on stderr and skipped (never deleted)."""
    stems = sorted({p.with_suffix("") for p in Path(directory).glob(pattern + ".json")}, reverse=True)
    for stem in stems:
        try:
            read_record(stem)
            load_tensors(stem)
            return stem
        except CheckpointError as e:
            print(f"progdistill: skipping damaged checkpoint: {e}", file=sys.stderr)
    return None
