import contextlib
import dataclasses
import io
import json
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.cli import main
from progdistill.config import (CROSS_FIELD_RULES, Config, ConfigError, from_dict, load_config, parse_override,
                                preset_names, resolve_distill, student_config)
from progdistill.config import choices
from progdistill.config.constraints import Bounds, EvenAtLeast, Listed, OneOf, PowerOfTwo


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


# ------------------------------------------------------------------ declared constraints and the generic validator


def _sections(cfg: Config, prefix: str = ""):
    """(dotted name, owning section, field) for every leaf field of cfg."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cfg, f


def _invalid_values(constraint) -> list:
    """Values that break `constraint` (each kind of declared constraint has its own)."""
    if isinstance(constraint, OneOf):
        return ["not-an-option"]
    if isinstance(constraint, Bounds):
        low = [constraint.low if constraint.low_open else constraint.low - 1]
        high = [] if constraint.high is None else [constraint.high if constraint.high_open else constraint.high + 1]
        return low + high
    if isinstance(constraint, EvenAtLeast):
        return [constraint.low - 2, constraint.low + 1]
    if isinstance(constraint, PowerOfTwo):
        return [0, 3, 6]
    if isinstance(constraint, Listed):
        return [max(constraint.options) + 1]
    raise AssertionError(f"no invalid value known for {constraint!r}: add one here")


def _with(cfg: Config, dotted: str, value) -> Config:
    """cfg with the field called `dotted` set to value (no checks)."""
    if "." not in dotted:
        return dataclasses.replace(cfg, **{dotted: value})
    section, key = dotted.split(".")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: value})})


def test_every_declared_constraint_is_checked():
    cfg = load_config("toy2d")
    checked = 0
    for name, _, f in _sections(cfg):
        for constraint in f.metadata.get("constraints", ()):
            for value in _invalid_values(constraint):
                with pytest.raises(ConfigError) as error:
                    _with(cfg, name, value).validate()
                message = str(error.value)
                assert message.startswith(name) and str(value) in message, (name, value, message)
                checked += 1
    assert checked > 60


def test_every_float_field_must_be_finite():
    cfg = load_config("toy2d")
    floats = [name for name, section, f in _sections(cfg) if isinstance(getattr(section, f.name), float)]
    assert "guided.w_max" in floats and "diffusion.beta_end" in floats
    for name in floats:
        with pytest.raises(ConfigError, match=f"^{name} must be a finite number, got nan$"):
            _with(cfg, name, math.nan).validate()


@pytest.mark.parametrize("override, message", [
    ("train.adam_beta1=1.5", "train.adam_beta1 must lie in [0, 1), got 1.5"),
    ("distill.batch_size=0", "distill.batch_size must be > 0, got 0"),
    ("distill.warmup=-3", "distill.warmup must be >= 0, got -3"),
    ("guided.stage1_lr=-1.0", "guided.stage1_lr must be >= 0 (0: distill.lr), got -1.0"),
    ("model.emb_dim=6", None),  # even and >= 4: fine
    ("model.emb_dim=7", "model.emb_dim must be even and >= 4, got 7"),
    ("distill.start_steps=12", "distill.start_steps must be a power of two (1, 2, 4, ...), got 12"),
    ("data.channels=2", "data.channels must be 1 (grayscale), 3 (RGB) or 0 (the data set's own), got 2"),
    ("sample.variance=\"huge\"", "sample.variance: unknown value 'huge'; choose one of small, large, interp"),
    ("distill.parameterization=\"w\"", "distill.parameterization: unknown value 'w'; choose one of auto, same, eps, "
                                       "x, v, both"),
    ("mixed_precision=\"fp8\"", "mixed_precision: unknown value 'fp8'; choose one of no, fp16, bf16"),
])
def test_field_errors_name_field_value_and_what_is_allowed(override, message):
    if message is None:
        load_config("toy2d", [override])
        return
    with pytest.raises(ConfigError) as error:
        load_config("toy2d", [override])
    assert str(error.value) == message


@pytest.mark.parametrize("overrides, message", [
    (["model.arch=diffusers", "model.diffusers_unet='{}'"], "model.arch 'diffusers' is a discrete-time model"),
    (["model.arch=diffusers", "model.diffusers_unet='{}'", "diffusion.schedule=discrete", "train.label_dropout=0.1"],
     "train.label_dropout is for teachers trained here"),
    (["train.label_dropout=0.1", "data.conditional=false"], "trains a class-conditional model"),
    (["data.channels=3"], "data.channels = 3: fashion-mnist images have 1 channel"),
    (["guided.w_min=2.0", "guided.w_max=1.0"], "guided.w_min \\(2.0\\) must not exceed guided.w_max \\(1.0\\)"),
    (["diffusion.logsnr_min=5.0", "diffusion.logsnr_max=5.0"], "logsnr_min must be below diffusion.logsnr_max"),
])
def test_cross_field_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fashion_mnist", overrides)
    assert all(rule.__doc__ for rule in CROSS_FIELD_RULES)


def test_student_config_resolves_and_refuses_diverging_students():
    assert student_config(load_config("toy2d", ["model.parameterization=eps", "diffusion.weighting=snr",
                                                "distill.weighting=snr_plus1"])).model.parameterization == "v"
    with pytest.raises(ConfigError, match="distill.weighting: eps prediction with snr_trunc weighting diverges"):
        student_config(load_config("toy2d", ["model.parameterization=eps", "diffusion.weighting=snr",
                                             "distill.parameterization=same"]))
    resolved = resolve_distill(load_config("toy2d", ["model.parameterization=eps", "diffusion.weighting=snr"]))
    assert (resolved.distill.parameterization, resolved.distill.teacher_clip) == ("v", "noisy")
    assert resolved.distill.convert_updates == 2 * resolved.distill.updates_per_round


def test_config_choices_match_the_registries():
    from progdistill.data import images, toy2d
    from progdistill.diffusion import parameterization, samplers, schedules, weighting
    from progdistill.nets import presets

    assert choices.TOY_DISTRIBUTIONS == tuple(toy2d.TOY_DISTRIBUTIONS)
    assert choices.TOY_LABELLED == tuple(toy2d.TOY_LABELS)
    assert choices.IMAGE_DATASETS == images.IMAGE_DATASETS
    assert choices.NATIVE_CHANNELS == images._NATIVE_CHANNELS
    assert choices.NET_KINDS == presets.NET_KINDS
    assert choices.UNET_PRESETS == tuple(presets.UNET_PRESETS)
    assert choices.PARAMETERIZATIONS == tuple(parameterization.PARAMETERIZATIONS)
    assert choices.SCHEDULES == schedules.SCHEDULES
    assert choices.WEIGHTINGS == tuple(weighting.WEIGHTINGS)
    assert choices.VARIANCES == tuple(samplers.VARIANCES)
    assert choices.FORBIDDEN == weighting.FORBIDDEN


def test_importing_the_config_imports_no_network_code():
    code = ("import sys, progdistill.config; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'numpy', 'PIL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
