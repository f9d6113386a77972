"""What the latent-layout tests (SD3, FLUX, SDXL) share: distilling an imported teacher plain and guided, and the
project's own samples of a checkpoint for the prompts the stock pipelines are compared on."""

from __future__ import annotations

from pathlib import Path

from progdistill.build import load_checkpoint, schedule_of
from progdistill.interop.stable_diffusion import prompt_embeddings
from progdistill.sampling import generate
from progdistill.training.guided import distill_guided
from progdistill.training.rounds import distill


def plain_and_guided_students(teacher, root: Path, guided_cfg) -> dict:
    """{"plain": {steps: stem}, "guided": {steps: stem}}: `teacher` distilled with its own config into root/run and
    guided with `guided_cfg` into root/guided."""
    plain = distill(teacher, root / "run", progress=False)
    guided = distill_guided(teacher, root / "guided", guided_cfg, progress=False)
    by_steps = lambda stems: {int(Path(s).name[8:12]): s for s in stems}  # noqa: E731
    return {"plain": by_steps(plain), "guided": by_steps(guided)}


def project_samples(stem, steps: int, w: float | None, prompts: list[str]):
    """(the project's DDIM/Euler latents for `prompts`, 2 samples from seed 3, the checkpoint's spec)."""
    loaded = load_checkpoint(stem)
    spec = loaded.spec
    return generate(loaded.denoiser, schedule_of(spec), steps, 2, spec.data_shape, clip=False, seed=3,
                    labels=prompt_embeddings(spec, prompts), guidance=w), spec
