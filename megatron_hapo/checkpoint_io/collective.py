"""Fail on every rank together: a check that fails on one rank must not leave the others in a collective."""

from __future__ import annotations

import torch.distributed as dist

from megatron_hapo.models.errors import ConversionError


def raise_if_any(error: ConversionError | None, group=None) -> None:
    """Collective over ``group`` (default: the world): if any rank passes an error, every rank raises one.

    Each rank re-raises its own error, or (if it had none) the first failing rank's, of the same type
    and naming that (global) rank. Without a process group, or in a group of one, it just raises ``error``.
    """
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        if error is not None:
            raise error
        return
    everyone: list = [None] * dist.get_world_size(group)
    mine = None if error is None else (type(error), str(error), dist.get_rank())
    dist.all_gather_object(everyone, mine, group=group)
    if error is not None:
        raise error
    for item in everyone:
        if item is not None:
            cls, message, rank = item
            raise cls(f"(reported by rank {rank}) {message}")
