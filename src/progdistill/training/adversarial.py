"""The discriminator of the adversarial methods: a small head on a frozen network's encoder features, and
adversarial progressive distillation (SDXL-Lightning's recipe) built on it.

Features: the output of the network's middle block (U-Nets: diffusers' `mid_block`, at the bottleneck; the MLP: its
last residual block), taken by a forward hook while the frozen teacher evaluates the noised input with its
conditioning (class labels, text, w). The teacher's weights never train; gradients flow through it to the input
only, in the generator's (student's) update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..diffusion.dmd import approximate_r1, discriminator_loss, generator_gan_loss
from ..diffusion.distillation import distillation_target
from ..diffusion.samplers import ddim_step
from ..diffusion.weighting import weighted_loss
from .counting import EvalCounter
from .loop import OptimSettings
from .objectives import DistillObjective, Target, UniformW, _grid_draw
from .players import Player

R1_SIGMA = 0.01  # the perturbation of approximate R1, in the noised input's units


def feature_module(denoiser: nn.Module) -> nn.Module:
    """The block whose output the discriminator head reads (see the module's docstring)."""
    modules = dict(denoiser.named_modules())
    mids = [m for name, m in modules.items() if name.endswith("mid_block")]
    if mids:
        return mids[0]
    blocks = getattr(getattr(denoiser, "net", denoiser), "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        return blocks[-1]
    raise ConfigError(f"the adversarial term needs encoder features, and this network ({type(denoiser.net).__name__}) "
                      "has neither a mid_block nor residual blocks; set distill.adversarial_weight = 0 and "
                      "distill.dmd_gan_weight = 0")


class Features:
    """features(z, logsnr, labels, **inputs): the frozen network's middle-block output for that input (its
    forward runs whole; the hook keeps the block's output)."""

    def __init__(self, denoiser: nn.Module):
        self.denoiser, self._out = denoiser, None
        feature_module(denoiser).register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._out = output[0] if isinstance(output, tuple) else output

    def __call__(self, counter: EvalCounter, z: Tensor, logsnr: Tensor, labels: Tensor | None, **inputs) -> Tensor:
        training = self.denoiser.training
        self.denoiser.eval()
        try:
            counter.call("teacher", self.denoiser, z, logsnr, labels, **inputs)
        finally:
            self.denoiser.train(training)
        out, self._out = self._out, None
        return counter.backward_through("teacher", out)  # the final output takes no gradient; the features may


class DiscriminatorHead(nn.Module):
    """A small head on encoder features: a 3x3 convolution, SiLU, global average pool and a linear logit for
    feature maps; two linear layers for feature vectors. `pairs`: the input is the features of two points
    concatenated along channels (the conditional adversarial pd: the student's landing point and its start)."""

    def __init__(self, channels: int, spatial: bool, pairs: int = 1):
        super().__init__()
        c = channels * pairs
        if spatial:
            self.net = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(c, 1))
        else:
            self.net = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, 1))

    def forward(self, *features: Tensor) -> Tensor:
        return self.net(torch.cat([f.float() for f in features], dim=1)).squeeze(1)


