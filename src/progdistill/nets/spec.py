"""A network described by what builds it: its kind and resolved constructor arguments, with the parameterization,
schedule, data shape and classes it was trained for. Checkpoint records store this (their "model" block), so a
network is rebuilt from the record alone, never from a preset or the training config (docs/checkpoints.md).

Kinds: "mlp" (MLPNet's arguments), "unet" (the paper's U-Net: the full diffusers UNet2DModel config, conditioned
on 1000 x the noise level) and "diffusers" (an imported UNet2DModel config, conditioned on its own timesteps of
the discrete schedule), "sd_unet" (an imported Stable-Diffusion-layout UNet2DConditionModel: {"unet": its config,
"text_length", "text_dim"}, text-conditioned, with its folder's frozen components named in `components`). Arguments a record lacks take the constructor's defaults, so a constructor may gain
arguments whose defaults keep the old behaviour; an argument the installed code does not know is an error.

Classifier-free guidance (docs/guided.md) adds two optional fields, written only when set, so older records read
as before: `null_class` (the network has one class-embedding row more than `num_classes`, the "no label" class at
index num_classes, learnt with label dropout) and `guidance` (the network takes the guidance weight w as an input:
{"w_min", "w_max"} the range it samples, {"embed_dim", "embed_scale"} its w embedding, and optionally "class_gate"
(written only when true) and "w_margin", the margin below w_min that training drew w from (written by every
guided stage 1 since it was added; records from before lack it)).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from .args import SpecError, _jsonable, resolve_args  # noqa: F401 (re-exported)
from .families import FAMILIES
from .presets import NET_KINDS


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # mlp, unet or diffusers
    args: dict = field(hash=False)  # the network's resolved constructor arguments (JSON values)
    parameterization: str  # eps, x, v or both
    schedule: dict = field(hash=False)  # {"name": ..., parameters} for diffusion.schedules.make_schedule
    data_shape: tuple[int, ...]  # one example, without the batch dimension
    num_classes: int = 0
    null_class: bool = False  # class-embedding row num_classes is "no label" (label dropout; guided sampling)
    guidance: dict | None = field(default=None, hash=False)  # a w-conditioned network: GUIDANCE_KEYS
    # A distilled student: how its targets were built, {"mode": none|noisy|all, "logsnr": threshold}
    # (distill.teacher_clip), so that continuing its distillation builds them the same way.
    teacher_clip: dict | None = field(default=None, hash=False)
    # A latent text-to-image model ("sd_unet"): the frozen components of its Stable Diffusion folder that encode its
    # data and prompts and decode its samples, {"folder", "vae", "text_encoder", "tokenizer", "scaling_factor"}
    # (interop/stable_diffusion.py: each component's content hash; checked whenever a component is loaded).
    components: dict | None = field(default=None, hash=False)
    # A consistency-distilled student (distill.method = "cd"): {"sigma_data", "logsnr_max", "skip_scale"}, its x_hat is the
    # consistency function with the boundary condition at log-SNR logsnr_max (diffusion/consistency.py).
    consistency: dict | None = field(default=None, hash=False)

    @property
    def text_conditioned(self) -> bool:
        """A text-to-image model: its `labels` are text-encoder hidden states, None the empty caption."""
        return FAMILIES[self.kind].text_conditioned

    @property
    def class_rows(self) -> int:
        """Rows of the network's class embedding: the classes, plus the null class when there is one."""
        return self.num_classes + int(self.null_class)

    @property
    def w_range(self) -> tuple[float, float] | None:
        """(w_min, w_max) a w-conditioned network was trained for; None for any other network."""
        return (self.guidance["w_min"], self.guidance["w_max"]) if self.guidance else None

    @property
    def w_margin(self) -> float | None:
        """The margin below w_min that its training drew w from, as recorded (None: no w input, or a record
        written before the margin was recorded)."""
        return self.guidance.get("w_margin") if self.guidance else None

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "args": _jsonable(self.args), "parameterization": self.parameterization,
               "schedule": _jsonable(self.schedule), "data_shape": list(self.data_shape),
               "num_classes": self.num_classes}
        if self.null_class:
            out["null_class"] = True
        if self.guidance is not None:
            out["guidance"] = _jsonable(self.guidance)
        if self.teacher_clip is not None:
            out["teacher_clip"] = dict(self.teacher_clip)
        if self.components is not None:
            out["components"] = _jsonable(self.components)
        if self.consistency is not None:
            out["consistency"] = dict(self.consistency)
        return out

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
        null_class = data.get("null_class", False)
        if not isinstance(null_class, bool) or (null_class and num_classes == 0):
            raise SpecError(f"model.null_class must be true or false (true only with num_classes > 0), got "
                            f"{null_class!r}")
        components = data.get("components")
        if FAMILIES[kind].text_conditioned != isinstance(components, dict):
            raise SpecError("model.components (the Stable Diffusion folder's VAE, tokenizer and text encoder) is "
                            f"required for a text-conditioned ('sd_unet') model and only for one, got {components!r}")
        return cls(kind, dict(args), data["parameterization"], dict(schedule), tuple(shape), num_classes,
                   null_class, check_guidance_block(data.get("guidance")), check_teacher_clip(data.get("teacher_clip")),
                   components, check_consistency(data.get("consistency")))

    def with_dropout(self, dropout: float) -> "ModelSpec":
        """The same network with another dropout rate (students may train with their own)."""
        return replace(self, args=self.args | {"dropout": float(dropout)})


