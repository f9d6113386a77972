"""SD3 teachers (docs/flow.md) on a tiny SD3-layout folder built here (diffusers' and transformers' own classes at
diffusers' test sizes, random weights, CLIP BPE and a T5 Unigram tokenizer made offline): import, the latent cache
with a mapping condition and the VAE's shift factor, plain, guided and LoRA distillation, export to the stock
StableDiffusion3Pipeline (equal to the project's sampler at 1, 2 and 4 steps), the command line with a killed and
resumed run, and the refusals."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from kill_at import kill_after
from latent_helpers import plain_and_guided_students, project_samples
from progdistill.build import load_checkpoint, load_denoiser
from progdistill.config import ConfigError, load_config
from progdistill.data.captions import load_captioned_latents
from progdistill.data.components import ComponentError, load_components
from progdistill.interop.sd3 import export_sd3, import_sd3, student_sigmas
from progdistill.interop.tiny_sd import write_captioned_folder
from progdistill.interop.tiny_sd3 import build_tiny_sd3_folder
from progdistill.training.rounds import distill

WORDS = ("a", "photo", "of", "shirt", "shoe", "bag")
PROMPTS = ["a photo of a shirt", "a bag"]
LENGTH = 16  # the T5 prompt length of the fixture (max_sequence_length)
DISTILL = ["distill.start_steps=8", "distill.target_steps=1", "distill.updates_per_round=2",
           "distill.final_updates_per_round=0", "distill.batch_size=4", "distill.checkpoint_every=0",
           "distill.log_samples=0", "data.workers=0", "mixed_precision=\"no\""]
GUIDED = ["guided.stage1_updates=2", "guided.w_min=0", "guided.w_max=4", "guided.embed_dim=32",
          "distill.optim.lr=1e-2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """A tiny SD3 folder, captioned images for it, and its imported teacher (own cache folder)."""
    root = tmp_path_factory.mktemp("sd3")
    patch = pytest.MonkeyPatch()
    patch.setenv("PROGDISTILL_CACHE", str(root / "cache"))
    folder = build_tiny_sd3_folder(root / "sd3", WORDS, max_length=LENGTH)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 20, 20), dtype=np.uint8)
    captions = [f"a photo of a {WORDS[3 + i % 3]}" if i % 4 else "" for i in range(24)]
    write_captioned_folder(root / "captions", images, captions)
    cfg = load_config("stable_diffusion", DISTILL)
    teacher = import_sd3(folder, root / "run", cfg, captions=str(root / "captions"), max_sequence_length=LENGTH)
    yield {"root": root, "folder": folder, "captions": root / "captions", "teacher": teacher,
           "caption_list": captions}
    patch.undo()


@pytest.fixture(scope="module")
def students(sd3):
    """Plain and guided distillation 8 -> 1 (a few updates: weights that differ from the teacher's)."""
    return plain_and_guided_students(sd3["teacher"], sd3["root"], load_config("stable_diffusion", DISTILL + GUIDED))


def _ours(stem, steps: int, w: float | None):
    return project_samples(stem, steps, w, PROMPTS)


def _pipeline(folder, steps: int, data_shape, guidance_scale: float = 1.0, calls: list | None = None):
    """The stock pipeline's latents for PROMPTS on the student's sigmas, from the project's starting noise."""
    from diffusers import StableDiffusion3Pipeline

    pipe = folder if isinstance(folder, StableDiffusion3Pipeline) else StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if calls is not None:
        pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn((2, *data_shape), generator=torch.Generator().manual_seed(3))
    return pipe(PROMPTS, num_inference_steps=steps, sigmas=student_sigmas(steps), guidance_scale=guidance_scale,
                latents=z, output_type="latent", max_sequence_length=LENGTH, height=16, width=16).images


def test_import_records_the_layout_schedule_and_null_condition(sd3):
    teacher, record, _ = load_denoiser(sd3["teacher"])
    spec = teacher.spec
    assert spec.kind == "sd3" and spec.parameterization == "flow" and spec.data_shape == (4, 8, 8)
    assert spec.schedule == {"name": "flow", "shift": 3.0}
    block = record["model"]["components"]
    assert block["layout"] == "sd3" and block["max_sequence_length"] == LENGTH and block["shift_factor"] == 0.0609
    assert all(len(block[n]["sha256"]) == 64 for n in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                                                        "tokenizer", "tokenizer_2", "tokenizer_3"))
    null = load_components(block, need=("tokenizer", "text_encoder")).encode_prompts([""])
    assert set(null) == {"encoder_hidden_states", "pooled_projections"}
    assert torch.equal(teacher.net.null_text, null["encoder_hidden_states"][0])
    assert torch.equal(teacher.net.null_pooled, null["pooled_projections"][0])
    assert teacher.net.null_text.shape == (2 * LENGTH, 32) and teacher.net.null_pooled.shape == (64,)


