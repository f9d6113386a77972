import json

import pytest
import torch

from progdistill.build import build_denoiser, load_denoiser, model_record
from progdistill.config import load_config
from progdistill.checkpoint import (
    CheckpointError, checkpoint_paths, load_into, prune, read_record, save_checkpoint,
)


def _save(tmp_path, cfg, name="ckpt"):
    d = build_denoiser(cfg, (2,))
    torch.nn.init.normal_(d.net.out[-1].weight)
    record = {"kind": "teacher", "config": cfg.to_dict(), **model_record(d.spec, cfg, 8),
              "sampling_weights": "model", "step": 3}
    return d, save_checkpoint(tmp_path / name, {"model": d}, record)


def test_round_trip(tmp_path):
    cfg = load_config("toy2d", ["model.hidden=16", "model.depth=1"])
    d, stem = _save(tmp_path, cfg)
    loaded, record, cfg2 = load_denoiser(stem)
    assert cfg2 == cfg and record["step"] == 3
    for (k, a), (k2, b) in zip(d.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # Suffixes are accepted too.
    assert read_record(str(stem) + ".json") == record
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_and_garbage_weights_are_refused(tmp_path):
    cfg = load_config("toy2d", ["model.hidden=16", "model.depth=1"])
    _, stem = _save(tmp_path, cfg)
    weights, record = checkpoint_paths(stem)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_denoiser(stem)
    record.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_denoiser(stem)
    record.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a progdistill checkpoint"):
        load_denoiser(stem)
    with pytest.raises(CheckpointError, match="no checkpoint record"):
        load_denoiser(tmp_path / "absent")


def test_weights_for_another_network_are_refused(tmp_path):
    small = load_config("toy2d", ["model.hidden=16", "model.depth=1"])
    big = load_config("toy2d", ["model.hidden=32", "model.depth=1"])
    _, stem = _save(tmp_path, small)
    with pytest.raises(CheckpointError, match="does not fit this network"):
        load_into(build_denoiser(big, (2,)), stem, "model")
    with pytest.raises(CheckpointError, match="holds no weights for 'ema'"):
        load_into(build_denoiser(small, (2,)), stem, "ema")


def test_prune_keeps_newest(tmp_path):
    cfg = load_config("toy2d", ["model.hidden=16", "model.depth=1"])
    for step in (1, 2, 3, 4):
        _save(tmp_path, cfg, name=f"teacher_step{step:08d}")
    prune(tmp_path, "teacher_step*", keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["teacher_step00000003.json", "teacher_step00000004.json"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
