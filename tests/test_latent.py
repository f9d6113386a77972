"""Latent text-to-image teachers (docs/latent.md) on tiny Stable-Diffusion-layout folders built here (diffusers' and
transformers' own classes at test size, random weights, an offline CLIP tokenizer): import, the latent cache,
guided distillation through time_cond_proj_dim, export to the stock StableDiffusionPipeline, the command line, and
the refusals (changed components, wrong data)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kill_at import kill_after
from progdistill.build import load_checkpoint, load_denoiser, schedule_of
from progdistill.config import ConfigError, load_config
from progdistill.data.captions import load_captioned_latents
from progdistill.data.components import ComponentError, load_components
from progdistill.data.decode import DataError
from progdistill.interop.stable_diffusion import export_stable_diffusion, import_stable_diffusion, prompt_embeddings
from progdistill.interop.tiny_sd import build_tiny_sd_folder, write_captioned_folder
from progdistill.sampling import generate
from progdistill.training.guided import _stage1_student, distill_guided
from progdistill.training.rounds import distill

WORDS = ("a", "photo", "of", "shirt", "shoe", "bag")
PROMPTS = ["a photo of a shirt", "a bag"]
# 8 -> 4 -> 2 -> 1 with a handful of updates: weights that differ from the teacher's, quickly.
DISTILL = ["distill.start_steps=8", "distill.target_steps=1", "distill.updates_per_round=2",
           "distill.final_updates_per_round=0", "distill.batch_size=4", "distill.convert_updates=2",
           "distill.checkpoint_every=0", "distill.log_samples=0", "data.workers=0"]
GUIDED = ["guided.stage1_updates=2", "guided.w_min=0", "guided.w_max=4", "guided.embed_dim=32",
          "distill.weighting=snr"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny Stable Diffusion folder, captioned images for it, and its imported teacher (own cache folder)."""
    root = tmp_path_factory.mktemp("latent")
    patch = pytest.MonkeyPatch()
    patch.setenv("PROGDISTILL_CACHE", str(root / "cache"))
    folder = build_tiny_sd_folder(root / "sd", WORDS)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 20, 20), dtype=np.uint8)  # centre-cropped and resized to 16 by the cache
    captions = [f"a photo of a {WORDS[3 + i % 3]}" if i % 4 else "" for i in range(24)]
    write_captioned_folder(root / "captions", images, captions)
    cfg = load_config("stable_diffusion", DISTILL + ["mixed_precision=\"no\""])
    teacher = import_stable_diffusion(folder, root / "run", cfg, captions=str(root / "captions"))
    yield {"root": root, "folder": folder, "captions": root / "captions", "teacher": teacher, "cfg": cfg,
           "caption_list": captions}
    patch.undo()


@pytest.fixture(scope="module")
def students(sd):
    """Plain (v students of the eps teacher) and guided distillation 8 -> 1."""
    plain = distill(sd["teacher"], sd["root"] / "run", progress=False)
    cfg = load_config("stable_diffusion", DISTILL + GUIDED + ["mixed_precision=\"no\""])
    guided = distill_guided(sd["teacher"], sd["root"] / "guided", cfg, progress=False)
    return {"plain": {int(Path(s).name[8:12]): s for s in plain}, "guided": {int(Path(s).name[8:12]): s for s in guided}}


def _pipeline_latents(stem, steps: int, w: float | None, out: Path):
    """(the project's DDIM samples, the stock pipeline's latents) for PROMPTS from the same starting noise."""
    from diffusers import StableDiffusionPipeline

    loaded = load_checkpoint(stem)
    spec = loaded.spec
    ours = generate(loaded.denoiser, schedule_of(spec), steps, 2, spec.data_shape, clip=False, seed=3,
                    labels=prompt_embeddings(spec, PROMPTS), guidance=w)
    export_stable_diffusion(stem, out, steps=steps)
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn((2, *spec.data_shape), generator=torch.Generator().manual_seed(3))
    theirs = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=1 + (w or 0.0), latents=z,
                  output_type="latent").images
    return ours, theirs, pipe


