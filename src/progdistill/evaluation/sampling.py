"""Deprecated location of `generate` and `SAMPLERS`: they live in `progdistill.sampling` (below both training and
evaluation). The old names still work here, with a DeprecationWarning, until they are removed in a later minor
version."""

from __future__ import annotations

import warnings
from typing import Any

from .. import sampling as _sampling

MOVED = ("SAMPLERS", "generate")


def __getattr__(name: str) -> Any:
    """`progdistill.sampling`'s object for a moved name, with a DeprecationWarning that says where it went."""
    if name not in MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"progdistill.evaluation.sampling.{name} moved to progdistill.sampling.{name}; import it from "
                  "there (this alias will be removed in a later minor version)", DeprecationWarning, stacklevel=2)
    return getattr(_sampling, name)


def __dir__() -> list[str]:
    """The moved names, so that completion and `dir()` list them."""
    return sorted([*globals(), *MOVED])
