"""Checkpoint records describe their own network (format 2): frozen format-1 checkpoints written by older code
still load and sample the same; editing a preset or renaming config fields does not change what an existing
checkpoint loads; broken or future records fail with errors that say what is wrong."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progdistill.build import build_denoiser, load_checkpoint, model_record, read_model_record, schedule_of
from progdistill.config import load_config
from progdistill.sampling import generate
from progdistill.nets import ModelSpec, build_net
from progdistill.nets import unet as unet_module
from progdistill.checkpoint import FORMAT_VERSION, CheckpointError, read_record, save_checkpoint

FROZEN = Path(__file__).parent / "data" / "frozen_v1"
# Must match scripts/make_frozen_checkpoints.py, which drew the expected samples.
SAMPLES = {"mlp/teacher": (8, None), "mlp/students/student_0004steps": (4, None), "unet/teacher": (4, [0, 3, 7, 9])}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_frozen_format1_checkpoints_load_and_sample_the_same(name):
    assert "format_version" not in read_record(FROZEN / name)  # written by the old code
    loaded = load_checkpoint(FROZEN / name)
    assert loaded.record["format_version"] == FORMAT_VERSION
    # The only notes: config fields removed since (nothing read them); the provenance config still loads.
    assert loaded.notes == [f"sample.{k} is unknown to this version (ignored)" for k in ("num_samples", "sampler", "seed")]
    steps, labels = SAMPLES[name]
    assert loaded.sampling["steps"] == steps
    x = generate(loaded.denoiser, schedule_of(loaded.spec), steps, 4, loaded.spec.data_shape,
                 clip=loaded.sampling["clip"], seed=7, labels=torch.tensor(labels) if labels else None)
    expected = load_file(FROZEN / "expected.safetensors")[name]
    assert expected.abs().max() > 0.1  # non-trivial samples
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5)


def test_frozen_student_translates_with_its_own_dropout_and_steps():
    record, spec = read_model_record(FROZEN / "mlp/students/student_0004steps")
    assert spec.kind == "mlp" and spec.args["hidden"] == 32 and spec.args["emb_dim"] == 16
    assert spec.args["dropout"] == record["config"]["distill"]["dropout"]
    assert record["sampling"] == {"steps": 4, "clip": True, "variance": "small"}
    _, uspec = read_model_record(FROZEN / "unet/teacher")
    assert uspec.kind == "diffusers" and uspec.num_classes == 10 and uspec.args["norm_num_groups"] == 4
    assert uspec.schedule == {"name": "discrete", "logsnr_max": 20.0, "num_timesteps": 64,
                              "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}


def _unet_checkpoint(tmp_path, num_classes=3):
    """A format-2 checkpoint of the 'small' U-Net preset on 28x28 images (attention at 7x7), with a non-zero
    output layer."""
    cfg = load_config("fashion_mnist")
    torch.manual_seed(0)
    d = build_denoiser(cfg, (1, 28, 28), num_classes)
    with torch.no_grad():
        d.net.unet.conv_out.weight.normal_(0, 0.05)
    stem = save_checkpoint(tmp_path / "teacher", {"model": d}, {
        "kind": "teacher", "config": cfg.to_dict(), **model_record(d.spec, cfg, 4), "sampling_weights": "model"})
    return d, stem


def test_written_record_holds_the_resolved_network(tmp_path):
    d, stem = _unet_checkpoint(tmp_path)
    record = read_record(stem)
    assert record["format_version"] == FORMAT_VERSION
    model = record["model"]
    assert model["kind"] == "unet" and "unet" not in json.dumps(model["args"]).replace("UNet", "")  # no preset name
    args = model["args"]
    assert (args["block_out_channels"], args["norm_num_groups"], args["attention_head_dim"]) == ([16, 32, 64], 8, 64)
    assert args["num_class_embeds"] == 3 and args["sample_size"] == 28 and "mid_block_type" in args  # defaults too
    assert model["schedule"] == {"name": "cosine", "logsnr_min": -20.0, "logsnr_max": 20.0}
    assert (model["data_shape"], model["num_classes"], model["parameterization"]) == ([1, 28, 28], 3, "v")
    assert ModelSpec.from_dict(model) == d.spec
    # One function builds the network from the spec alone.
    net = build_net(ModelSpec.from_dict(model))
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in d.net.state_dict().items()}


def test_editing_a_preset_does_not_change_a_saved_checkpoint(tmp_path, monkeypatch):
    d, stem = _unet_checkpoint(tmp_path)
    z, t, labels = torch.randn(2, 1, 28, 28), torch.tensor([0.0, 1.5]), torch.tensor([0, 2])
    with torch.no_grad():
        before = d.eval()(z, t, labels)
    # Same shapes, other behaviour (one attention head of 64 -> 16 heads of 4) and other norm groups.
    edited = unet_module.UNetSpec((16, 32, 64), 1, (7,), attention_head_dim=4, norm_groups=4)
    monkeypatch.setitem(unet_module.UNET_PRESETS, "small", edited)
    changed = build_denoiser(load_config("fashion_mnist"), (1, 28, 28), 3)
    assert changed.spec.args["norm_num_groups"] == 4  # the edit reaches new networks
    loaded = load_checkpoint(stem)
    assert loaded.spec == d.spec
    shapes = {k: v.shape for k, v in loaded.denoiser.state_dict().items()}
    assert shapes == {k: v.shape for k, v in d.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoiser(z, t, labels), before)
    # A network built from the edited preset does load these weights (same shapes) but computes something else:
    # what loading through the preset would silently have done.
    changed.load_state_dict(d.state_dict())
    with torch.no_grad():
        assert (changed.eval()(z, t, labels) - before).abs().max() > 1e-3


def test_renamed_config_fields_do_not_break_loading(tmp_path):
    d, stem = _unet_checkpoint(tmp_path)
    path = stem.with_suffix(".json")
    record = json.loads(path.read_text())
    record["config"]["model"]["preset"] = record["config"]["model"].pop("unet")  # a renamed field
    record["config"]["sampling"] = record["config"].pop("sample")  # a renamed section
    record["config"]["train"]["optim"]["lr"] = "fast"  # a value of another type
    path.write_text(json.dumps(record))
    loaded = load_checkpoint(stem)
    assert loaded.spec == d.spec and loaded.sampling["steps"] == 4
    assert any("model.preset" in n for n in loaded.notes) and any("train.optim.lr" in n for n in loaded.notes)


def _edit(stem, change):
    path = stem.with_suffix(".json")
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path


def test_incomplete_records_name_the_file_and_what_is_missing(tmp_path):
    _, stem = _unet_checkpoint(tmp_path)
    path = _edit(stem, lambda r: r.pop("model"))
    with pytest.raises(CheckpointError, match=rf"{path}.*lacks 'model'"):
        load_checkpoint(stem)
    _, stem = _unet_checkpoint(tmp_path / "b")
    path = _edit(stem, lambda r: r["model"].pop("schedule"))
    with pytest.raises(CheckpointError, match=rf"{path}.*model block lacks schedule"):
        load_checkpoint(stem)
    _, stem = _unet_checkpoint(tmp_path / "c")
    path = _edit(stem, lambda r: r["model"]["args"].pop("block_out_channels"))
    # A missing argument takes today's default (a constructor may gain arguments), here diffusers' 4 levels,
    # which do not fit the record's other arguments.
    with pytest.raises(CheckpointError, match=rf"cannot build the network of checkpoint {path}.*block_out_channels"):
        load_checkpoint(stem)
    _, stem = _unet_checkpoint(tmp_path / "d")
    path = _edit(stem, lambda r: r["model"]["args"].update(wings=2))
    with pytest.raises(CheckpointError, match=rf"cannot build the network of checkpoint {path}.*wings"):
        load_checkpoint(stem)
    _, stem = _unet_checkpoint(tmp_path / "e")
    path = _edit(stem, lambda r: r.pop("sampling"))
    with pytest.raises(CheckpointError, match=rf"{path}.*lacks 'sampling'"):
        load_checkpoint(stem)
    # Format 1: the config is what describes the network, so it must be readable.
    v1 = FROZEN / "mlp" / "teacher"
    for key, expected in (("config", "lacks config"), ("data_shape", "lacks data_shape")):
        dest = tmp_path / f"v1_{key}"
        dest.mkdir()
        for suffix in (".json", ".safetensors"):
            (dest / ("teacher" + suffix)).write_bytes(v1.with_suffix(suffix).read_bytes())
        path = _edit(dest / "teacher", lambda r, key=key: r.pop(key))
        with pytest.raises(CheckpointError, match=rf"{path} \(format 1\) {expected}"):
            load_checkpoint(dest / "teacher")


def test_future_format_asks_to_upgrade(tmp_path):
    _, stem = _unet_checkpoint(tmp_path)
    path = _edit(stem, lambda r: r.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=rf"{path} has format version {FORMAT_VERSION + 1}.*upgrade progdistill"):
        load_checkpoint(stem)
    _edit(stem, lambda r: r.update(format_version="2"))
    with pytest.raises(CheckpointError, match="invalid format_version"):
        load_checkpoint(stem)


RELEASE = Path(__file__).parent / "data" / "release_0_1_0"  # written by 0.1.0 (scripts/make_release_checkpoints.sh)


def _copy_release(tmp_path: Path) -> Path:
    """The 0.1.0 checkpoints in a folder of their own, their records' teacher paths pointing into it."""
    import shutil

    run = tmp_path / "release"
    shutil.copytree(RELEASE, run)
    for record_path in run.rglob("*.json"):
        record = json.loads(record_path.read_text())
        parts = Path(record.get("teacher", "")).parts
        if "plain" in parts:  # the path 0.1.0 wrote, in its own temporary folder: the same file here
            record["teacher"] = str(run.joinpath(*parts[len(parts) - parts[::-1].index("plain") - 1:]))
            record_path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return run