def test_import_records_components_and_null_caption(sd):
    teacher, record, _ = load_denoiser(sd["teacher"])
    spec = teacher.spec
    assert spec.kind == "sd_unet" and spec.parameterization == "eps" and spec.data_shape == (4, 8, 8)
    block = record["model"]["components"]
    assert set(block) == {"folder", "vae", "text_encoder", "tokenizer", "scaling_factor"}
    assert all(len(block[name]["sha256"]) == 64 for name in ("vae", "text_encoder", "tokenizer"))
    assert record["config"]["sample"]["clip"] is False and record["config"]["distill"]["teacher_clip"] == "none"
    frozen = load_components(block, need=("tokenizer", "text_encoder"))
    assert torch.equal(teacher.net.null_text, frozen.encode_prompts([""])[0])


def test_latent_cache_equals_direct_vae_encoding(sd):
    from PIL import Image

    block = load_denoiser(sd["teacher"])[1]["model"]["components"]
    data = load_captioned_latents(sd["captions"], block, image_size=16, channels=1)
    frozen = load_components(block)
    images = []
    for i in range(len(data)):  # the cache's preprocessing: centre crop (already square) and bicubic resize
        img = Image.open(sd["captions"] / f"{i:06d}.png").convert("L").resize((16, 16), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32))[None] / 127.5 - 1)
    direct = frozen.encode_images(torch.stack(images))
    x, text = data.__getitems__([(i, False) for i in range(len(data))])
    torch.testing.assert_close(x, direct, rtol=0, atol=1e-5)
    torch.testing.assert_close(text, frozen.encode_prompts(sd["caption_list"]), rtol=0, atol=1e-6)
    assert data.text.shape[0] == 4  # "" and the three distinct captions, stored once each


def test_stage1_student_starts_as_the_teachers_conditional_model(sd):
    """The zero-initialised time_cond_proj: at any w the w-conditioned copy answers as the teacher without w."""
    from dataclasses import replace

    from progdistill.nets.spec import guidance_block

    teacher = load_denoiser(sd["teacher"])[0]
    spec = replace(teacher.spec, guidance=guidance_block(0.0, 4.0, 32, 1000.0))
    cfg = load_config("stable_diffusion", ["mixed_precision=\"no\""])

    class _Run:
        accelerator = type("A", (), {"device": torch.device("cpu")})()

    student = _stage1_student(teacher, spec, cfg, _Run()).eval()
    assert student.net.unet.config.time_cond_proj_dim == 32
    assert torch.count_nonzero(student.net.unet.time_embedding.cond_proj.weight) == 0
    z, text = torch.randn(3, 4, 8, 8), torch.randn(3, 16, 32)
    logsnr = torch.tensor([-4.0, 0.0, 3.0])
    with torch.no_grad():
        expected = teacher(z, logsnr, text)
        for w in (0.0, 2.5, 7.0):
            assert torch.equal(student(z, logsnr, text, w=w), expected)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_student_equals_the_project_sampler(sd, students, steps, tmp_path):
    ours, theirs, pipe = _pipeline_latents(students["plain"][steps], steps, None, tmp_path / "export")
    assert pipe.unet.config.time_cond_proj_dim is None and pipe.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("w", [0.5, 3.0])
def test_exported_guided_student_equals_the_project_sampler_one_call_per_step(sd, students, steps, w, tmp_path):
    ours, theirs, pipe = _pipeline_latents(students["guided"][steps], steps, w, tmp_path / "export")
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    pipe(PROMPTS[:1], num_inference_steps=steps, guidance_scale=1 + w, output_type="latent")
    assert len(calls) == steps  # one U-Net evaluation per step: guidance is an input, not a second branch