def make_head(features: Features, data_shape: tuple[int, ...], labels: Tensor | None, seed: int, pairs: int = 1,
              inputs: dict | None = None) -> DiscriminatorHead:
    """A head sized by one probe of the features on a zero input, its weights drawn from `seed` (the global RNG is
    left as it was, so resumed and fresh runs build the same head)."""
    device = next(features.denoiser.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in (inputs or {}).items()}
    with torch.no_grad():
        probe = features(EvalCounter(), torch.zeros(1, *data_shape, device=device), torch.zeros(1, device=device),
                         labels, **inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiscriminatorHead(probe.shape[1], probe.ndim == 4, pairs).to(device)


@dataclass
class AdversarialPD:
    """A pd round's target plus an adversarial term (distill.adversarial_weight): the head judges the student's one
    DDIM step t -> t'' against the teacher's two (the landing points z_t'', both at the target time t''), through
    the teacher's features at t'' with the batch's conditioning; "conditional" also feeds it the start z_t's
    features (SDXL-Lightning's flow-preserving form), "relaxed" (distill.adversarial_relaxed) only the landing point.
    Players: the student (its pd loss + weight * the non-saturating generator loss) and the head."""

    pd: DistillObjective
    teacher: nn.Module
    weighting: str
    weight: float
    relaxed: bool
    student_settings: OptimSettings
    head_settings: OptimSettings
    data_shape: tuple[int, ...]
    probe_label: Tensor | None
    seed: int
    r1_weight: float = 0.1
    _features: Features | None = field(default=None, init=False, repr=False)

    def players(self, student: nn.Module) -> list[Player]:
        self._features = Features(self.teacher)
        inputs = {} if self.pd.w_range is None else {"w": torch.zeros(1)}
        head = make_head(self._features, self.data_shape, self.probe_label, self.seed, 1 if self.relaxed else 2,
                         inputs)
        return [Player("student", student, self.student_settings), Player("disc", head, self.head_settings)]

    def _draw(self, x, labels, generator, shard, counter: EvalCounter) -> tuple[Target, Tensor]:
        """pd's draw and target (the teacher's two steps, counted), and the target time's log-SNR."""
        pd = self.pd
        w = UniformW(*pd.w_range) if pd.w_range is not None else None
        d = _grid_draw(counter.counted("teacher", pd.teacher), pd.schedule, pd.student_steps, w, x, generator, shard,
                       pd.noise)
        logsnr_t, logsnr_tp, logsnr_tpp = d.logsnr
        x_tilde = distillation_target(d.teacher, d.z_t, logsnr_t, logsnr_tp, logsnr_tpp, d.i == 1, labels,
                                      logsnr_t < pd.clip_below)
        return Target(d.z_t, logsnr_t, x_tilde, d.inputs), logsnr_tpp

    def _logits(self, head, counter, z_s, logsnr_s, target: Target, labels, start_features):
        feats = self._features(counter, z_s, logsnr_s, labels, **target.inputs)
        return head(feats) if self.relaxed else head(feats, start_features)

    def loss(self, name, x, labels, generator, shard, nets, counter: EvalCounter) -> Tensor:
        target, logsnr_tpp = self._draw(x, labels, generator, shard, counter)
        start = None
        if not self.relaxed:
            with torch.no_grad():
                start = self._features(counter, target.z_t, target.logsnr, labels, **target.inputs)
        head = nets["disc"]
        if name == "student":
            x_hat = counter.call("student", nets["student"], target.z_t, target.logsnr, labels, **target.inputs)
            loss = weighted_loss(x_hat, target.x, target.logsnr, self.weighting)
            z_student = ddim_step(target.z_t, x_hat, target.logsnr, logsnr_tpp)
            return loss + self.weight * generator_gan_loss(
                self._logits(head, counter, z_student, logsnr_tpp, target, labels, start))
        with torch.no_grad():
            x_hat = counter.call("student", nets["student"], target.z_t, target.logsnr, labels, **target.inputs)
            z_student = ddim_step(target.z_t, x_hat, target.logsnr, logsnr_tpp)
            z_teacher = ddim_step(target.z_t, target.x, target.logsnr, logsnr_tpp)
            real_feats = self._features(counter, z_teacher, logsnr_tpp, labels, **target.inputs)
            noise = torch.randn(z_teacher.shape, generator=generator, device=x.device, dtype=x.dtype)
            perturbed = self._features(counter, z_teacher + R1_SIGMA * noise, logsnr_tpp, labels, **target.inputs)
            fake_feats = self._features(counter, z_student, logsnr_tpp, labels, **target.inputs)
        pair = () if self.relaxed else (start,)
        real, fake = head(real_feats, *pair), head(fake_feats, *pair)
        r1 = approximate_r1(real, head(perturbed, *pair)) / R1_SIGMA ** 2  # about ||grad D||^2
        return discriminator_loss(real, fake) + 0.5 * self.r1_weight * r1