def test_latent_cache_shifts_and_scales_and_stores_the_mapping(sd3):
    from PIL import Image

    block = load_denoiser(sd3["teacher"])[1]["model"]["components"]
    data = load_captioned_latents(sd3["captions"], block, image_size=16, channels=1)
    frozen = load_components(block)
    images = [torch.from_numpy(np.asarray(Image.open(sd3["captions"] / f"{i:06d}.png").convert("L").resize(
        (16, 16), Image.Resampling.BICUBIC), dtype=np.float32))[None] / 127.5 - 1 for i in range(len(data))]
    x, cond = data.__getitems__([(i, False) for i in range(len(data))])
    dist = frozen.vae.encode(torch.stack(images)).latent_dist
    torch.testing.assert_close(x, (dist.mean - 0.0609) * 1.5035, rtol=0, atol=1e-5)  # SD3's shift, then scale
    expected = frozen.encode_prompts(sd3["caption_list"])
    assert set(cond) == set(expected)
    for key in expected:
        torch.testing.assert_close(cond[key], expected[key], rtol=0, atol=1e-6)
    assert data.text["pooled_projections"].shape == (4, 64)  # "" and three distinct captions, stored once each
    decoded = frozen.decode(x[:1])  # decode undoes both: z / scale + shift
    torch.testing.assert_close(decoded, frozen.vae.decode(x[:1] / 1.5035 + 0.0609).sample.clamp(-1, 1))


@pytest.fixture(scope="module")
def teacher_pipe(sd3):
    """The teacher exported once (an export's folder does not depend on the step count; its summary does)."""
    from diffusers import StableDiffusion3Pipeline

    summary = export_sd3(sd3["teacher"], sd3["root"] / "teacher_export", steps=2)
    assert summary["sigmas"] == student_sigmas(2) == [1.0, 0.5] and "sigmas=[1.0, 0.5]" in summary["call"]
    return StableDiffusion3Pipeline.from_pretrained(sd3["root"] / "teacher_export")


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_teacher_and_student_equal_the_project_sampler(sd3, students, teacher_pipe, steps, tmp_path):
    """The teacher (unguided, and guided by the pipeline's own two branches at two w) and the plain student."""
    ours, spec = _ours(sd3["teacher"], steps, None)
    pipe = teacher_pipe
    torch.testing.assert_close(_pipeline(pipe, steps, spec.data_shape), ours, rtol=0, atol=1e-4)
    for w in (1.0, 3.0):
        guided, _ = _ours(sd3["teacher"], steps, w)
        torch.testing.assert_close(_pipeline(pipe, steps, spec.data_shape, 1 + w), guided, rtol=0, atol=1e-4)
    ours, spec = _ours(students["plain"][steps], steps, None)
    export_sd3(students["plain"][steps], tmp_path / "student", steps=steps)
    theirs = _pipeline(tmp_path / "student", steps, spec.data_shape)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_guided_student_at_two_w_equals_the_project_sampler_one_call_per_step(sd3, students, steps,
                                                                                      tmp_path):
    outs = []
    for w in (0.5, 3.0):
        ours, spec = _ours(students["guided"][steps], steps, w)
        summary = export_sd3(students["guided"][steps], tmp_path / f"w{w}", steps=steps, w=w)
        assert summary["w"] == w and summary["transformer_calls_per_step"] == 1
        calls: list = []
        theirs = _pipeline(tmp_path / f"w{w}", steps, spec.data_shape, 1.0, calls)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
        assert len(calls) == steps  # w is folded into the weights: one transformer call per step
        outs.append(ours)
    assert (outs[0] - outs[1]).abs().max() > 1e-4  # the w input was trained: w changes the samples


