"""Conditioning: what a network is told besides the noisy input and its noise level, batch-first.

A condition is one tensor (class ids [B], or a text encoder's hidden states [B, L, D]) or a mapping of named
batch-first tensors, e.g. SD3's {"encoder_hidden_states": [B, L, D], "pooled_projections": [B, P]}, as
k-diffusion's `extra_args` and diffusers' `added_cond_kwargs` pass them; None means unconditional. The data
streams, the samplers, guidance and the training loops move conditions only through these functions, so a new
key (pooled embeddings, token ids, size ids) needs no change there: the network that reads it is the only code
that knows its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

Condition = Tensor | Mapping[str, Tensor] | None


def apply(fn: Callable[[Tensor], Tensor], cond: Condition) -> Condition:
    """`fn` on every tensor of `cond` (a mapping stays a mapping with the same keys; None stays None)."""
    if cond is None:
        return None
    if isinstance(cond, Mapping):
        return {k: fn(v) for k, v in cond.items()}
    return fn(cond)


def rows(cond: Condition, index) -> Condition:
    """The rows `index` (an int tensor, a slice) of every tensor of `cond`."""
    return apply(lambda t: t[index], cond)


def to(cond: Condition, device, non_blocking: bool = False) -> Condition:
    return apply(lambda t: t.to(device, non_blocking=non_blocking), cond)


def cat(conds: Sequence[Condition]) -> Condition:
    """The conditions of several batches, one after the other (all tensors, or all mappings with the same keys)."""
    first = conds[0]
    if first is None:
        return None
    if isinstance(first, Mapping):
        return {k: torch.cat([c[k] for c in conds]) for k in first}
    return torch.cat(list(conds))


def batch_size(cond: Condition) -> int | None:
    if cond is None:
        return None
    if isinstance(cond, Mapping):
        return int(next(iter(cond.values())).shape[0])
    return int(cond.shape[0])


def expand(null: Tensor | Mapping[str, Tensor], b: int) -> Tensor | dict[str, Tensor]:
    """A condition of one example without its batch axis (e.g. the empty caption's hidden states [L, D]), repeated
    for `b` examples."""
    return apply(lambda t: t.expand(b, *t.shape), null)


def null_like(labels: Tensor | Mapping[str, Tensor], null: int | Tensor | Mapping[str, Tensor]) -> Condition:
    """The null condition for every row of `labels`: the null class (an index), or the empty caption's condition
    (a tensor [L, D], or a mapping of tensors without their batch axis) repeated for every example. A key of
    `labels` that the null mapping lacks keeps each row's own value (SDXL's time_ids: the empty caption at the same
    image size and crop, as the stock pipeline's negative branch)."""
    if isinstance(null, Mapping):
        return {k: null[k].to(labels[k].device, labels[k].dtype).expand_as(labels[k]) if k in null else labels[k]
                for k in labels}
    if isinstance(null, Tensor):
        return null.to(labels.device, labels.dtype).expand_as(labels)
    return torch.full_like(labels, int(null))
