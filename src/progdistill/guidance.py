"""Guided sampling of either kind of guided model, behind the plain denoiser interface (z, logsnr, labels) -> x_hat,
so every sampler gains guidance (docs/guided.md):

- a teacher trained with label dropout (its spec has `null_class`): x_hat_w = (1 + w) x_hat(z, c) - w x_hat(z, null),
  two network evaluations per step, made as one doubled batch (`ClassifierFreeGuidance`);
- a w-conditioned student (its spec has `guidance`): x_hat(z, c, w), one evaluation per step (`AtGuidance`).

`guided(denoiser, w)` picks the one the denoiser's spec calls for, after `check_guidance` has refused what cannot
be guided. diffusers' guidance_scale is 1 + w.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from . import conditioning
from .diffusion.guidance import guided_x_hat
from .nets.spec import ModelSpec


class GuidanceError(ValueError):
    """Guidance asked of a model that cannot give it, or at a weight outside what it was trained for."""


null_like = conditioning.null_like  # the null condition for every row of a batch's labels


def null_condition(denoiser, spec: ModelSpec | None = None) -> int | Tensor:
    """What a model's unconditional branch is given: the empty caption's condition for a text-to-image model (its
    hidden states, or a mapping such as SD3's hidden states and pooled embeddings), the null class (index
    num_classes) otherwise."""
    spec = spec if spec is not None else denoiser.spec
    return denoiser.net.null_condition() if spec.text_conditioned else spec.num_classes


class ClassifierFreeGuidance:
    """x_hat_w(z) = (1 + w) x_hat(z, c) - w x_hat(z, null) of a label-dropout teacher, w a number or one per
    example; both branches in one network call on the doubled batch [z; z] with labels [c; null]. `null`: the null
    class's index, or the empty caption's hidden states for a text-to-image model (`null_condition`)."""

    def __init__(self, denoiser, w: float | Tensor, null_label: int | Tensor):
        self.denoiser, self.w = denoiser, w
        self.null_label = null_label if isinstance(null_label, (Tensor, Mapping)) else int(null_label)

    def __call__(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        b = z.shape[0]
        if labels is None and isinstance(self.null_label, (Tensor, Mapping)):  # text-to-image: the empty prompt
            labels = conditioning.expand(self.null_label, b)
        if labels is None:
            raise GuidanceError("classifier-free guidance needs the class labels to guide towards")
        logsnr = logsnr.expand(b) if logsnr.ndim == 0 else logsnr
        null = null_like(labels, self.null_label)
        x = self.denoiser(torch.cat([z, z]), torch.cat([logsnr, logsnr]), conditioning.cat([labels, null]))
        return guided_x_hat(x[:b], x[b:], self.w)


class AtGuidance:
    """A w-conditioned student at guidance weight w (a number or one per example): x_hat(z, c, w)."""

    def __init__(self, denoiser, w: float | Tensor):
        self.denoiser, self.w = denoiser, w

    def __call__(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.denoiser(z, logsnr, labels, w=self.w)


def check_guidance(spec: ModelSpec | None, w: float | None) -> None:
    """Refuse guidance weight w for the model of `spec` (w None: unguided sampling) with a GuidanceError that says
    what the model lacks or which range it was trained for."""
    if spec is None:
        if w is not None:
            raise GuidanceError("guided sampling needs a model loaded from a checkpoint (a denoiser with a .spec)")
        return
    if w is None:
        if spec.guidance is not None:
            lo, hi = spec.w_range
            raise GuidanceError(f"this student takes the guidance weight w as an input (trained for w in [{lo:g}, "
                                f"{hi:g}]): give one (e.g. sample --guidance {lo:g})")
        return
    if not math.isfinite(w):
        raise GuidanceError(f"the guidance weight must be a finite number, got {w}")
    if spec.guidance is not None:
        lo, hi = spec.w_range
        if not lo <= w <= hi:
            raise GuidanceError(f"guidance weight w = {w:g} is outside the range this student was trained for, "
                                f"[{lo:g}, {hi:g}] (guidance_scale {1 + lo:g} to {1 + hi:g}); choose w in it")
        return
    if spec.text_conditioned:  # the empty caption is the unconditional branch, as in the stock pipeline
        return
    if spec.num_classes == 0:
        raise GuidanceError("this model is unconditional: classifier-free guidance needs a class-conditional teacher "
                            "trained with label dropout (train.label_dropout > 0)")
    if not spec.null_class:
        raise GuidanceError("this model was trained without label dropout (train.label_dropout = 0), so it has no "
                            "unconditional (null-class) prediction to guide with; train a teacher with "
                            "--set train.label_dropout=0.1")


def guided(denoiser, w: float | Tensor, spec: ModelSpec | None = None):
    """`denoiser` (a Denoiser with .spec, or give `spec`) guided with weight w, as a plain denoiser callable: two
    network evaluations per call for a label-dropout teacher, one for a w-conditioned student."""
    spec = spec if spec is not None else getattr(denoiser, "spec", None)
    for value in (w.flatten().tolist() if isinstance(w, Tensor) else [w]):
        check_guidance(spec, value)
    if spec.guidance is not None:
        return AtGuidance(denoiser, w)
    return ClassifierFreeGuidance(denoiser, w, null_condition(denoiser, spec))
