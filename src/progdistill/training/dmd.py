"""distill.method = "dmd": DMD2 (Yin et al. 2024), distribution-matching distillation with an online fake score and
a GAN term on real images (docs/methods.md).

Players, in this order each phase step:
- "generator", the student: a k-step sampler on the fixed grid t_j = j/k (k = distill.target_steps). Its sample for
  an example is x = G(z_{t_j}, t_j) at a random j ~ U{1..k}; z_{t_j} comes from the student's own DDIM steps from
  pure noise at t = 1 (backward simulation, without gradients), so every step of the k-step sampler is trained on the
  inputs it meets when sampling. Loss: DMD's 0.5 ||x - sg(x - grad)||^2, grad = (fake x_hat - real x_hat) /
  mean|x - real x_hat| at x noised to t ~ U[dmd_t_min, dmd_t_max] (diffusion/dmd.py), plus dmd_gan_weight times the
  non-saturating GAN loss of the head on the teacher's features of that noised sample.
- "fake": the fake score, a copy of the real score (the teacher) trained online, dmd_fake_updates times per
  generator update, with the teacher's denoising loss on stop-gradient generator samples.
- "disc" (dmd_gan_weight > 0): the head on the frozen teacher's features (training/adversarial.py), real training
  images against generator samples, both noised at one random t, non-saturating, with approximate R1; updated as
  often as the fake score.

The real score is the frozen teacher: the run's first teacher, also when the generator starts from a saved student
(`distill --from RUN/students/student_0001steps --method dmd`); with dmd_guidance = w > 0 a label-dropout teacher's
classifier-free guided x_hat at w (a fixed-w student, as DMD2 for text models).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..diffusion.dmd import (approximate_r1, discriminator_loss, dmd_gradient, dmd_loss, generator_gan_loss)
from ..diffusion.samplers import ddim_step
from ..diffusion.schedules import Schedule
from ..diffusion.weighting import weighted_loss
from ..guidance import ClassifierFreeGuidance
from .adversarial import R1_SIGMA, Features, make_head
from .counting import EvalCounter
from .loop import OptimSettings
from .noise import Noise, global_batch_noise
from .objectives import _noisy, _uniform, global_rows
from .players import Player


@dataclass
class DMDObjective:
    """See the module docstring. `teacher`: the real score's network (frozen); `null_label`: its null condition when
    `guidance` > 0."""

    teacher: nn.Module
    schedule: Schedule
    steps: int
    settings: dict[str, OptimSettings]  # generator, fake, disc
    fake_updates: int
    gan_weight: float
    fake_weighting: str
    data_shape: tuple[int, ...]
    probe_label: Tensor | None
    seed: int
    t_range: tuple[float, float] = (0.02, 0.98)
    guidance: float = 0.0
    null_label: int | Tensor | None = None
    r1_weight: float = 0.1
    noise: Noise = global_batch_noise
    _features: Features | None = field(default=None, init=False, repr=False)

    def players(self, student: nn.Module) -> list[Player]:
        fake = copy.deepcopy(self.teacher).train().requires_grad_(True)
        players = [Player("generator", student, self.settings["generator"]),
                   Player("fake", fake, self.settings["fake"], self.fake_updates)]
        if self.gan_weight > 0:
            self._features = Features(self.teacher)
            head = make_head(self._features, self.data_shape, self.probe_label, self.seed)
            players.append(Player("disc", head, self.settings["disc"], self.fake_updates))
        return players

    def real(self, counter: EvalCounter):
        """The real score's x_hat (guided at `guidance` when > 0), counted, without gradients."""
        teacher = counter.counted("teacher", self.teacher)
        return teacher if self.guidance <= 0 else ClassifierFreeGuidance(teacher, self.guidance, self.null_label)

    def sample(self, generator_net, x: Tensor, labels, generator: torch.Generator, shard, counter: EvalCounter,
               grad: bool) -> Tensor:
        """Generator samples for this process's rows (see the module docstring): backward simulation without
        gradients to a random grid time j/k, then the generator's x_hat there (with gradients when `grad`)."""
        n, rows = global_rows(x.shape[0], shard)
        k = self.steps
        j = torch.randint(1, k + 1, (n,), generator=generator, device=x.device)[rows]
        z = self.noise(tuple(x.shape[1:]), x.dtype, x.device, generator, n, rows)
        grid = [self.schedule(torch.full((x.shape[0],), s / k, dtype=torch.float64, device=x.device)).to(x.dtype)
                for s in range(k + 1)]
        with torch.no_grad():
            for s in range(k, 1, -1):  # examples starting below s take this step of the student's own sampler
                active = (j < s).view(-1, *[1] * (x.ndim - 1))
                if not bool(active.any()):
                    continue
                x_hat = counter.call("generator", generator_net, z, grid[s], labels)
                z = torch.where(active, ddim_step(z, x_hat, grid[s], grid[s - 1]), z)
        logsnr_j = torch.stack(grid)[j, torch.arange(x.shape[0], device=x.device)]
        with torch.set_grad_enabled(grad):
            return counter.call("generator", generator_net, z, logsnr_j, labels)

    def _noised(self, x: Tensor, generator, shard, lo: float, hi: float) -> tuple[Tensor, Tensor]:
        n, rows = global_rows(x.shape[0], shard)
        logsnr = self.schedule(_uniform(lo, hi, generator, n, rows, x).double()).to(x.dtype)
        return _noisy(x, logsnr, generator, n, rows, self.noise), logsnr

    def loss(self, name: str, x: Tensor, labels, generator: torch.Generator, shard, nets: dict,
             counter: EvalCounter) -> Tensor:
        if name == "generator":
            return self.generator_loss(x, labels, generator, shard, nets, counter)
        fake_x = self.sample(nets["generator"], x, labels, generator, shard, counter, grad=False)
        if name == "fake":
            z_t, logsnr = self._noised(fake_x, generator, shard, 0.0, 1.0)
            return weighted_loss(counter.call("fake", nets["fake"], z_t, logsnr, labels), fake_x, logsnr,
                                 self.fake_weighting)
        return self.disc_loss(x, fake_x, labels, generator, shard, nets, counter)

    def generator_loss(self, x, labels, generator, shard, nets, counter: EvalCounter) -> Tensor:
        sample = self.sample(nets["generator"], x, labels, generator, shard, counter, grad=True)
        z_t, logsnr = self._noised(sample, generator, shard, *self.t_range)
        with torch.no_grad():
            real = self.real(counter)(z_t.detach(), logsnr, labels)
            fake = counter.call("fake", nets["fake"], z_t.detach(), logsnr, labels)
        loss = dmd_loss(sample, dmd_gradient(sample.detach(), real, fake))
        if self.gan_weight > 0:
            loss = loss + self.gan_weight * generator_gan_loss(nets["disc"](self._features(counter, z_t, logsnr,
                                                                                             labels)))
        return loss

    def disc_loss(self, x, fake_x, labels, generator, shard, nets, counter: EvalCounter) -> Tensor:
        """Real images against generator samples, both noised at one random time (one draw for the pair)."""
        n, rows = global_rows(x.shape[0], shard)
        logsnr = self.schedule(_uniform(*self.t_range, generator, n, rows, x).double()).to(x.dtype)
        real_t = _noisy(x, logsnr, generator, n, rows, self.noise)
        fake_t = _noisy(fake_x, logsnr, generator, n, rows, self.noise)
        perturbed = real_t + R1_SIGMA * self.noise(tuple(x.shape[1:]), x.dtype, x.device, generator, n, rows)
        with torch.no_grad():
            feats = [self._features(counter, z, logsnr, labels) for z in (real_t, fake_t, perturbed)]
        head = nets["disc"]
        real, fake, moved = (head(f) for f in feats)
        return discriminator_loss(real, fake) + 0.5 * self.r1_weight * approximate_r1(real, moved) / R1_SIGMA ** 2
