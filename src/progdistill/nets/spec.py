"""A network described by what builds it: its kind and resolved constructor arguments, with the parameterization,
schedule, data shape and classes it was trained for. Checkpoint records store this (their "model" block), so a
network is rebuilt from the record alone, never from a preset or the training config (docs/checkpoints.md).

Kinds: "mlp" (MLPNet's arguments), "unet" (the paper's U-Net: the full diffusers UNet2DModel config, conditioned
on 1000 x the noise level) and "diffusers" (an imported UNet2DModel config, conditioned on its own timesteps of
the discrete schedule). Arguments a record lacks take the constructor's defaults, so a constructor may gain
arguments whose defaults keep the old behaviour; an argument the installed code does not know is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from .args import SpecError, _jsonable, resolve_args  # noqa: F401 (re-exported)

NET_KINDS = ("mlp", "unet", "diffusers")


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # mlp, unet or diffusers
    args: dict = field(hash=False)  # the network's resolved constructor arguments (JSON values)
    parameterization: str  # eps, x, v or both
    schedule: dict = field(hash=False)  # {"name": ..., parameters} for diffusion.schedules.make_schedule
    data_shape: tuple[int, ...]  # one example, without the batch dimension
    num_classes: int = 0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "args": _jsonable(self.args), "parameterization": self.parameterization,
                "schedule": _jsonable(self.schedule), "data_shape": list(self.data_shape),
                "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, data: Any) -> "ModelSpec":
        """Check a record's model block: every field present and of the right type (SpecError names the field)."""
        if not isinstance(data, dict):
            raise SpecError(f"the model block must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("kind", "args", "parameterization", "schedule", "data_shape") if k not in data]
        if missing:
            raise SpecError(f"the model block lacks {', '.join(missing)}")
        kind, args, schedule, shape = data["kind"], data["args"], data["schedule"], data["data_shape"]
        if kind not in NET_KINDS:
            raise SpecError(f"model.kind {kind!r} is unknown to this version (known: {', '.join(NET_KINDS)}); "
                            "upgrade progdistill")
        if not isinstance(args, dict):
            raise SpecError("model.args must be a JSON object")
        if not isinstance(schedule, dict) or not isinstance(schedule.get("name"), str):
            raise SpecError("model.schedule must be a JSON object with a name")
        if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise SpecError(f"model.data_shape must be a list of positive integers, got {shape!r}")
        num_classes = data.get("num_classes", 0)
        if not isinstance(num_classes, int) or num_classes < 0:
            raise SpecError(f"model.num_classes must be an integer >= 0, got {num_classes!r}")
        if not isinstance(data["parameterization"], str):
            raise SpecError("model.parameterization must be a string")
        return cls(kind, dict(args), data["parameterization"], dict(schedule), tuple(shape), num_classes)

    def with_dropout(self, dropout: float) -> "ModelSpec":
        """The same network with another dropout rate (students may train with their own)."""
        return replace(self, args=self.args | {"dropout": float(dropout)})


def build_net(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network of `spec` (load the checkpoint's weights into it)."""
    from ..diffusion.schedules import schedule_from_spec
    from .diffusers_net import DiffusersUNet
    from .mlp import MLPNet
    from .unet import UNet

    if spec.kind == "mlp":
        net = MLPNet(**resolve_args(MLPNet.__init__, spec.args, "MLPNet"))
    elif spec.kind == "unet":
        net = UNet(spec.args)
    elif spec.kind == "diffusers":
        net = DiffusersUNet(spec.args, schedule_from_spec(spec.schedule))
    else:
        raise SpecError(f"unknown network kind {spec.kind!r}; known: {', '.join(NET_KINDS)}")
    if int(getattr(net, "num_classes", 0)) != spec.num_classes:
        raise SpecError(f"the network's arguments make {net.num_classes} classes, the spec says {spec.num_classes}")
    return net
