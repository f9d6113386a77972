"""The budget's one axis: network evaluations counted as they happen, and forward-equivalent evaluations.

A players phase (training/players.py) sends every network call of its objective through an `EvalCounter`, which adds
the call's rows (of every process) to that network's forward count and, when a gradient later flows back through the
call's output, to its backward count. Reports put every method on one axis, forward-equivalent evaluations per
training image summed over the run: a forward counts one, a backward two (the usual estimate; a backward through a
frozen network, which needs no weight gradients, costs less, so this over-counts the players' methods a little).

The regression methods (pd, cd, tract) record (teacher, self-teacher) evaluations per image as before; their student
costs a forward and a backward per image, 3 forward-equivalents, so `forward_equivalent` is exact for them too.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..checkpoint import STUDENT_FE_PER_IMAGE, forward_equivalent  # noqa: F401 (re-exported)

BACKWARD_FE = 2


class EvalCounter:
    """Forward and backward evaluations (in examples, summed over processes) per network name."""

    def __init__(self, world: int = 1):
        self.world = world
        self.forward: dict[str, int] = {}
        self.backward: dict[str, int] = {}

    def call(self, name: str, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs), counted as a forward of network `name` over args[0]'s rows (and a backward of it
        once a gradient flows back through the result)."""
        out = fn(*args, **kwargs)
        rows = int(args[0].shape[0]) * self.world
        self.forward[name] = self.forward.get(name, 0) + rows
        return self.backward_through(name, out, rows)

    def backward_through(self, name: str, out, rows: int | None = None):
        """`out` (an output of network `name`, e.g. a block's features), counted as a backward of it over its rows
        once a gradient flows back through it."""
        if torch.is_tensor(out) and out.requires_grad:
            rows = int(out.shape[0]) * self.world if rows is None else rows
            out.register_hook(lambda grad: self._backward(name, rows))
        return out

    def counted(self, name: str, fn: Callable) -> Callable:
        """`fn` with every call counted under `name`."""
        return lambda *args, **kwargs: self.call(name, fn, *args, **kwargs)

    def _backward(self, name: str, rows: int) -> None:
        self.backward[name] = self.backward.get(name, 0) + rows

    def state_dict(self) -> dict:
        return {"forward": dict(self.forward), "backward": dict(self.backward)}

    def load_state_dict(self, state: dict) -> None:
        self.forward = {k: int(v) for k, v in state["forward"].items()}
        self.backward = {k: int(v) for k, v in state["backward"].items()}

    def forward_equivalent(self) -> int:
        return sum(self.forward.values()) + BACKWARD_FE * sum(self.backward.values())

    def added_to(self, budget: dict, updates: dict[str, int], images_per_update: int) -> dict:
        """The fields of `budget` (what was spent before the phase) once the phase's counted evaluations and its
        players' `updates` are added; the first player's updates are the student's."""
        student = next(iter(updates))
        evals = {k: dict(v) for k, v in budget.get("evals", {}).items()}
        for kind, counts in (("forward", self.forward), ("backward", self.backward)):
            for name, n in counts.items():
                entry = evals.setdefault(name, {"forward": 0, "backward": 0})
                entry[kind] += n
        players = {k: dict(v) for k, v in budget.get("players", {}).items()}
        for name, n in updates.items():
            entry = players.setdefault(name, {"updates": 0, "images": 0})
            entry["updates"] += n
            entry["images"] += n * images_per_update
        return {"student_updates": budget["student_updates"] + updates[student],
                "images_seen": budget["images_seen"] + updates[student] * images_per_update,
                "teacher_evals": budget["teacher_evals"] + self.forward.get("teacher", 0),
                "self_evals": budget["self_evals"], "evals": evals, "players": players,
                "forward_equivalent": forward_equivalent(budget) + self.forward_equivalent()}

