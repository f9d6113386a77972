"""Typed, validated configuration: dataclasses read from TOML presets, overridden from the command line,
written as JSON beside every checkpoint. Every field declares its constraint; every error names the field.

Importing this package imports neither torch nor diffusers (the names it checks against are in `choices`)."""

from .constraints import ConfigError, check_distill_steps, check_fields, is_power_of_two
from .loading import (config_from_json, config_from_record, dump_json, from_dict, load_config, parse_override,
                      preset_names, read_toml)
from .resolve import INTERCHANGEABLE_PARAMETERIZATIONS, resolve_distill, student_config
from .schema import (CROSS_FIELD_RULES, Config, DataConfig, DiffusionConfig, DistillConfig, GuidedConfig,
                     ModelConfig, OptimConfig, PerfConfig, SampleConfig, TrainConfig)

__all__ = [
    "CROSS_FIELD_RULES", "Config", "ConfigError", "DataConfig", "DiffusionConfig", "DistillConfig", "GuidedConfig",
    "INTERCHANGEABLE_PARAMETERIZATIONS", "ModelConfig", "OptimConfig", "PerfConfig", "SampleConfig", "TrainConfig",
    "check_distill_steps", "check_fields", "config_from_json", "config_from_record", "dump_json", "from_dict",
    "is_power_of_two", "load_config", "parse_override", "preset_names", "read_toml", "resolve_distill",
    "student_config",
]
