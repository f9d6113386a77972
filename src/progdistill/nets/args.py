"""Constructor arguments as a checkpoint stores them: resolved against the constructor's signature, as JSON values.
Below both the networks (which resolve their own arguments) and the model spec (which builds them)."""

from __future__ import annotations

import inspect
import json
from typing import Any


class SpecError(ValueError):
    """A model spec that is incomplete or that this version cannot build."""


def _jsonable(value: Any) -> Any:
    """Tuples as lists, as they come back from JSON, so a spec compares equal to its own round trip."""
    return json.loads(json.dumps(value))


def resolve_args(fn, args: dict, what: str) -> dict:
    """`args` completed with the defaults of `fn`'s keyword parameters; unknown names are a SpecError."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n != "self"}
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise SpecError(f"{what} does not take {', '.join(unknown)} (the checkpoint was probably written by a newer "
                        "progdistill or with other library versions: upgrade them)")
    missing = sorted(n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args)
    if missing:
        raise SpecError(f"{what} needs {', '.join(missing)}")
    full = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    return _jsonable(full | dict(args))
