"""DAPO dynamic sampling: drop the groups that carry no learning signal.

A group whose responses are all correct or all wrong has zero group-relative advantage once the
reward is just correctness. The filter looks at **binary accuracy**, never at the shaped reward:
with the overlong penalty, an all-correct group has slightly different rewards and would survive a
reward-based filter, after which std normalisation turns a tiny length penalty into a unit-size
negative advantage (HAPO_SPEC B10; an all-fail group surviving destroyed a policy in verl-recipe#125).

    keep_g = min_{i∈g} acc_i ≠ max_{i∈g} acc_i          (some right, some wrong)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from megatron_hapo.algorithms.advantages import GroupIds, group_index


class GroupFilterResult(NamedTuple):
    keep: torch.Tensor  # [B] bool: the response's group is kept
    kept_groups: int
    total_groups: int


def dynamic_sampling_filter(accuracy: torch.Tensor, group_ids: GroupIds) -> GroupFilterResult:
    """Keep-mask [B] of the responses whose group has mixed accuracy (see module docstring).

    ``accuracy`` [B] must be bool or 0/1 valued: passing a shaped reward raises, because that is the
    known way to get this filter wrong. Groups of one response are always dropped (no spread).
    """
    if accuracy.dim() != 1:
        raise ValueError(f"accuracy must be [batch], got shape {tuple(accuracy.shape)}")
    if accuracy.dtype != torch.bool:
        binary = (accuracy == 0) | (accuracy == 1)
        if not bool(binary.all()):
            raise ValueError(
                "dynamic_sampling_filter needs binary accuracy (bool or 0/1), got other values; pass the "
                "verifier's correctness ('acc'), not the shaped reward (overlong penalty makes rewards continuous)"
            )
    acc = accuracy.to(torch.float32)
    index, n_groups = group_index(group_ids, acc.shape[0], acc.device)
    lo = torch.full((n_groups,), float("inf"), device=acc.device).scatter_reduce(0, index, acc, "amin")
    hi = torch.full((n_groups,), float("-inf"), device=acc.device).scatter_reduce(0, index, acc, "amax")
    keep_group = lo != hi
    return GroupFilterResult(keep_group[index], int(keep_group.sum()), n_groups)
