"""SDXL-layout folders (issue 32): a tiny SDXL folder at diffusers' test sizes (two CLIP text encoders, added text
and time-id conditions) imported with captioned images, distilled (plain, guided, LoRA) and exported to the stock
StableDiffusionXLPipeline, whose latents must equal the project's sampler to 1e-4; SIGKILL and resume from the
command line. Everything offline."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from kill_at import kill_after
from latent_helpers import plain_and_guided_students, project_samples
from progdistill.build import load_checkpoint, load_data, load_denoiser
from progdistill.config import load_config
from progdistill.config.loading import config_from_json
from progdistill.data.components import load_components
from progdistill.interop.stable_diffusion import export_stable_diffusion, import_stable_diffusion
from progdistill.interop.tiny_sd import build_tiny_sdxl_folder, write_captioned_folder
from progdistill.training.rounds import distill

WORDS = ("a", "photo", "of", "shirt", "shoe", "bag")
PROMPTS = ["a photo of a shirt", "a photo of a bag"]
DISTILL = ["distill.start_steps=8", "distill.target_steps=1", "distill.updates_per_round=2",
           "distill.final_updates_per_round=0", "distill.batch_size=4", "distill.checkpoint_every=0",
           "distill.log_samples=0", "data.workers=0", "mixed_precision=\"no\"", "data.image_size=16"]
GUIDED = ["guided.stage1_updates=2", "guided.w_min=0", "guided.w_max=4", "guided.embed_dim=32",
          "distill.optim.lr=1e-2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A tiny SDXL folder, captioned images of two sizes (so the time ids differ per image), its imported teacher."""
    root = tmp_path_factory.mktemp("sdxl")
    patch = pytest.MonkeyPatch()
    patch.setenv("PROGDISTILL_CACHE", str(root / "cache"))
    folder = build_tiny_sdxl_folder(root / "sdxl", WORDS)
    rng = np.random.default_rng(0)
    captions = [f"a photo of a {WORDS[3 + i % 3]}" if i % 4 else "" for i in range(12)]
    write_captioned_folder(root / "captions", rng.integers(0, 256, (12, 20, 24), dtype=np.uint8), captions)
    write_captioned_folder(root / "square", rng.integers(0, 256, (4, 16, 16), dtype=np.uint8), captions[:4])
    for k in range(4):  # join: 12 images of 20 x 24 and 4 of 16 x 16
        shutil.copy(root / "square" / f"{k:06d}.png", root / "captions" / f"sq{k}.png")
    with open(root / "captions" / "metadata.jsonl", "a") as f:
        for k in range(4):
            f.write(json.dumps({"file_name": f"sq{k}.png", "text": captions[k]}) + "\n")
    cfg = load_config("stable_diffusion", DISTILL)
    teacher = import_stable_diffusion(folder, root / "run", cfg, captions=str(root / "captions"))
    yield {"root": root, "folder": folder, "captions": root / "captions", "teacher": teacher}
    patch.undo()


@pytest.fixture(scope="module")
def students(sdxl):
    return plain_and_guided_students(sdxl["teacher"], sdxl["root"], load_config("stable_diffusion", DISTILL + GUIDED))


def _ours(stem, steps: int, w: float | None):
    return project_samples(stem, steps, w, PROMPTS)


def _pipeline(folder, steps: int, data_shape, guidance_scale: float = 1.0, calls: list | None = None):
    from diffusers import StableDiffusionXLPipeline

    pipe = folder if isinstance(folder, StableDiffusionXLPipeline) else StableDiffusionXLPipeline.from_pretrained(
        folder)
    pipe.set_progress_bar_config(disable=True)
    if calls is not None:
        pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn((2, *data_shape), generator=torch.Generator().manual_seed(3))
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance_scale, latents=z, output_type="latent",
                height=16, width=16).images


