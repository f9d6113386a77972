"""torch.compile for the networks that run most (a training step's student forward and backward, the teacher's
evaluations in distillation, the sampler's network), with a fall-back: when compilation fails, a warning says why
and the call runs eager. On CUDA the sampler's network is compiled in "reduce-overhead" mode (CUDA graphs), which
removes most of the launch cost of small batches.

Compiled graphs are cached on disk by inductor (its FX-graph and AOT-autograd caches, on by default), keyed by the
graph and not by the weights: the next round's student (same shapes, new weights) and a resumed run reuse them
instead of compiling again."""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch


class CompiledOrEager:
    """`fn` through torch.compile; if compiling or running the compiled graph raises on the first call, warn once
    and call `fn` itself from then on (an error that eager raises too is raised by eager, unchanged)."""

    def __init__(self, fn: Callable[..., Any], what: str, **compile_options: Any):
        self.fn, self.what = fn, what
        self.compiled: Callable[..., Any] | None = torch.compile(fn, **compile_options)
        self.checked = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        if self.checked:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure of the compiler stack falls back to eager
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"progdistill: warning: torch.compile of {self.what} failed ({type(error).__name__}: "
                  f"{first_line[:200]}); running it eager (set perf.compile = false to skip compiling)",
                  file=sys.stderr)
            self.compiled = None
            return self.fn(*args, **kwargs)
        self.checked = True
        return out


def maybe_compiled(fn: Callable[..., Any], what: str, enabled: bool, **compile_options: Any) -> Callable[..., Any]:
    """`fn` compiled with a fall-back to eager when `enabled` (perf.compile), else `fn` itself."""
    return CompiledOrEager(fn, what, **compile_options) if enabled else fn