GUIDANCE_KEYS = ("w_min", "w_max", "embed_dim", "embed_scale")  # required; "class_gate", "w_margin" optional
OPTIONAL_GUIDANCE_KEYS = {"class_gate", "w_margin"}


def guidance_block(w_min: float, w_max: float, embed_dim: int = 64, embed_scale: float = 1000.0,
                   class_gate: bool = False, w_margin: float | None = None) -> dict:
    """The `guidance` field of a w-conditioned network's spec ("class_gate" written only when true, so that the
    records of networks without it are those written before it existed)."""
    block = {"w_min": float(w_min), "w_max": float(w_max), "embed_dim": int(embed_dim),
             "embed_scale": float(embed_scale)}
    block |= {"class_gate": True} if class_gate else {}
    block |= {"w_margin": float(w_margin)} if w_margin is not None else {}
    return check_guidance_block(block)


def check_guidance_block(block: Any) -> dict | None:
    if block is None:
        return None
    if not isinstance(block, dict) or sorted(set(block) - OPTIONAL_GUIDANCE_KEYS) != sorted(GUIDANCE_KEYS):
        raise SpecError(f"model.guidance must be an object with exactly {', '.join(GUIDANCE_KEYS)} (and optionally "
                        f"{' and '.join(sorted(OPTIONAL_GUIDANCE_KEYS))}), got {block!r}")
    margin = block.get("w_margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise SpecError(f"model.guidance.w_margin must be a number >= 0, got {margin!r}")
    if not isinstance(block.get("class_gate", False), bool):
        raise SpecError(f"model.guidance.class_gate must be true or false, got {block['class_gate']!r}")
    numbers = all(isinstance(block[k], (int, float)) and not isinstance(block[k], bool) for k in GUIDANCE_KEYS)
    if not numbers or not block["w_min"] <= block["w_max"] or block["embed_dim"] < 4 or block["embed_dim"] % 2:
        raise SpecError(f"model.guidance needs numbers with w_min <= w_max and an even embed_dim >= 4, got {block!r}")
    out = {"w_min": float(block["w_min"]), "w_max": float(block["w_max"]), "embed_dim": int(block["embed_dim"]),
           "embed_scale": float(block["embed_scale"])}
    return out | ({"class_gate": True} if block.get("class_gate") else {}) | (
        {"w_margin": float(block["w_margin"])} if "w_margin" in block else {})


TEACHER_CLIP_MODES = ("none", "noisy", "all")


def check_teacher_clip(block: Any) -> dict | None:
    """A student's recorded target clipping, {"mode", "logsnr"} (None: not a student, or recorded before it was)."""
    if block is None:
        return None
    if (not isinstance(block, dict) or set(block) != {"mode", "logsnr"} or block["mode"] not in TEACHER_CLIP_MODES
            or isinstance(block["logsnr"], bool) or not isinstance(block["logsnr"], (int, float))):
        raise SpecError(f"model.teacher_clip must be {{\"mode\": one of {', '.join(TEACHER_CLIP_MODES)}, \"logsnr\": "
                        f"a number}}, got {block!r}")
    return {"mode": block["mode"], "logsnr": float(block["logsnr"])}


def check_consistency(block: Any) -> dict | None:
    """A consistency student's boundary, {"sigma_data", "logsnr_max", "skip_scale"} (None: any other model)."""
    if block is None:
        return None
    keys = {"sigma_data", "logsnr_max", "skip_scale"}
    ok = isinstance(block, dict) and set(block) == keys and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in block.values())
    if not ok or not block["sigma_data"] > 0 or not block["skip_scale"] > 0:
        raise SpecError(f"model.consistency must be {{\"sigma_data\": a number > 0, \"logsnr_max\": a number, "
                        f"\"skip_scale\": a number > 0}}, got {block!r}")
    return {key: float(block[key]) for key in sorted(keys)}


def build_net(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network of `spec` (load the checkpoint's weights into it)."""
    if spec.kind not in FAMILIES:
        raise SpecError(f"unknown network kind {spec.kind!r}; known: {', '.join(NET_KINDS)}")
    # Each family builds its own network (the U-Net families import diffusers, seconds, only when built).
    net = FAMILIES[spec.kind].build(spec)
    if int(getattr(net, "num_classes", 0)) != spec.class_rows:
        raise SpecError(f"the network's arguments make {net.num_classes} class rows, the spec says "
                        f"{spec.num_classes} classes" + (" plus the null class" if spec.null_class else ""))
    if spec.guidance is not None:
        if spec.guidance.get("class_gate") and not spec.null_class:
            raise SpecError("model.guidance.class_gate scales the class embedding's offset from the null class's, "
                            "and this network has no null class (its teacher was trained without label dropout)")
        net.condition_on_w(spec.guidance["embed_dim"], spec.guidance["embed_scale"],
                           spec.guidance.get("class_gate", False))
    return net
