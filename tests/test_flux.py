"""FLUX teachers (docs/flow.md) on tiny FLUX-layout folders built here (diffusers' FluxPipeline test sizes, random
weights, offline tokenizers): import at a resolution (FLUX's dynamic shift fixed by it), 2x2-packed latents, plain,
guided (the guidance input added to a schnell-layout teacher) and LoRA distillation, a dev-layout teacher whose
guidance embedding is its w input, export to the stock FluxPipeline (its own grid is the student's: equal to the
project's sampler at 1, 2 and 4 steps), and the refusals. The killed-and-resumed command line path is tested on SD3
(tests/test_sd3.py), which shares it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from latent_helpers import plain_and_guided_students, project_samples
from progdistill.build import load_checkpoint, load_denoiser
from progdistill.config import ConfigError, load_config
from progdistill.data.components import load_components
from progdistill.diffusion.schedules import flux_shift
from progdistill.interop.flux import export_flux, import_flux
from progdistill.interop.tiny_sd import write_captioned_folder
from progdistill.interop.tiny_sd3 import build_tiny_flux_folder
from progdistill.nets.flux_net import pack, unpack
from progdistill.training.rounds import distill

WORDS = ("a", "photo", "of", "shirt", "shoe", "bag")
PROMPTS = ["a photo of a shirt", "a bag"]
LENGTH = 16
DISTILL = ["distill.start_steps=8", "distill.target_steps=1", "distill.updates_per_round=2",
           "distill.final_updates_per_round=0", "distill.batch_size=4", "distill.checkpoint_every=0",
           "distill.log_samples=0", "data.workers=0", "data.image_size=16", "mixed_precision=\"no\""]
GUIDED = ["guided.stage1_updates=4", "guided.w_min=0", "guided.w_max=4", "guided.embed_dim=256",
          "distill.optim.lr=5e-2"]


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    patch = pytest.MonkeyPatch()
    patch.setenv("PROGDISTILL_CACHE", str(root / "cache"))
    folder = build_tiny_flux_folder(root / "flux", WORDS, max_length=LENGTH)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 20, 20), dtype=np.uint8)
    captions = [f"a photo of a {WORDS[3 + i % 3]}" if i % 4 else "" for i in range(24)]
    write_captioned_folder(root / "captions", images, captions)
    teacher = import_flux(folder, root / "run", load_config("stable_diffusion", DISTILL),
                          captions=str(root / "captions"), max_sequence_length=LENGTH)
    yield {"root": root, "folder": folder, "captions": root / "captions", "teacher": teacher}
    patch.undo()


@pytest.fixture(scope="module")
def students(flux):
    return plain_and_guided_students(flux["teacher"], flux["root"], load_config("stable_diffusion", DISTILL + GUIDED))


def _ours(stem, steps: int, w: float | None):
    return project_samples(stem, steps, w, PROMPTS)


def _pipeline(folder, steps: int, data_shape, guidance_scale: float = 1.0, calls: list | None = None, **kw):
    """The stock FluxPipeline's latents (unpacked) for PROMPTS on its own grid, from the project's starting noise."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if calls is not None:
        pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn((2, *data_shape), generator=torch.Generator().manual_seed(3))
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance_scale, latents=pack(z), height=16,
               width=16, output_type="latent", max_sequence_length=LENGTH, **kw).images
    return unpack(out, *data_shape[1:])


def test_import_records_the_layout_the_resolutions_shift_and_null_condition(flux):
    teacher, record, _ = load_denoiser(flux["teacher"])
    spec = teacher.spec
    assert spec.kind == "flux" and spec.parameterization == "flow" and spec.data_shape == (1, 8, 8)
    assert spec.guidance is None  # schnell's layout: no guidance input
    assert spec.schedule == {"name": "flow", "shift": flux_shift(16)}  # 8x8 latents packed into 16 tokens
    block = record["model"]["components"]
    assert block["layout"] == "flux" and block["max_sequence_length"] == LENGTH
    null = load_components(block, need=("text_encoder",)).encode_prompts([""])
    assert torch.equal(teacher.net.null_text, null["encoder_hidden_states"][0])
    assert torch.equal(teacher.net.null_pooled, null["pooled_projections"][0])
    z = torch.randn(2, 1, 8, 8)
    assert torch.equal(unpack(pack(z), 8, 8), z)


