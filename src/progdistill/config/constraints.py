"""Per-field constraints declared on the config dataclasses, and the one validator that checks them all."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CONSTRAINTS = "constraints"  # the key of a field's metadata that holds its constraints


class ConfigError(ValueError):
    """A configuration value that is missing, unknown, of the wrong type or out of range."""


class Constraint(Protocol):
    """What a field's value must satisfy."""

    def violation(self, name: str, value: Any) -> str | None:
        """The error message for `value` of the field called `name`, or None when it is allowed."""


def is_power_of_two(n: int) -> bool:
    """Whether n is an int 1, 2, 4, 8, ..."""
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


def check_distill_steps(start: int, target: int, *, start_name="distill.start_steps",
                        target_name="distill.target_steps") -> None:
    """Both step counts powers of two, and the target at or below the start."""
    for name, value in ((start_name, start), (target_name, target)):
        if not is_power_of_two(value):
            raise ConfigError(f"{name} must be a power of two (1, 2, 4, ...), got {value}")
    if target > start:
        raise ConfigError(f"{target_name} ({target}) is above {start_name} ({start}): distillation halves the steps")


@dataclass(frozen=True)
class OneOf:
    """A value from a list of names."""

    options: tuple[str, ...]

    def violation(self, name: str, value: Any) -> str | None:
        """The error naming the unknown value and every option, or None."""
        if value in self.options:
            return None
        return f"{name}: unknown value {value!r}; choose one of {', '.join(self.options)}"


@dataclass(frozen=True)
class Bounds:
    """A number from `low` (open or closed) up to an optional `high`; `note` says what a special value means."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = True
    note: str = ""

    def violation(self, name: str, value: Any) -> str | None:
        """The error naming the value and the allowed range, or None."""
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if above and below:
            return None
        note = f" ({self.note})" if self.note else ""
        if self.high is None:
            return f"{name} must be {'>' if self.low_open else '>='} {self.low}{note}, got {value}"
        interval = f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"{name} must lie in {interval}{note}, got {value}"


@dataclass(frozen=True)
class EvenAtLeast:
    """An even int no smaller than `low`."""

    low: int

    def violation(self, name: str, value: Any) -> str | None:
        """The error naming the value, or None."""
        if value >= self.low and value % 2 == 0:
            return None
        return f"{name} must be even and >= {self.low}, got {value}"


@dataclass(frozen=True)
class PowerOfTwo:
    """An int 1, 2, 4, 8, ..."""

    def violation(self, name: str, value: Any) -> str | None:
        """The error naming the value, or None."""
        return None if is_power_of_two(value) else f"{name} must be a power of two (1, 2, 4, ...), got {value}"


@dataclass(frozen=True)
class Listed:
    """A value from a short list whose meanings `described` spells out (e.g. "1 (grayscale) or 3 (RGB)")."""

    options: tuple[Any, ...]
    described: str

    def violation(self, name: str, value: Any) -> str | None:
        """The error naming the value and what each option means, or None."""
        return None if value in self.options else f"{name} must be {self.described}, got {value}"


def one_of(*option_lists: Sequence[str]) -> OneOf:
    """A choice among the names of every list given, in order."""
    return OneOf(tuple(name for options in option_lists for name in options))


def positive() -> Bounds:
    """A number > 0."""
    return Bounds(0, low_open=True)


def at_least(low: float, note: str = "") -> Bounds:
    """A number >= low; `note` says what a special value means."""
    return Bounds(low, note=note)


def unit_interval() -> Bounds:
    """A number in [0, 1): a probability that is not certainty, or a decay rate."""
    return Bounds(0, 1)


def checked(default: Any, *constraints: Constraint) -> Any:
    """A dataclass field with `default` whose value must satisfy every one of `constraints`."""
    return dataclasses.field(default=default, metadata={CONSTRAINTS: constraints})


def field_constraints(field: dataclasses.Field) -> tuple[Constraint, ...]:
    """The constraints a dataclass field declares (none for most)."""
    return field.metadata.get(CONSTRAINTS, ())


def check_fields(section: Any, prefix: str = "") -> None:
    """Check every field of dataclass `section` (nested sections included): floats finite, then each declared
    constraint; raise ConfigError for the first value that breaks one."""
    for field in dataclasses.fields(section):
        name, value = prefix + field.name, getattr(section, field.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, name + ".")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        for constraint in field_constraints(field):
            message = constraint.violation(name, value)
            if message:
                raise ConfigError(message)
