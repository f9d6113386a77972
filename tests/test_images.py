"""Images end to end on tiny local data: U-Net presets, training and distillation steps, gradient accumulation,
mixed precision, `evaluate` (classifier Frechet distance and the torch-fidelity Inception plumbing), `sample`
and a shortened demo."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from progdistill.build import build_denoiser, load_data, make_accelerator
from progdistill.cli import main
from progdistill.config import ConfigError, load_config
from progdistill.denoiser import Denoiser
from progdistill.evaluation.report import evaluate_run
from progdistill.nets.unet import UNET_PRESETS, UNet, count_parameters
from progdistill.training.loop import OptimSettings, fit
from progdistill.training.objectives import Target
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

from conftest import write_fashion


TINY = ["train.batch_size=16", "distill.batch_size=16", "train.steps=3", "train.warmup=1", "train.checkpoint_every=2",
        "distill.start_steps=4", "distill.updates_per_round=2", "distill.final_updates_per_round=2"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = write_fashion(tmp_path_factory.mktemp("fashion"))
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("fashion_mnist", [f'data.root="{root}"', *TINY])
    stem = train_teacher(cfg, out, progress=False)
    students = distill(stem, out, cfg, progress=False)
    return root, out, cfg, stem, students


def test_unet_presets_build_and_run():
    small = UNet(UNET_PRESETS["small"], 28, 1, 1, num_classes=10)
    out = small(torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([0, 9]))
    assert out.shape == (2, 1, 28, 28) and torch.all(out == 0)  # zero-initialised output convolution
    with pytest.raises(ValueError, match="class-conditional"):
        small(torch.randn(2, 1, 28, 28), torch.rand(2))
    cifar = UNet(UNET_PRESETS["cifar10"], 32, 3, 3)
    n = count_parameters(cifar)
    print(f"cifar10 preset: {n / 1e6:.1f}M parameters")
    # ch 256, mult (1,1,1), 3 res blocks, attention at 16 and 8, resnet up/down blocks: ~59M in diffusers' layout.
    assert 50e6 < n < 70e6
    with torch.no_grad():
        assert cifar(torch.randn(1, 3, 32, 32), torch.rand(1)).shape == (1, 3, 32, 32)
    # The ImageNet 64x64 preset: class-conditional, `both` output (6 channels).
    imagenet = UNet(UNET_PRESETS["imagenet64"], 64, 3, 6, num_classes=1000)
    print(f"imagenet64 preset: {count_parameters(imagenet) / 1e6:.1f}M parameters")
    with torch.no_grad():
        assert imagenet(torch.randn(1, 3, 64, 64), torch.rand(1), torch.tensor([7])).shape == (1, 6, 64, 64)


def test_training_and_distillation_step_on_images(image_run):
    root, out, cfg, stem, students = image_run
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["model"]["data_shape"] == [1, 28, 28] and record["model"]["num_classes"] == 10
    assert [s.name for s in students] == ["student_0002steps", "student_0001steps"]
    assert sorted(p.name for p in (out / "checkpoints").glob("*.json")) == ["teacher_step00000002.json"]
    assert all(np.isfinite(loss) for _, loss in record["loss_history"])


def test_unconditional_and_limit(image_run):
    root, *_ = image_run
    cfg = load_config("fashion_mnist", [f'data.root="{root}"', "data.conditional=false", "data.limit=50"])
    data = load_data(cfg)
    assert data.labels is None and data.x.shape == (50, 1, 28, 28)
    assert float(data.x.min()) >= -1 and float(data.x.max()) <= 1
    assert build_denoiser(cfg, (1, 28, 28), 0).net.num_classes == 0


def test_image_config_errors():
    with pytest.raises(ConfigError, match='model.arch = "unet"'):
        load_config("fashion_mnist", ['model.arch="mlp"'])
    with pytest.raises(ConfigError, match="data.root"):
        load_config("fashion_mnist", ['data.name="folder"'])
    with pytest.raises(ConfigError, match="model.unet"):
        load_config("fashion_mnist", ['model.unet="huge"'])
    with pytest.raises(ConfigError, match="fp16"):
        make_accelerator(load_config("fashion_mnist", ['mixed_precision="fp16"', 'device="cpu"']))


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, z, cond, labels=None):
        return self.lin(z)


def _one_step(batches, grad_accum, mixed_precision="no"):
    torch.manual_seed(0)
    den = Denoiser(_Linear(), "x")
    cfg = load_config("toy2d", [f'mixed_precision="{mixed_precision}"', 'device="cpu"'])

    def objective(x, labels, gen, shard=(0, 1)):  # deterministic: z = x, logsnr = 0, target = -x
        return Target(x, torch.zeros(x.shape[0]), -x)

    fit(den, iter(batches), objective, "constant", OptimSettings(lr=0.1, total_steps=1, grad_clip=0.0),
        accelerator=make_accelerator(cfg), seed=0, progress=False, grad_accum=grad_accum)
    return torch.cat([p.detach().flatten() for p in den.parameters()])


def test_gradient_accumulation_matches_one_big_batch():
    x = torch.randn(8, 4)
    # Adam's first step is lr * sign-like(g); compare with an SGD-free check: equal gradients -> equal update.
    big = _one_step([(x, None)], 1)
    accum = _one_step([(x[:4], None), (x[4:], None)], 2)
    torch.testing.assert_close(big, accum, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(big, _one_step([(x[:4], None)], 1))  # a half batch alone gives another update


def test_bf16_mixed_precision_step_on_cpu(image_run):
    root, *_ = image_run
    cfg = load_config("fashion_mnist", [f'data.root="{root}"', 'mixed_precision="bf16"', 'device="cpu"',
                                        "train.steps=1", "train.batch_size=4", "train.warmup=0"])
    stem = train_teacher(cfg, Path(root) / "bf16", progress=False)
    record = json.loads(stem.with_suffix(".json").read_text())
    assert np.isfinite(record["loss_history"][-1][1])
    make_accelerator(load_config("toy2d", ['device="cpu"']))  # the next run in this process can go back to fp32


def _inception_weights(path: Path) -> Path:
    """A locally made (randomly initialised) Inception-v3 weights file in torch-fidelity's layout."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    orig_url, orig_load = fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict
    fe.load_state_dict_from_url = lambda *a, **k: {}
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = orig_url, orig_load
    torch.save(model.state_dict(), path)
    return path