def test_a_previous_release_mid_round_checkpoint_resumes_to_its_students_bitwise(tmp_path):
    """A distillation that 0.1.0 stopped mid-round continues with today's code to exactly the students 0.1.0 wrote
    when it ran uninterrupted (flat optimizer keys in the recorded config, no teacher_clip in the model block)."""
    from progdistill.training.rounds import distill

    run = _copy_release(tmp_path)
    record = json.loads((run / "plain" / "students" / "checkpoints" / "round02_step00000020.json").read_text())
    assert "lr" in record["config"]["distill"] and "teacher_clip" not in record["model"]  # written by 0.1.0
    stems = distill(None, run / "plain", resume=True, progress=False)
    assert [s.name for s in stems] == ["student_0002steps", "student_0001steps"]
    for stem in stems:
        ours, theirs = load_file(f"{stem}.safetensors"), load_file(run / "plain_reference" / f"{stem.name}.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_previous_release_guided_stage1_model_continues_with_its_configs_margin(tmp_path, monkeypatch):
    from progdistill.training import plan as plan_module
    from progdistill.training.rounds import distill

    run = _copy_release(tmp_path)
    stage1 = load_checkpoint(run / "guided" / "stage1")
    assert stage1.spec.w_margin is None and stage1.config.guided.w_margin == 0.5  # 0.1.0 kept it in the config
    seen = []
    real = plan_module.plan_distillation
    monkeypatch.setattr("progdistill.training.rounds.plan_distillation",
                        lambda *args: seen.append(real(*args)) or seen[-1])
    distill(run / "guided" / "stage1", run / "stage2", progress=False)
    assert seen[0].w_train == (-0.5, 2.0)  # [w_min - margin, w_max] with 0.1.0's recorded config margin
    # From here on the margin is recorded: the students' model blocks hold it.
    student = json.loads((run / "stage2" / "students" / "student_0001steps.json").read_text())
    assert student["model"]["guidance"]["w_margin"] == 0.5
