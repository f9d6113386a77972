"""The fast-path switches change speed, not results: on the CPU every switch runs, and the weights after a few
teacher and distillation steps agree with the plain path to float rounding."""

import torch
from safetensors.torch import load_file

from progdistill.build import build_denoiser
from progdistill.config import load_config
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

from conftest import write_fashion

TINY = ["train.batch_size=8", "distill.batch_size=8", "train.steps=3", "train.warmup=1", "train.checkpoint_every=100",
        "distill.start_steps=2", "distill.updates_per_round=2", "distill.final_updates_per_round=2",
        "distill.log_samples=0", "data.limit=32"]


def _run(tmp, root, switches):
    cfg = load_config("fashion_mnist", [f'data.root="{root}"', *TINY, *switches])
    train_teacher(cfg, tmp, progress=False)
    distill(tmp / "teacher", tmp, cfg, progress=False)
    return load_file(tmp / "teacher.safetensors"), load_file(tmp / "students" / "student_0001steps.safetensors")


def test_fast_path_switches_match_plain_path(tmp_path):
    root = write_fashion(tmp_path / "fashion")
    plain = _run(tmp_path / "plain", root, ["perf.sdpa=false"])
    fast = _run(tmp_path / "fast", root, ["perf.sdpa=true", "perf.channels_last=true", "perf.fused_adam=true",
                                          "perf.tf32=true"])
    # Adam normalises each update to ~lr (2e-3 here) whatever the gradient's size, so rounding differences between
    # kernels show up as a few percent of one step; a switch that changed the math would move weights by whole steps.
    for a, b in zip(plain, fast):
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 2e-4, worst
    moved = max((plain[1][k] - plain[0][k]).abs().max().item() for k in plain[0] if k in plain[1])
    assert moved > 1e-3  # distillation moved the weights by far more than the tolerance


def test_sdpa_switch_selects_the_attention_processor():
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for sdpa, kind in ((True, AttnProcessor2_0), (False, AttnProcessor)):
        cfg = load_config("fashion_mnist", [f"perf.sdpa={str(sdpa).lower()}"])
        d = build_denoiser(cfg, (1, 28, 28), 10)
        from diffusers.models.attention_processor import Attention

        procs = [m.processor for m in d.net.unet.modules() if isinstance(m, Attention)]
        assert procs and all(type(p) is kind for p in procs)


def test_compile_runs_and_matches(tmp_path):
    over = ["train.steps=3", "train.batch_size=64", "data.size=256", "train.warmup=1", "train.checkpoint_every=100",
            "model.hidden=16", "model.depth=1"]
    a = train_teacher(load_config("toy2d", over), tmp_path / "a", progress=False)
    b = train_teacher(load_config("toy2d", [*over, "perf.compile=true"]), tmp_path / "b", progress=False)
    wa, wb = load_file(f"{a}.safetensors"), load_file(f"{b}.safetensors")
    assert wa.keys() == wb.keys()  # compiling does not rename the saved weights
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)