def test_exported_teacher_with_classifier_free_guidance_equals_the_project_sampler(sd, tmp_path):
    ours, theirs, _ = _pipeline_latents(sd["teacher"], 4, 2.0, tmp_path / "export")
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


def test_students_differ_from_the_teacher_and_keep_the_record(sd, students):
    teacher = load_denoiser(sd["teacher"])[0]
    student, record, _ = load_denoiser(students["guided"][1])
    assert record["model"]["components"] == teacher.spec.components
    assert student.spec.guidance["embed_dim"] == 32
    moved = [k for k, v in teacher.net.unet.state_dict().items()
             if not torch.equal(v, student.net.unet.state_dict()[k])]
    assert moved  # training changed the weights


def test_changed_or_missing_component_is_refused(sd, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(sd["folder"], folder)
    block = json.loads(json.dumps(load_denoiser(sd["teacher"])[1]["model"]["components"]))
    load_components(block, folder=folder)  # an intact copy elsewhere is accepted
    config = folder / "text_encoder" / "config.json"
    config.write_text(config.read_text().replace("\"hidden_act\"", "\"hidden_act\" ", 1))
    with pytest.raises(ComponentError, match="text_encoder .* has changed"):
        load_components(block, folder=folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(ComponentError, match="vae .* missing"):
        load_components(block, need=("vae",), folder=folder)


def test_bad_captions_and_layouts_are_refused(sd, tmp_path):
    cfg = load_config("stable_diffusion", DISTILL)
    bad = tmp_path / "caps"
    bad.mkdir()
    (bad / "metadata.jsonl").write_text('{"file_name": "missing.png", "text": "a bag"}\n')
    with pytest.raises(DataError, match="missing.png"):
        import_stable_diffusion(sd["folder"], tmp_path / "run", cfg, captions=str(bad))
    (bad / "metadata.jsonl").write_text('{"file_name": "x.png", "caption": "a bag"}\n')
    with pytest.raises(DataError, match="caption column"):
        import_stable_diffusion(sd["folder"], tmp_path / "run2", cfg, captions=str(bad))
    broken = tmp_path / "broken"
    shutil.copytree(sd["folder"], broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ConfigError, match="tokenizer/"):
        import_stable_diffusion(broken, tmp_path / "run3", cfg, captions=str(sd["captions"]))
    with pytest.raises(ConfigError, match="captioned images"):
        load_config("toy2d", ["data.name=\"captions\""])


def _main(*args: str) -> int:
    """The command line in this process, on one thread (as the killed subprocess runs), so runs compare bitwise."""
    from progdistill.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(list(args))
    finally:
        torch.set_num_threads(threads)


def _sets(items):
    return [x for s in items for x in ("--set", s)]


def test_command_line_import_distill_resume_export_sample(sd, tmp_path, capsys):
    """The user's path: import-diffusers --captions, distill killed mid-round and resumed (bitwise equal to an
    uninterrupted run), export-diffusers, sample --prompt (decoded through the VAE)."""
    ENV["PROGDISTILL_CACHE"] = os.environ["PROGDISTILL_CACHE"]
    sets = _sets(DISTILL + ["distill.checkpoint_every=1", "distill.updates_per_round=3", "mixed_precision=\"no\""])
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _main("import-diffusers", "--model", str(sd["folder"]), "--captions", str(sd["captions"]), "--out",
                 str(ref), *sets) == 0
    killed.mkdir()
    for suffix in (".safetensors", ".json"):  # the same teacher
        shutil.copy(ref / f"teacher{suffix}", killed / f"teacher{suffix}")
    kill_after(["distill", "--from", str(killed / "teacher"), "--no-progress"], "round02_step00000002",
               killed / "students" / "student_0001steps.json", env=ENV)
    assert _main("distill", "--resume", "--out", str(killed), "--no-progress") == 0
    assert _main("distill", "--from", str(ref / "teacher"), "--no-progress") == 0
    from safetensors.torch import load_file

    for m in (4, 2, 1):
        a, b = (load_file(run / "students" / f"student_{m:04d}steps.safetensors") for run in (ref, killed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), m
    student = str(ref / "students" / "student_0002steps")
    capsys.readouterr()
    assert _main("export-diffusers", "--ckpt", student, "--out", str(tmp_path / "pipe")) == 0
    assert "StableDiffusionPipeline" in capsys.readouterr().out
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert _main("sample", "--ckpt", student, "--prompt", "a bag", "--prompt", "a photo of a shoe", "--num", "4",
                 "--out", str(tmp_path / "grid.png"), "--no-progress") == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert _main("sample", "--ckpt", student, "--label", "3", "--num", "2", "--out", str(tmp_path / "x.png")) == 2
    assert "--prompt" in capsys.readouterr().err
    assert _main("evaluate", "--run", str(ref), "--num", "10") == 2  # not evaluated here yet: said, not a traceback
    assert "text-to-image" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lora_students(sd):
    cfg = load_config("stable_diffusion", DISTILL + ["distill.start_steps=4", "distill.lora_rank=4",
                                                     "distill.optim.lr=1e-2", "mixed_precision=\"no\""])
    return distill(sd["teacher"], sd["root"] / "lora", cfg, progress=False)


def _lora_plan(sd):
    """The teacher, a LoRA distillation's plan of it, and inputs (z, text hidden states, log-SNR) to call them on."""
    from progdistill.training.plan import plan_distillation

    teacher, record, ckpt_cfg = load_denoiser(sd["teacher"])
    cfg = load_config("stable_diffusion", DISTILL + ["distill.lora_rank=4", "mixed_precision=\"no\""])
    plan = plan_distillation(teacher.spec, record, ckpt_cfg, cfg)
    return teacher, plan, (torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32), torch.tensor([-3.0, 1.0]))


def test_lora_student_starts_as_its_teacher_and_shares_its_weights(sd):
    from progdistill.training.phase import Run
    from progdistill.training.plan import FrozenAdapter

    teacher, plan, (z, text, logsnr) = _lora_plan(sd)
    with torch.no_grad():
        before = teacher.net(z, teacher.net.condition(logsnr), text)
    student = plan.student(teacher, Run.__new__(Run))
    assert student.net is teacher.net  # one copy of the base weights
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(student.net(z, student.net.condition(logsnr), text), before)  # B starts at zero
        for name, p in student.named_parameters():  # train the adapter a little: the round's teacher must not move
            if ".lora_B" in name:
                p.add_(0.1)
        frozen = plan.round_teacher(teacher)
        assert isinstance(frozen, FrozenAdapter)
    with torch.no_grad():
        moved = student.net(z, student.net.condition(logsnr), text)
    assert not torch.equal(moved, before)


def test_a_lora_rounds_frozen_teacher_does_not_move_while_the_adapter_trains(sd):
    from progdistill.training.phase import Run
    from progdistill.training.plan import FrozenAdapter

    teacher, plan, (z, text, logsnr) = _lora_plan(sd)
    with torch.no_grad():
        start = teacher(z, logsnr, text)
    student = plan.student(teacher, Run.__new__(Run))
    frozen = plan.round_teacher(teacher)
    assert isinstance(frozen, FrozenAdapter)
    assert torch.equal(frozen(z, logsnr, text), start)
    adapter = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(adapter, lr=1e-2)
    student.train()
    for _ in range(3):  # the round's updates, with the frozen teacher called between them as a round does
        optimizer.zero_grad()
        loss = (student(z, logsnr, text) - frozen(z, logsnr, text)).pow(2).mean() + student(z, logsnr, text).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        student.eval()
        trained = student(z, logsnr, text)
        assert not torch.equal(trained, start)  # the adapter moved
        assert torch.equal(frozen(z, logsnr, text), start)  # its round teacher did not
        assert torch.equal(student(z, logsnr, text), trained)  # and the call put the live adapter back


def test_exported_lora_on_the_teachers_pipeline_reproduces_the_student(sd, lora_students, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    stem = lora_students[0]  # the 2-step student
    loaded = load_checkpoint(stem)
    teacher = load_denoiser(sd["teacher"])[0]
    assert loaded.spec.args["lora"]["rank"] == 4
    base = {k.replace(".base_layer", ""): v for k, v in loaded.denoiser.net.unet.state_dict().items() if ".lora_" not in k}
    assert all(torch.equal(v, base[k]) for k, v in teacher.net.unet.state_dict().items())  # the base never trains
    ours = generate(loaded.denoiser, schedule_of(loaded.spec), 2, 2, loaded.spec.data_shape, clip=False, seed=3,
                    labels=prompt_embeddings(loaded.spec, PROMPTS))
    summary = export_stable_diffusion(stem, tmp_path / "export", steps=2)
    pipe = StableDiffusionPipeline.from_pretrained(sd["folder"])  # the teacher's own pipeline
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(summary["lora"]["folder"])
    pipe.scheduler = DDIMScheduler.from_pretrained(summary["lora"]["folder"], subfolder="scheduler")
    z = torch.randn((2, *loaded.spec.data_shape), generator=torch.Generator().manual_seed(3))
    theirs = pipe(PROMPTS, num_inference_steps=2, guidance_scale=1.0, latents=z, output_type="latent").images
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    assert (ours - generate(teacher, schedule_of(loaded.spec), 2, 2, loaded.spec.data_shape, clip=False, seed=3,
                            labels=prompt_embeddings(loaded.spec, PROMPTS))).abs().max() > 1e-3  # it trained


def test_lora_is_refused_where_it_cannot_ship(sd, students):
    from progdistill.training.plan import plan_distillation

    cfg = load_config("stable_diffusion", DISTILL + ["distill.lora_rank=4", "distill.weighting=snr",
                                                     "mixed_precision=\"no\""])
    guided, record, ckpt_cfg = load_denoiser(students["guided"][2])
    with pytest.raises(ConfigError, match="guided"):
        plan_distillation(guided.spec, record, ckpt_cfg, cfg)


@pytest.fixture(scope="module")
def dmd_student(sd):
    """A 4-step dmd generator of the text teacher, its real score the teacher guided at w = 2 (a fixed-w student),
    a few updates with the discriminator head on the U-Net's mid block."""
    cfg = load_config("stable_diffusion", DISTILL + ["distill.method=\"dmd\"", "distill.target_steps=4",
                                                     "distill.total_updates=3", "distill.dmd_fake_updates=2",
                                                     "distill.dmd_guidance=2", "distill.dmd_gan_weight=0.1",
                                                     "distill.optim.lr=1e-3", "mixed_precision=\"no\""])
    return distill(sd["teacher"], sd["root"] / "dmd", cfg, progress=False)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_dmd_student_equals_the_project_sampler(sd, dmd_student, steps, tmp_path):
    """A dmd generator exports as a pd student does (a DDIMScheduler at its grid's trailing timesteps, its own
    prediction type), also at the counts below its own whose grids lie on its own; its record says which."""
    (stem,) = dmd_student
    teacher = load_denoiser(sd["teacher"])[0]
    student, record, _ = load_denoiser(stem)
    assert record["sampling"]["counts"] == [1, 2, 4] and record["budget"]["players"]["generator"]["updates"] == 3
    assert set(record["budget"]["evals"]) >= {"teacher", "generator", "fake"}
    assert any(not torch.equal(v, student.net.unet.state_dict()[k]) for k, v in teacher.net.unet.state_dict().items())
    ours, theirs, pipe = _pipeline_latents(stem, steps, None, tmp_path / "export")
    assert pipe.unet.config.time_cond_proj_dim is None
    assert pipe.scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[
        student.spec.parameterization]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
