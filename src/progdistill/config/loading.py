"""Reading configs: TOML presets and files, `section.key=value` overrides and checkpoint records (strictly or
leniently); writing them as JSON. Every source is read in the current layout after `nest_optimizer_keys`, so the
flat optimizer keys of configs and checkpoints written before [train.optim] and [distill.optim] still load."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from .constraints import ConfigError
from .schema import Config, OptimConfig

# The sections whose optimizer settings moved into an `optim` sub-table, and the settings that moved.
OPTIM_SECTIONS = ("train", "distill")
OPTIM_FIELDS = frozenset(field.name for field in dataclasses.fields(OptimConfig))


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Return value converted to the annotated type tp, or raise ConfigError."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{name} must be of type {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported field type {tp}")  # pragma: no cover - guards new fields


def _field_default(cls: type, name: str) -> Any:
    """The default value of dataclass `cls`'s field `name` (a fresh one where the field has a factory)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()


def from_dict(cls: type, data: Any, prefix: str = "", default: Any = None) -> Any:
    """Build dataclass `cls` from nested dicts, refusing unknown keys and wrong types; fields left out keep their
    value in `default` (else cls's defaults), so a partial sub-table keeps its section's defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(f"unknown config key{where}: {', '.join(map(str, unknown))}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        name = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, name, _field_default(cls, key))
        else:
            kwargs[key] = _check_type(name, value, tp)
    return dataclasses.replace(cls() if default is None else default, **kwargs)


def _merge(base: dict, extra: dict) -> dict:
    """base with extra's values on top, nested tables merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nest_optimizer_keys(data: Any, notes: list[str] | None = None) -> Any:
    """data (a config as nested dicts) with the flat optimizer keys of [train] and [distill] (train.lr,
    distill.warmup, ...: the layout before [train.optim] and [distill.optim]) moved into their `optim` sub-table.
    A setting given both ways raises ConfigError naming both, or, with `notes` (a lenient read), keeps the nested
    one and says so there."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for section in OPTIM_SECTIONS:
        table = out.get(section)
        if not isinstance(table, dict) or not OPTIM_FIELDS & table.keys():
            continue
        flat = {key: value for key, value in table.items() if key in OPTIM_FIELDS}
        rest = {key: value for key, value in table.items() if key not in OPTIM_FIELDS}
        nested = table.get("optim", {})
        if not isinstance(nested, dict):  # reading names the sub-table that is not a table
            out[section] = rest
            continue
        for key in sorted(flat.keys() & nested.keys()):
            message = f"{section}.{key} and {section}.optim.{key} are the same setting, given twice"
            if notes is None:
                raise ConfigError(f"{message}: give only {section}.optim.{key}")
            notes.append(f"{message} ({section}.optim.{key} used)")
        out[section] = rest | {"optim": flat | nested}
    return out


def parse_override(text: str) -> dict:
    """'train.lr=1e-3' -> {'train': {'lr': 0.001}}; the value is read as TOML, or as a bare string if it is not
    (the key as written: `nest_optimizer_keys` reads flat optimizer keys)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=1e-3)")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted config key such as train.lr")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def preset_names() -> list[str]:
    """The names of the presets shipped with the package, sorted."""
    return sorted(p.name[:-5] for p in resources.files("progdistill.presets").iterdir() if p.name.endswith(".toml"))


def read_toml(source: str) -> dict:
    """A preset name (see `preset_names`) or a path to a TOML file, as a dict in the current layout."""
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
    else:
        res = resources.files("progdistill.presets") / f"{source}.toml"
        if not res.is_file():
            raise ConfigError(f"no preset called {source!r} and no such file; presets: {', '.join(preset_names())}")
        text = res.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {source}: invalid TOML: {e}") from None
    return nest_optimizer_keys(data)


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> Config:
    """Defaults (or `base`, e.g. a checkpoint's config), then a preset or TOML file, then `section.key=value`
    overrides (later ones win; one setting in its flat and nested spelling is an error); validated."""
    data = nest_optimizer_keys(dict(base or {}))
    if source:
        data = _merge(data, read_toml(source))
    command_line: dict = {}
    for text in overrides:
        command_line = _merge(command_line, parse_override(text))
    return from_dict(Config, _merge(data, nest_optimizer_keys(command_line))).validate()


def config_from_json(data: dict) -> Config:
    """The Config recorded in a checkpoint, to continue its run: fields this version no longer has (removed as
    unused) are dropped, flat optimizer keys read into their sub-table; every other value must still be valid."""
    return from_dict(Config, _known_fields(Config, nest_optimizer_keys(data))).validate()


def _known_fields(cls: type, data: Any) -> Any:
    """data without the keys dataclass `cls` (and its nested sections) no longer has."""
    if not isinstance(data, dict):
        return data
    hints = typing.get_type_hints(cls)
    return {k: (_known_fields(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v)
            for k, v in data.items() if k in hints}


def _lenient(cls: type, data: Any, prefix: str, notes: list[str], default: Any = None) -> Any:
    """Dataclass `cls` from data, skipping unknown keys and wrongly typed values (noted in `notes`); what is left
    out or skipped keeps its value in `default` (else cls's defaults)."""
    default = cls() if default is None else default
    if not isinstance(data, dict):
        notes.append(f"{prefix or 'config'} is not a table (defaults used)")
        return default
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in names:
            notes.append(f"{name} is unknown to this version (ignored)")
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _lenient(hints[key], value, name, notes, _field_default(cls, key))
        else:
            try:
                kwargs[key] = _check_type(name, value, hints[key])
            except ConfigError as e:
                notes.append(f"{e} (default used)")
    return dataclasses.replace(default, **kwargs)


def config_from_record(data: Any) -> tuple[Config, list[str]]:
    """The training config a checkpoint records, read leniently: unknown or renamed fields are skipped, values
    of the wrong type take their defaults; returns it with notes on what was skipped and why it does not validate
    (it is provenance: loading a checkpoint needs only the record's model block). Flat optimizer keys are read
    into their sub-table."""
    notes: list[str] = []
    cfg = _lenient(Config, nest_optimizer_keys(data, notes), "", notes)
    try:
        cfg.validate()
    except ConfigError as e:
        notes.append(f"it does not validate: {e}")
    return cfg, notes


def dump_json(config: Config) -> str:
    """The config as sorted, indented JSON (as recorded beside checkpoints)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


