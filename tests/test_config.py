import contextlib
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.cli import main
from progdistill.config import Config, ConfigError, from_dict, load_config, parse_override, preset_names


def test_defaults_and_preset_validate():
    assert "toy2d" in preset_names()
    cfg = load_config("toy2d")
    assert cfg.model.arch == "mlp" and cfg.distill.weighting == "snr_trunc"
    assert load_config("toy2d", ["train.lr=3e-4", "distill.start_steps=64"]).train.lr == 3e-4


def test_config_round_trips_through_json():
    cfg = load_config("toy2d", ["model.parameterization=x", "diffusion.weighting=snr_trunc"])
    assert from_dict(Config, json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key in \\[train\\]: lrr"),
    ("training.lr=1", "unknown config key: training"),
    ("train.lr=abc", "train.lr must be of type float"),
    ("train.steps=1.5", "train.steps must be of type int"),
    ("train.lr=-1e-3", "train.lr must be > 0"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.lr=inf", "train.lr must be a finite number"),
    ("distill.start_steps=100", "distill.start_steps must be a power of two"),
    ("distill.target_steps=0", "distill.target_steps must be a power of two"),
    ("model.parameterization=epsilon", "model.parameterization: unknown value 'epsilon'"),
    ("diffusion.weighting=mse", "diffusion.weighting: unknown value 'mse'"),
    ("distill.weighting=snr-trunc", "distill.weighting: unknown value"),
    ("model.dropout=1.0", "model.dropout must lie in"),
    ("train=3", "train must be a table"),
    ("lr", "must look like section.key=value"),
    ("train..lr=1", "is not a dotted config key"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("toy2d", [override])


def test_target_above_start_and_eps_snr_trunc():
    with pytest.raises(ConfigError, match="distill.target_steps \\(8\\) is above distill.start_steps \\(4\\)"):
        load_config("toy2d", ["distill.start_steps=4", "distill.target_steps=8"])
    with pytest.raises(ConfigError, match="eps prediction with snr_trunc weighting diverges"):
        load_config("toy2d", ["model.parameterization=eps", "diffusion.weighting=snr_trunc"])
    # An eps teacher with its usual weighting is fine to train.
    load_config("toy2d", ["model.parameterization=eps", "diffusion.weighting=snr"])


def test_missing_preset_or_file(tmp_path):
    with pytest.raises(ConfigError, match="no preset called 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(bad))


def test_parse_override_reads_toml_values():
    assert parse_override("a.b=1") == {"a": {"b": 1}}
    assert parse_override("a.b=true") == {"a": {"b": True}}
    assert parse_override("a.b=ring") == {"a": {"b": "ring"}}
    assert parse_override('a.b="x=y"') == {"a": {"b": "x=y"}}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.text(max_size=30), max_size=3))
def test_fuzz_overrides_never_traceback(overrides):
    try:
        load_config("toy2d", overrides)
    except ConfigError:
        pass


_keys = st.sampled_from(["data", "model", "train", "distill", "sample", "diffusion", "device", "x", "lr", "steps",
                         "name", "parameterization", "start_steps", "target_steps", "weighting", "batch_size"])
_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
                       lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
                       max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_fuzz_config_tables_never_traceback(data):
    try:
        from_dict(Config, data).validate()
    except ConfigError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["--set", "--config", "toy2d", "train.lr=", "x", "distill.start_steps=3", "--help2",
                                 "train.steps=-1", "", "="]), max_size=5))
def test_fuzz_cli_config_command(args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["config", *args])
        except SystemExit as e:  # argparse's usage errors: a message and exit code 2, no traceback
            code = e.code
    assert code in (0, 2)
    if code == 2:
        assert "error" in err.getvalue() and "Traceback" not in err.getvalue()
