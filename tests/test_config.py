import contextlib
import dataclasses
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.cli import main
from progdistill.config import (CROSS_FIELD_RULES, Config, ConfigError, OptimConfig, config_from_json,
                                config_from_record, dump_json, from_dict, load_config, parse_override, preset_names,
                                resolve_distill, student_config)
from progdistill.config import choices
from progdistill.config.constraints import Bounds, EvenAtLeast, Listed, OneOf, PowerOfTwo


def test_defaults_and_preset_validate():
    assert "toy2d" in preset_names()
    cfg = load_config("toy2d")
    assert cfg.model.arch == "mlp" and cfg.distill.weighting == "snr_trunc"
    assert load_config("toy2d", ["train.lr=3e-4", "distill.start_steps=64"]).train.optim.lr == 3e-4


def test_config_round_trips_through_json():
    cfg = load_config("toy2d", ["model.parameterization=x", "diffusion.weighting=snr_trunc"])
    assert from_dict(Config, json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key in \\[train\\]: lrr"),
    ("training.lr=1", "unknown config key: training"),
    ("train.lr=abc", "train.optim.lr must be of type float"),
    ("train.optim.lr=abc", "train.optim.lr must be of type float"),
    ("train.steps=1.5", "train.steps must be of type int"),
    ("train.lr=-1e-3", "train.optim.lr must be > 0"),
    ("train.lr=0", "train.optim.lr must be > 0"),
    ("train.optim.lr=0", "train.optim.lr must be > 0"),
    ("train.lr=inf", "train.optim.lr must be a finite number"),
    ("train.optim.lrr=1", "unknown config key in \\[train.optim\\]: lrr"),
    ("distill.optim=3", "distill.optim must be a table"),
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


_keys = st.sampled_from(["data", "model", "train", "distill", "sample", "diffusion", "device", "x", "lr", "optim",
                         "steps", "name", "parameterization", "start_steps", "target_steps", "weighting", "batch_size"])
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


def _with(cfg, dotted: str, value):
    """cfg (a config or one of its sections) with the field called `dotted` set to value (no checks)."""
    if "." not in dotted:
        return dataclasses.replace(cfg, **{dotted: value})
    section, rest = dotted.split(".", 1)
    return dataclasses.replace(cfg, **{section: _with(getattr(cfg, section), rest, value)})


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
    ("train.adam_beta1=1.5", "train.optim.adam_beta1 must lie in [0, 1), got 1.5"),
    ("train.optim.ema_decay=1.0", "train.optim.ema_decay must lie in [0, 1), got 1.0"),
    ("distill.batch_size=0", "distill.batch_size must be > 0, got 0"),
    ("distill.warmup=-3", "distill.optim.warmup must be >= 0, got -3"),
    ("distill.optim.grad_clip=-1.0", "distill.optim.grad_clip must be >= 0, got -1.0"),
    ("guided.stage1_lr=-1.0", "guided.stage1_lr must be >= 0 (0: distill.optim.lr), got -1.0"),
    ("model.emb_dim=6", None),  # even and >= 4: fine
    ("model.emb_dim=7", "model.emb_dim must be even and >= 4, got 7"),
    ("distill.start_steps=12", "distill.start_steps must be a power of two (1, 2, 4, ...), got 12"),
    ("data.channels=2", "data.channels must be 1 (grayscale), 3 (RGB) or 0 (the data set's own), got 2"),
    ("sample.variance=\"huge\"", "sample.variance: unknown value 'huge'; choose one of small, large, interp"),
    ("distill.parameterization=\"w\"", "distill.parameterization: unknown value 'w'; choose one of auto, same, eps, "
                                       "x, v, both, flow"),
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


# ------------------------------------------------------------------ optimizer sub-tables [train.optim], [distill.optim]

OPTIM_KEYS = [f.name for f in dataclasses.fields(OptimConfig)]
FLAT_SETTINGS = ["train.lr=3e-4", "train.warmup=7", "train.grad_clip=0.5", "train.adam_beta1=0.8",
                 "train.adam_beta2=0.99", "train.ema_decay=0.9", "distill.lr=2e-5", "distill.warmup=3",
                 "distill.ema_decay=0.5"]
FROZEN_TEACHER = Path(__file__).parent / "data" / "frozen_v1" / "mlp" / "teacher.json"


def _nested(setting: str) -> str:
    """'train.lr=1' -> 'train.optim.lr=1'."""
    section, rest = setting.split(".", 1)
    return f"{section}.optim.{rest}"


def _flat_layout(cfg: Config) -> dict:
    """cfg as nested dicts in the layout before the optimizer sub-tables (what older checkpoints recorded)."""
    data = cfg.to_dict()
    for section in ("train", "distill"):
        data[section] = {k: v for k, v in data[section].items() if k != "optim"} | data[section]["optim"]
    return data


def test_flat_and_nested_optimizer_keys_give_the_same_config(tmp_path):
    nested = load_config("toy2d", [_nested(s) for s in FLAT_SETTINGS])
    assert load_config("toy2d", FLAT_SETTINGS) == nested
    assert (nested.train.optim.lr, nested.distill.optim.warmup, nested.distill.optim.ema_decay) == (3e-4, 3, 0.5)
    old_file, new_file = tmp_path / "old.toml", tmp_path / "new.toml"
    old_file.write_text("[train]\nsteps = 10\nlr = 3e-4\nema_decay = 0.9\n[distill]\nlr = 2e-5\n")
    new_file.write_text("[train]\nsteps = 10\n[train.optim]\nlr = 3e-4\nema_decay = 0.9\n"
                        "[distill.optim]\nlr = 2e-5\n")
    assert load_config(str(old_file)) == load_config(str(new_file))
    # A flat override replaces the value a nested preset table sets, and the other way round.
    assert load_config(str(new_file), ["train.lr=1e-2"]).train.optim.lr == 1e-2
    assert load_config(str(old_file), ["train.optim.lr=1e-2"]).train.optim.lr == 1e-2
    assert load_config(None, base=_flat_layout(nested)) == nested


def test_a_partial_optimizer_table_keeps_its_sections_defaults():
    cfg = load_config(None, ["distill.optim.lr=1e-4", "train.optim.warmup=3"])
    assert cfg.distill.optim == OptimConfig(lr=1e-4, warmup=0, ema_decay=0.0)  # [distill]'s defaults, not [train]'s
    assert cfg.train.optim == OptimConfig(warmup=3)
    assert Config().distill.optim == OptimConfig(lr=5e-4, warmup=0, ema_decay=0.0)


@pytest.mark.parametrize("key", OPTIM_KEYS)
def test_flat_and_nested_spelling_of_one_setting_is_an_error(key, tmp_path):
    message = f"^train.{key} and train.optim.{key} are the same setting, given twice: give only train.optim.{key}$"
    with pytest.raises(ConfigError, match=message):
        load_config("toy2d", [f"train.{key}=0.5", f"train.optim.{key}=0.5"])
    both = tmp_path / "both.toml"
    both.write_text(f"[distill]\n{key} = 0.5\n[distill.optim]\n{key} = 0.5\n")
    with pytest.raises(ConfigError, match=f"distill.{key} and distill.optim.{key}"):
        load_config(str(both))
    with pytest.raises(ConfigError, match=f"distill.{key} and distill.optim.{key}"):
        config_from_json({"distill": {key: 0.5, "optim": {key: 0.5}}})
    cfg, notes = config_from_record({"distill": {"warmup": 9, key: 1, "optim": {key: 0}}})
    note = f"distill.{key} and distill.optim.{key} are the same setting, given twice (distill.optim.{key} used)"
    assert note in notes
    assert getattr(cfg.distill.optim, key) == 0 and (key == "warmup" or cfg.distill.optim.warmup == 9)


def test_an_old_checkpoints_flat_config_loads():
    recorded = json.loads(FROZEN_TEACHER.read_text())["config"]
    assert "lr" in recorded["train"] and "optim" not in recorded["train"]  # written before the sub-tables
    strict = config_from_json(recorded)
    lenient, notes = config_from_record(recorded)
    assert strict == lenient and not [n for n in notes if not n.startswith("sample.")]
    assert (strict.train.optim.lr, strict.train.optim.warmup, strict.train.optim.ema_decay) == (1e-3, 5, 0.9)
    assert strict.distill.optim == OptimConfig(lr=5e-4, warmup=0, ema_decay=0.0)
    cfg = load_config("toy2d", ["distill.optim.lr=1e-4", "train.ema_decay=0.5", "guided.stage1_lr=1e-3"])
    assert config_from_json(_flat_layout(cfg)) == cfg and config_from_record(_flat_layout(cfg)) == (cfg, [])


@pytest.mark.parametrize("name", preset_names())
def test_presets_load_with_optimizer_tables(name):
    cfg = load_config(name, ['data.root="/data"'])
    assert cfg.train.optim.lr > 0 and cfg.distill.optim.lr > 0
    written = json.loads(dump_json(cfg))
    for section in ("train", "distill"):
        assert written[section]["optim"] == dataclasses.asdict(getattr(cfg, section).optim)
        assert not set(OPTIM_KEYS) & set(written[section])  # the recorded layout is nested
    assert config_from_json(written) == cfg


def test_config_command_prints_the_nested_layout():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", "--set", "train.lr=2e-3"]) == 0
    printed = json.loads(out.getvalue())
    assert printed["train"]["optim"]["lr"] == 2e-3 and "lr" not in printed["train"]
    assert printed["distill"]["optim"]["ema_decay"] == 0.0