@pytest.fixture(scope="module")
def teacher_export(flux):
    """The teacher exported once (the folder does not depend on the step count)."""
    summary = export_flux(flux["teacher"], flux["root"] / "teacher_export", steps=2)
    assert "sigmas" not in summary["call"] and "num_inference_steps=2" in summary["call"]
    return flux["root"] / "teacher_export"


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_teacher_and_student_equal_the_project_sampler(flux, students, teacher_export, steps, tmp_path):
    """FluxPipeline's default grid with the exported (static) shift is the project's: no sigmas needed. The teacher
    unguided and with the pipeline's true classifier-free guidance (negative prompt ""), and the plain student."""
    ours, spec = _ours(flux["teacher"], steps, None)
    torch.testing.assert_close(_pipeline(teacher_export, steps, spec.data_shape), ours, rtol=0, atol=1e-4)
    guided, _ = _ours(flux["teacher"], steps, 2.0)
    theirs = _pipeline(teacher_export, steps, spec.data_shape, true_cfg_scale=3.0, negative_prompt="")
    torch.testing.assert_close(theirs, guided, rtol=0, atol=1e-4)
    ours, spec = _ours(students["plain"][steps], steps, None)
    export_flux(students["plain"][steps], tmp_path / "student", steps=steps)
    torch.testing.assert_close(_pipeline(tmp_path / "student", steps, spec.data_shape), ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_guided_student_ships_with_the_pipelines_guidance_input(flux, students, steps, tmp_path):
    """The guided student of a schnell-layout teacher has FLUX's own guidance input (guidance_embeds), fed by the
    stock pipeline as guidance_scale = 1 + w, one call per step."""
    summary = export_flux(students["guided"][steps], tmp_path / "export", steps=steps)
    index = json.loads((tmp_path / "export" / "transformer" / "config.json").read_text())
    assert index["guidance_embeds"] is True and summary["guidance_scale_range"] == [1.0, 5.0]
    outs = []
    for w in (0.5, 3.0):
        ours, spec = _ours(students["guided"][steps], steps, w)
        calls: list = []
        theirs = _pipeline(tmp_path / "export", steps, spec.data_shape, 1 + w, calls)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
        assert len(calls) == steps
        outs.append(ours)
    assert (outs[0] - outs[1]).abs().max() > 1e-4  # the guidance input was trained


def test_added_guidance_input_starts_at_zero(flux):
    from dataclasses import replace

    from progdistill.nets.spec import build_net, guidance_block

    teacher = load_denoiser(flux["teacher"])[0]
    net = build_net(replace(teacher.spec, guidance=guidance_block(0.0, 4.0, 256, 1000.0))).eval()
    missing, _ = net.load_state_dict(teacher.net.state_dict(), strict=False)
    assert missing and all(".guidance_embedder." in k for k in missing)
    z, logsnr = torch.randn(2, 1, 8, 8), torch.tensor([-2.0, 1.0])
    cond = {"encoder_hidden_states": torch.randn(2, LENGTH, 32), "pooled_projections": torch.randn(2, 32)}
    with torch.no_grad():
        expected = teacher.net(z, teacher.net.condition(logsnr), cond)
        for w in (0.0, 3.0):
            assert torch.equal(net(z, net.condition(logsnr), cond, w), expected)
    with pytest.raises(Exception, match="embed_dim = 256"):
        build_net(replace(teacher.spec, guidance=guidance_block(0.0, 4.0, 32, 1000.0)))


def test_dev_layout_teacher_is_w_conditioned_and_its_students_ship(flux, tmp_path):
    """A transformer with guidance_embeds (FLUX.1-dev): its guidance embedding is the w input (w range from
    guided.w_min/w_max); plain distillation keeps it; the student ships with the pipeline's guidance_scale."""
    folder = build_tiny_flux_folder(tmp_path / "dev", WORDS, max_length=LENGTH, guidance_embeds=True, seed=7)
    cfg = load_config("stable_diffusion", DISTILL + ["distill.start_steps=2", "guided.w_min=1", "guided.w_max=4"])
    teacher = import_flux(folder, tmp_path / "run", cfg, captions=str(flux["captions"]), max_sequence_length=LENGTH)
    assert load_checkpoint(teacher).spec.guidance == {"w_min": 1.0, "w_max": 4.0, "embed_dim": 256,
                                                      "embed_scale": 1000.0}
    (student,) = distill(teacher, tmp_path / "run", progress=False)
    export_flux(student, tmp_path / "export", steps=1)
    for w in (1.5, 3.0):
        ours, spec = _ours(student, 1, w)
        torch.testing.assert_close(_pipeline(tmp_path / "export", 1, spec.data_shape, 1 + w), ours, rtol=0,
                                   atol=1e-4)


def test_lora_student_merges_into_the_exported_transformer(flux, tmp_path):
    cfg = load_config("stable_diffusion", DISTILL + ["distill.start_steps=4", "distill.target_steps=2",
                                                     "distill.lora_rank=4", "distill.optim.lr=5e-2",
                                                     "distill.updates_per_round=4"])
    (stem,) = distill(flux["teacher"], flux["root"] / "lora", cfg, progress=False)
    loaded = load_checkpoint(stem)
    assert loaded.spec.args["lora"]["rank"] == 4
    ours, spec = _ours(stem, 2, None)
    export_flux(stem, tmp_path / "export", steps=2)
    torch.testing.assert_close(_pipeline(tmp_path / "export", 2, spec.data_shape), ours, rtol=0, atol=1e-4)
    assert (ours - _ours(flux["teacher"], 2, None)[0]).abs().max() > 1e-3  # the adapter trained


def test_bad_resolution_and_changed_component_are_refused(flux, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 4"):
        import_flux(flux["folder"], tmp_path / "run", load_config("stable_diffusion", DISTILL + ["data.image_size=18"]),
                    captions=str(flux["captions"]))
    folder = tmp_path / "flux"
    shutil.copytree(flux["folder"], folder)
    block = json.loads(json.dumps(load_denoiser(flux["teacher"])[1]["model"]["components"]))
    config = folder / "text_encoder_2" / "config.json"
    config.write_text(config.read_text().replace("\"d_ff\"", "\"d_ff\" ", 1))
    from progdistill.data.components import ComponentError

    with pytest.raises(ComponentError, match="text_encoder_2 .* has changed"):
        load_components(block, folder=folder)