def test_evaluate_end_to_end(image_run, tmp_path):
    root, out, cfg, stem, students = image_run
    rows = evaluate_run(out, tmp_path / "eval", steps=[1, 2, 4], num=20, progress=False,
                        max_steps={"dpm_solver": 2, "teacher_ancestral": 1})
    assert all(set(r) == {"sampler", "steps", "metric", "value"} for r in rows)
    got = {(r["sampler"], r["steps"]) for r in rows}
    assert got == {("data", 0), ("teacher_ddim", 1), ("teacher_ddim", 2), ("teacher_ddim", 4), ("dpm_solver", 1),
                   ("dpm_solver", 2), ("teacher_ancestral", 1), ("student", 1), ("student", 2)}
    assert {r["metric"] for r in rows} == {"frechet_classifier", "teacher_rms", "teacher_psnr", "student_updates",
                                           "images_seen", "teacher_evals", "self_evals",
                                           "forward_equivalent"}
    assert {r["sampler"] for r in rows if r["metric"] == "student_updates"} == {"student"}  # budgets: students only
    b = {r["metric"]: r["value"] for r in rows if r["sampler"] == "student" and r["steps"] == 1}
    # pd: the teacher's two evaluations per image and the student's forward and backward (3 forward-equivalents)
    assert b["forward_equivalent"] == b["teacher_evals"] + b["self_evals"] + 3 * b["images_seen"] > 0
    assert all(np.isfinite(r["value"]) for r in rows)
    for name in ("report.json", "report.md", "frechet_classifier_vs_steps.png", "teacher_rms_vs_steps.png",
                 "samples/steps_0001.png", "samples/steps_0004.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    # The barely trained teacher's 1-step samples are further from the test images than training images are.
    v = {(r["sampler"], r["steps"]): r["value"] for r in rows}
    assert v[("teacher_ddim", 1)] > v[("data", 0)]


def test_inception_metrics_plumbing(image_run, tmp_path):
    """FID, KID and IS through torch-fidelity with a locally made weights file (the real one is never fetched)."""
    root, out, *_ = image_run
    weights = _inception_weights(tmp_path / "inception.pth")
    rows = evaluate_run(out, tmp_path / "eval", steps=[1], num=10, progress=False, samplers=("teacher_ddim",),
                        inception_weights=weights, classifier=False)
    got = {(r["sampler"], r["metric"]) for r in rows}
    assert got == {(s, m) for s in ("data", "teacher_ddim") for m in ("fid", "kid", "isc")} | {
        ("teacher_ddim", "teacher_rms")}  # the teacher at the reference step count itself: RMS 0, no PSNR row
    assert all(np.isfinite(r["value"]) for r in rows)
    assert (tmp_path / "eval" / "fid_vs_steps.png").is_file()
    with pytest.raises(ValueError, match="not a torch-fidelity Inception-v3 weights file"):
        torch.save({"junk": torch.zeros(1)}, tmp_path / "junk.pth")
        evaluate_run(out, tmp_path / "e2", steps=[1], num=10, progress=False, samplers=("teacher_ddim",),
                     inception_weights=tmp_path / "junk.pth", classifier=False)


def test_missing_inception_weights_is_a_clear_error(image_run, tmp_path, capsys):
    _, out, *_ = image_run
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "e"), "--num", "10", "--steps", "1",
                 "--inception-weights", str(tmp_path / "nope.pth"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nope.pth not found" in err and "weights-inception-2015-12-05-6726825d.pth" in err


def test_cli_sample_images(image_run, tmp_path, capsys):
    _, out, cfg, stem, students = image_run
    assert main(["sample", "--ckpt", str(students[-1]), "--num", "20", "--out", str(tmp_path / "g.png"),
                 "--no-progress"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert main(["sample", "--ckpt", str(stem), "--steps", "2", "--sampler", "dpm_solver", "--label", "3",
                 "--num", "4", "--out", str(tmp_path / "s.pt"), "--no-progress"]) == 0
    saved = torch.load(tmp_path / "s.pt")
    assert saved["samples"].shape == (4, 1, 28, 28) and saved["labels"].tolist() == [3] * 4
    assert main(["sample", "--ckpt", str(stem), "--label", "10", "--out", str(tmp_path / "x.png")]) == 2
    assert "10 classes" in capsys.readouterr().err


def test_demo_on_images_shortened(tmp_path, image_run):
    root, *_ = image_run
    run = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(run), "--num", "20", "--no-progress",
                 "--set", f'data.root="{root}"', "--set", "train.batch_size=16", "--set", "distill.batch_size=16",
                 "--set", "train.steps=2", "--set", "distill.start_steps=2"]) == 0
    rows = json.loads((run / "eval" / "report.json").read_text())
    assert {r["steps"] for r in rows if r["sampler"] == "student"} == {1}
    assert {r["sampler"] for r in rows} == {"data", "teacher_ddim", "dpm_solver", "student"}
    assert (run / "eval" / "frechet_classifier_vs_steps.png").is_file()
    assert (run / "eval" / "samples" / "steps_0001.png").is_file()


def test_teacher_agreement_metric():
    from progdistill.evaluation.images import teacher_agreement

    ref = torch.zeros(4, 1, 2, 2)
    assert teacher_agreement(ref, ref) == {"teacher_rms": 0.0}
    got = teacher_agreement(ref + 0.2, ref)  # RMS 0.2 on data of range 2: PSNR = 20 log10(10) = 20 dB
    assert got["teacher_rms"] == pytest.approx(0.2) and got["teacher_psnr"] == pytest.approx(20.0)


def test_evaluate_on_folder_data_without_any_weights_file(tmp_path):
    """RGB folder data (no classifier applies, no Inception weights): the report still holds the teacher-agreement
    rows for every sampler, a plot and the grids. The barely trained models say nothing about quality, so only
    the rows' presence and their consistency (PSNR from RMS, the reference row at 0) are checked."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(24):
        img = np.full((16, 16, 3), 30, np.uint8)
        img[2 + i % 8 : 8 + i % 8, 4:12, i % 3] = 220
        Image.fromarray((img + rng.integers(0, 20, img.shape)).astype(np.uint8)).save(folder / f"{i:03d}.png")
    run = tmp_path / "run"
    cfg = load_config("fashion_mnist", ['data.name="folder"', f'data.root="{folder}"', "data.image_size=16",
                                        "data.conditional=false", *TINY])
    stem = train_teacher(cfg, run, progress=False)
    distill(stem, run, cfg, progress=False)
    assert main(["evaluate", "--run", str(run), "--num", "6", "--steps", "1,2,4", "--no-progress",
                 "--max-baseline-steps", "1"]) == 0
    rows = json.loads((run / "eval" / "report.json").read_text())
    assert {r["metric"] for r in rows} == {"teacher_rms", "teacher_psnr", "student_updates", "images_seen",
                                           "teacher_evals", "self_evals", "forward_equivalent"}  # the students' budgets
    v = {(r["sampler"], r["steps"], r["metric"]): r["value"] for r in rows if r["metric"] in ("teacher_rms", "teacher_psnr")}
    assert v[("teacher_ddim", 4, "teacher_rms")] == 0.0  # the reference: the teacher's 4-step DDIM itself
    for (sampler, k, metric), value in v.items():
        if metric == "teacher_psnr":
            rms = v[(sampler, k, "teacher_rms")]
            assert value == pytest.approx(20 * np.log10(2 / rms)) and rms > 0
    assert {(s, k) for s, k, _ in v} >= {("student", 1), ("student", 2), ("teacher_ddim", 1), ("dpm_solver", 1)}
    for name in ("report.md", "teacher_psnr_vs_steps.png", "samples/steps_0001.png"):
        assert (run / "eval" / name).is_file(), name


def test_reference_sets_read_only_the_rows_they_use(tmp_path, monkeypatch):
    """evaluate's reference images: a data set larger than REFERENCE_MAX is sampled down, and the whole set is never
    materialised as float32 (ExampleData.x would be 63 GB for ImageNet 64x64)."""
    from PIL import Image

    from progdistill.data.batches import ExampleData
    from progdistill.evaluation import images as ev

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(30):
        Image.fromarray(np.full((8, 8), 8 * i, np.uint8)).save(folder / f"{i:03d}.png")
    cfg = load_config("fashion_mnist", ['data.name="folder"', f'data.root="{folder}"', "data.image_size=8",
                                        "data.channels=1", "data.conditional=false"])
    monkeypatch.setattr(ExampleData, "x", property(lambda self: pytest.fail("the whole data set was materialised")))
    monkeypatch.setattr(ev, "REFERENCE_MAX", 12)
    reference, floor, floor_labels = ev.reference_sets(cfg, 5, seed=3)
    assert reference.shape == (12, 1, 8, 8) and floor.shape == (5, 1, 8, 8) and floor_labels is None
    levels = lambda x: {round(v) for v in ((x[:, 0, 0, 0] + 1) * 127.5 / 8).tolist()}  # noqa: E731
    assert len(levels(reference)) == 12 and levels(reference) <= set(range(30))  # distinct real images
    assert levels(ev.reference_sets(cfg, 5, seed=3)[0]) == levels(reference)  # seeded
    monkeypatch.setattr(ev, "REFERENCE_MAX", 50)
    assert levels(ev.reference_sets(cfg, 5, seed=3)[0]) == set(range(30))  # small sets: all of them


def test_evaluate_methods_side_by_side_with_budgets(image_run, tmp_path, capsys):
    """cd and tract students of the same teacher as rows of one report (evaluate --method), each with its recorded
    budget, and report.md's table against the teacher's best: the best teacher row of the report."""
    root, out, cfg, stem, students = image_run
    for method in ("cd", "tract"):
        distill(stem, tmp_path / method, replace(cfg, distill=replace(cfg.distill, method=method)), progress=False)
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "eval"), "--num", "20", "--steps", "1,2,4",
                 "--method", f"cd={tmp_path / 'cd'}", "--method", f"tract={tmp_path / 'tract'}",
                 "--max-baseline-steps", "2", "--no-progress"]) == 0
    rows = json.loads((tmp_path / "eval" / "report.json").read_text())
    fd = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == "frechet_classifier"}
    assert {k for s, k in fd if s == "cd"} == {1, 2, 4}  # one consistency student, every step count
    assert {k for s, k in fd if s == "tract"} == {1, 2}  # tract 4 -> 2 -> 1 (tract_phases = 2)
    for method, k in (("cd", 4), ("tract", 2), ("student", 1)):
        run = {"cd": tmp_path / "cd", "tract": tmp_path / "tract", "student": out}[method]
        stem_k = 1 if method == "cd" else k
        budget = json.loads((run / "students" / f"student_{stem_k:04d}steps.json").read_text())["budget"]
        got = {r["metric"]: r["value"] for r in rows if r["sampler"] == method and r["steps"] == k}
        assert {key: int(got[key]) for key in budget} == budget
    # pd and cd spent the same updates (cd's default budget is pd's total), tract too
    total = {s: v for (s, k), v in {(r["sampler"], r["steps"]): r["value"] for r in rows
                                    if r["metric"] == "student_updates"}.items() if k == 1}
    assert total == {"student": 4.0, "cd": 4.0, "tract": 4.0}
    best = min((v, s, k) for (s, k), v in fd.items() if s in ("teacher_ddim", "dpm_solver", "teacher_ancestral"))
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"The teacher's best frechet_classifier: **{best[0]:.4f}** ({best[1]} at {best[2]} steps)" in report
    line = next(x for x in report.splitlines() if x.startswith("| 4 | cd |"))
    assert f"{fd[('cd', 4)] / best[0]:.3f}" in line