def test_import_records_the_layout_null_condition_and_time_ids(sdxl):
    teacher, record, _ = load_denoiser(sdxl["teacher"])
    spec = teacher.spec
    assert spec.kind == "sdxl" and spec.parameterization == "eps" and spec.data_shape == (4, 8, 8)
    block = record["model"]["components"]
    assert block["layout"] == "sdxl" and block["force_zeros_for_empty_prompt"] is True
    assert {"text_encoder_2", "tokenizer_2"} <= set(block)
    assert spec.args["pooled_dim"] == 32 and spec.args["time_ids"] == [16, 16, 0, 0, 16, 16]
    null = teacher.net.null_condition()
    assert set(null) == {"encoder_hidden_states", "text_embeds"}  # no time ids: guidance keeps each row's own
    assert not null["encoder_hidden_states"].any() and not null["text_embeds"].any()  # force_zeros_for_empty_prompt
    frozen = load_components(block, need=("tokenizer", "text_encoder"))
    encoded = frozen.encode_prompts(["a photo of a shoe"])
    assert encoded["encoder_hidden_states"].shape == (1, 16, 64) and encoded["text_embeds"].shape == (1, 32)
    data = load_data(config_from_json(load_checkpoint(sdxl["teacher"]).record["config"]), progress=False)
    x, cond = data.__getitems__([(0, 0), (13, 0)])
    # image 0: 20 x 24 (h x w), centre square 20 at left 2 -> 1.6 -> 2 in the 16 px image; image 13: 16 x 16
    assert cond["time_ids"].tolist() == [[20, 24, 0, 2, 16, 16], [16, 16, 0, 0, 16, 16]]
    assert set(cond) == {"encoder_hidden_states", "text_embeds", "time_ids"}


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_teacher_and_student_equal_the_project_sampler(sdxl, students, steps, tmp_path):
    """The teacher unguided and guided by the pipeline's own two branches (zeros as the negative condition), and
    the plain student."""
    export_stable_diffusion(sdxl["teacher"], tmp_path / "teacher", steps=steps)
    for w in (None, 2.0):
        ours, spec = _ours(sdxl["teacher"], steps, w)
        theirs = _pipeline(tmp_path / "teacher", steps, spec.data_shape, 1 + (w or 0.0))
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    ours, spec = _ours(students["plain"][steps], steps, None)
    summary = export_stable_diffusion(students["plain"][steps], tmp_path / "student", steps=steps)
    assert summary["pipeline"] == "StableDiffusionXLPipeline" and summary["prediction_type"] == "v_prediction"
    torch.testing.assert_close(_pipeline(tmp_path / "student", steps, spec.data_shape), ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_guided_student_at_two_w_equals_the_project_sampler_one_call_per_step(sdxl, students, steps,
                                                                                       tmp_path):
    stem = students["guided"][steps]
    export_stable_diffusion(stem, tmp_path / "export", steps=steps)
    for w in (0.5, 3.0):
        ours, spec = _ours(stem, steps, w)
        calls: list = []
        theirs = _pipeline(tmp_path / "export", steps, spec.data_shape, 1 + w, calls)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
        assert len(calls) == steps  # w is an input (time_cond_proj_dim): one U-Net call per step


def test_lora_student_on_the_teachers_pipeline_reproduces_it(sdxl, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    cfg = load_config("stable_diffusion", DISTILL + ["distill.start_steps=4", "distill.target_steps=2",
                                                     "distill.lora_rank=4",
                                                     "distill.optim.lr=5e-2", "distill.updates_per_round=4"])
    (stem,) = distill(sdxl["teacher"], sdxl["root"] / "lora", cfg, progress=False)
    ours, spec = _ours(stem, 2, None)
    summary = export_stable_diffusion(stem, tmp_path / "export", steps=2)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl["folder"])  # the teacher's own pipeline
    pipe.load_lora_weights(summary["lora"]["folder"])
    pipe.scheduler = DDIMScheduler.from_pretrained(summary["lora"]["folder"], subfolder="scheduler")
    torch.testing.assert_close(_pipeline(pipe, 2, spec.data_shape), ours, rtol=0, atol=1e-4)
    assert (ours - _ours(sdxl["teacher"], 2, None)[0]).abs().max() > 1e-3  # the adapter trained


def _main(*args: str) -> int:
    from progdistill.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(list(args))
    finally:
        torch.set_num_threads(threads)


def test_command_line_import_distill_killed_resumed_export_sample(sdxl, tmp_path, capsys):
    ENV["PROGDISTILL_CACHE"] = os.environ["PROGDISTILL_CACHE"]
    sets = [x for s in DISTILL + ["distill.start_steps=4", "distill.checkpoint_every=1",
                                  "distill.updates_per_round=3"] for x in ("--set", s)]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _main("import-diffusers", "--model", str(sdxl["folder"]), "--captions", str(sdxl["captions"]), "--out",
                 str(ref), *sets) == 0
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
    assert "StableDiffusionXLPipeline written" in capsys.readouterr().out
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert _main("sample", "--ckpt", student, "--prompt", "a bag", "--prompt", "a photo of a shoe", "--num", "4",
                 "--out", str(tmp_path / "grid.png"), "--no-progress") == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