def test_guided_student_starts_as_its_teacher_and_its_w_folds_exactly(sd3, students):
    """The zero-initialised w input answers as the teacher at any w; after training, folding w into the pooled
    projection's bias gives the same network at that w."""
    from dataclasses import replace

    from progdistill.nets.spec import build_net, guidance_block

    teacher = load_denoiser(sd3["teacher"])[0]
    spec = replace(teacher.spec, guidance=guidance_block(0.0, 4.0, 32, 1000.0))
    net = build_net(spec).eval()
    net.load_state_dict(teacher.net.state_dict(), strict=False)
    z, logsnr = torch.randn(2, 4, 8, 8), torch.tensor([-2.0, 1.0])
    cond = {"encoder_hidden_states": torch.randn(2, 2 * LENGTH, 32), "pooled_projections": torch.randn(2, 64)}
    with torch.no_grad():
        expected = teacher.net(z, teacher.net.condition(logsnr), cond)
        for w in (0.0, 3.0):
            assert torch.equal(net(z, net.condition(logsnr), cond, w), expected)
        student = load_denoiser(students["guided"][2])[0].net.eval()
        assert torch.count_nonzero(student.w_proj.weight) > 0
        at_w = student(z, student.condition(logsnr), cond, 2.5)
        student.fold_w(2.5)
        torch.testing.assert_close(student(z, student.condition(logsnr), cond), at_w, rtol=0, atol=1e-5)


def test_guided_student_compiles_as_one_graph_with_its_w(sd3, students):
    """The w input enters through a forward hook on time_text_embed and an attribute set for the call: under
    torch.compile (aot_eager: the tracing, without inductor's minutes of code generation) the network is one graph
    with no breaks, and a second w reuses it with the right answer."""
    student = load_denoiser(students["guided"][2])[0].net.eval()
    z, cond = torch.randn(2, 4, 8, 8), torch.tensor([700.0, 200.0])
    text = {"encoder_hidden_states": torch.randn(2, 2 * LENGTH, 32), "pooled_projections": torch.randn(2, 64)}
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(student)(z, cond, text, torch.tensor([0.5, 3.0]))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0)
        compiled = torch.compile(student, backend="aot_eager")
        for w in ([0.5, 3.0], [1.0, 2.0]):
            w = torch.tensor(w)
            torch.testing.assert_close(compiled(z, cond, text, w), student(z, cond, text, w), rtol=0, atol=1e-6)
        assert not torch.equal(student(z, cond, text, torch.zeros(2)), student(z, cond, text, torch.full((2,), 3.0)))
    torch._dynamo.reset()


def test_lora_student_exports_weights_the_teachers_pipeline_loads(sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    cfg = load_config("stable_diffusion", DISTILL + ["distill.start_steps=4", "distill.target_steps=2",
                                                     "distill.lora_rank=4", "distill.optim.lr=5e-2",
                                                     "distill.updates_per_round=4"])
    (stem,) = distill(sd3["teacher"], sd3["root"] / "lora", cfg, progress=False)
    loaded = load_checkpoint(stem)
    assert loaded.spec.args["lora"]["rank"] == 4
    teacher = load_denoiser(sd3["teacher"])[0]
    base = {k.replace(".base_layer", ""): v for k, v in loaded.denoiser.net.transformer.state_dict().items()
            if ".lora_" not in k}
    assert all(torch.equal(v, base[k]) for k, v in teacher.net.transformer.state_dict().items())  # base untouched
    ours, spec = _ours(stem, 2, None)
    summary = export_sd3(stem, tmp_path / "export", steps=2)
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3["folder"])  # the teacher's own pipeline
    pipe.load_lora_weights(summary["lora"]["folder"])
    torch.testing.assert_close(_pipeline(pipe, 2, spec.data_shape), ours, rtol=0, atol=1e-4)
    assert (ours - _ours(sd3["teacher"], 2, None)[0]).abs().max() > 1e-3  # the adapter trained


def _main(*args: str) -> int:
    from progdistill.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(list(args))
    finally:
        torch.set_num_threads(threads)


def test_command_line_import_distill_killed_resumed_export_sample(sd3, tmp_path, capsys):
    """import-diffusers --captions on the SD3 folder, distill SIGKILLed mid-round and resumed (bitwise equal to an
    uninterrupted run), export-diffusers, sample --prompt (decoded through the shifted VAE)."""
    ENV["PROGDISTILL_CACHE"] = os.environ["PROGDISTILL_CACHE"]
    sets = [x for s in DISTILL + ["distill.start_steps=4", "distill.checkpoint_every=1",
                                  "distill.updates_per_round=3"] for x in ("--set", s)]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _main("import-diffusers", "--model", str(sd3["folder"]), "--captions", str(sd3["captions"]),
                 "--max-sequence-length", str(LENGTH), "--out", str(ref), *sets) == 0
    killed.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(ref / f"teacher{suffix}", killed / f"teacher{suffix}")
    kill_after(["distill", "--from", str(killed / "teacher"), "--no-progress"], "round02_step00000001",
               killed / "students" / "student_0001steps.json", env=ENV)
    assert _main("distill", "--resume", "--out", str(killed), "--no-progress") == 0
    assert _main("distill", "--from", str(ref / "teacher"), "--no-progress") == 0
    from safetensors.torch import load_file

    for m in (2, 1):
        a, b = (load_file(run / "students" / f"student_{m:04d}steps.safetensors") for run in (ref, killed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), m
    student = str(ref / "students" / "student_0001steps")
    capsys.readouterr()
    assert _main("export-diffusers", "--ckpt", student, "--out", str(tmp_path / "pipe")) == 0
    assert "StableDiffusion3Pipeline" in capsys.readouterr().out
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert _main("sample", "--ckpt", student, "--prompt", "a bag", "--prompt", "a photo of a shoe", "--num", "4",
                 "--out", str(tmp_path / "grid.png"), "--no-progress") == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_changed_component_and_unsupported_layouts_are_refused(sd3, tmp_path):
    folder = tmp_path / "sd3"
    shutil.copytree(sd3["folder"], folder)
    block = json.loads(json.dumps(load_denoiser(sd3["teacher"])[1]["model"]["components"]))
    load_components(block, folder=folder)  # an intact copy elsewhere is accepted
    config = folder / "text_encoder_3" / "config.json"
    config.write_text(config.read_text().replace("\"d_ff\"", "\"d_ff\" ", 1))
    with pytest.raises(ComponentError, match="text_encoder_3 .* has changed"):
        load_components(block, folder=folder)
    cfg = load_config("stable_diffusion", DISTILL)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps(json.loads(scheduler.read_text()) | {"use_dynamic_shifting": True}))
    with pytest.raises(ConfigError, match="use_dynamic_shifting"):
        import_sd3(folder, tmp_path / "run", cfg, captions=str(sd3["captions"]))
    shutil.rmtree(folder / "tokenizer_3")
    with pytest.raises(ConfigError, match="tokenizer_3/"):
        import_sd3(folder, tmp_path / "run2", cfg, captions=str(sd3["captions"]))
    sana = tmp_path / "sana"
    (sana / "transformer").mkdir(parents=True)
    (sana / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SanaTransformer2DModel"}))
    with pytest.raises(ConfigError, match="SanaTransformer2DModel"):
        _main_raises("import-diffusers", "--model", str(sana), "--captions", str(sd3["captions"]), "--out",
                     str(tmp_path / "run3"))


def _main_raises(*args: str) -> None:
    from progdistill.cli.import_diffusers import register

    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    parsed = parser.parse_args(list(args))
    parsed.func(parsed)
