"""Outcome-reward advantages: Token-Level Group Average (HAPO, spec §4) and GRPO (the baseline).

A group g is the set of responses to one prompt (same ``group_ids`` entry). Response i has a
scalar reward R_i and L_i valid tokens (row i of ``mask``). Both estimators return [batch, seq]
advantages that are 0 at padding; they run without autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from megatron_hapo.algorithms.registry import register_advantage

GroupIds = torch.Tensor | Sequence


class GroupTokenMoments(NamedTuple):
    """Per-group token statistics of TLGA: ``index`` [B] maps a response to its group 0..G−1."""

    index: torch.Tensor  # [B] int64
    mean: torch.Tensor  # [G]  μ_g = Σ_i L_i R_i / Σ_i L_i
    std: torch.Tensor  # [G]  σ_g = sqrt(Σ_i L_i (R_i − μ_g)² / Σ_i L_i)   (population, over tokens)
    tokens: torch.Tensor  # [G]  Σ_i L_i


def group_index(
    group_ids: GroupIds, batch: int, device: torch.device | None = None
) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids [B] (int tensor, or any sequence of hashables such as uid strings) to 0..G−1."""
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dim() != 1 or group_ids.numel() != batch:
            raise ValueError(f"group_ids must have shape [{batch}], got {tuple(group_ids.shape)}")
        if group_ids.is_floating_point():
            raise TypeError("group_ids must be integers (or a sequence of hashable uids), not floats")
        _, inverse = torch.unique(group_ids, return_inverse=True)
        return inverse.to(device or group_ids.device), int(inverse.max()) + 1 if batch else 0
    ids = list(group_ids)
    if len(ids) != batch:
        raise ValueError(f"group_ids has {len(ids)} entries but the batch has {batch} responses")
    first_seen: dict = {}
    inverse = torch.tensor([first_seen.setdefault(g, len(first_seen)) for g in ids], dtype=torch.int64)
    return inverse.to(device), len(first_seen)


def _check_inputs(rewards: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be [batch, seq], got shape {tuple(mask.shape)}")
    if rewards.dim() != 1 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(
            f"rewards must be one scalar per response, shape [{mask.shape[0]}], got {tuple(rewards.shape)}"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; fix the reward function before computing advantages")


def _scatter_sum(values: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _weighted_group_mean(
    r: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Σ_i w_i R_i / Σ_i w_i per group, computed as ref_g + Σ_i w_i (R_i − ref_g) / Σ_i w_i with ref_g the group's
    largest reward: a group whose rewards are all equal gets that reward exactly, so its deviations, σ and
    advantages are exactly 0, as the spec's σ_g = 0 makes them. (Summed directly, a reward that float32 does not
    hold exactly, −1.1 say, left a mean 1e-7 off, and (R − μ)/(σ + 1e-6) turned that into advantages of 0.1.)
    A group without weight gets its reference."""
    ref = torch.full((n_groups,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, index, r, reduce="amax"
    )
    ref = torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref))  # a group of no response: unused
    total = _scatter_sum(weights, index, n_groups)
    return ref + _scatter_sum(weights * (r - ref[index]), index, n_groups) / total.clamp_min(1)


def group_token_moments(rewards: torch.Tensor, mask: torch.Tensor, group_ids: GroupIds) -> GroupTokenMoments:
    """μ_g and σ_g of the reward broadcast to every valid token of the group (see :class:`GroupTokenMoments`).

    A group without valid tokens gets μ = σ = 0 (the released code would produce NaN).
    """
    _check_inputs(rewards, mask)
    work = torch.promote_types(rewards.dtype, torch.float32)
    r = rewards.detach().to(work)
    lengths = mask.to(work).sum(-1)
    index, n_groups = group_index(group_ids, r.shape[0], r.device)
    tokens = _scatter_sum(lengths, index, n_groups)
    mean = torch.where(
        tokens > 0, _weighted_group_mean(r, lengths, index, n_groups), torch.zeros_like(tokens)
    )
    var = _scatter_sum(lengths * (r - mean[index]).square(), index, n_groups) / tokens.clamp_min(1)
    return GroupTokenMoments(index, mean, var.sqrt(), tokens)


def _grpo_per_response(
    r: torch.Tensor, index: torch.Tensor, n_groups: int, eps: float, norm_by_std: bool
) -> torch.Tensor:
    """GRPO_i = (R_i − mean_g R) / (std_g R + eps), std Bessel-corrected over the group's responses.

    Singleton groups use mean 0 and std 1 (so GRPO_i = R_i), as verl and the released HAPO do.
    """
    count = _scatter_sum(torch.ones_like(r), index, n_groups)
    mean = _weighted_group_mean(r, torch.ones_like(r), index, n_groups)
    var = _scatter_sum((r - mean[index]).square(), index, n_groups) / (count - 1).clamp_min(1)
    single = count < 2
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), var.sqrt())
    centred = r - mean[index]
    return centred / (std[index] + eps) if norm_by_std else centred


@register_advantage("grpo", options=lambda algo: {"norm_by_std": algo.norm_adv_by_std})
def grpo_advantage(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: GroupIds,
    eps: float = 1e-6,
    norm_by_std: bool = True,
) -> torch.Tensor:
    """GRPO advantages [B, T], 0 at padding:

        A_{i,t} = M_{i,t} · (R_i − mean_g R) / (std_g R + eps)     (std unbiased over the G responses)
        A_{i,t} = M_{i,t} · (R_i − mean_g R)                       if not norm_by_std (Dr. GRPO)

    A group of one response uses mean 0, std 1 (verl's rule): its advantage is R_i itself.
    """
    _check_inputs(rewards, mask)
    with torch.no_grad():
        work = torch.promote_types(rewards.dtype, torch.float32)
        r = rewards.detach().to(work)
        index, n_groups = group_index(group_ids, r.shape[0], r.device)
        per_response = _grpo_per_response(r, index, n_groups, eps, norm_by_std)
        return torch.where(mask.bool(), per_response[:, None], torch.zeros((), dtype=work, device=r.device))


def _tlga_options(algo) -> dict:
    threshold = algo.tlga_fallback_threshold  # null: never fall back
    return {
        "fallback_threshold": math.inf if threshold is None else threshold,
        "fallback_counts_padding": algo.tlga_fallback_counts_padding,
        "norm_by_std": algo.norm_adv_by_std,
    }


@register_advantage("tlga", "hapo", options=_tlga_options)
def token_level_group_average(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: GroupIds,
    eps: float = 1e-6,
    fallback_threshold: float = 5.0,
    fallback_counts_padding: bool = False,
    norm_by_std: bool = True,
) -> torch.Tensor:
    """Token-Level Group Average advantages [B, T], 0 at padding (HAPO_SPEC §4):

        μ_g = Σ_i L_i R_i / Σ_i L_i,   σ_g = sqrt(Σ_i L_i (R_i − μ_g)² / Σ_i L_i)
        Â_i = (R_i − μ_g) / (σ_g + eps)        (R_i − μ_g if not norm_by_std)
        A_{i,t} = M_{i,t} · Â_i,   so  Σ_i L_i Â_i = 0 in every group

    Fallback (as released): if some |Â| ≥ fallback_threshold in the group, the whole group takes the
    GRPO advantage (:func:`grpo_advantage`, unbiased sequence std). The check looks at the group's
    valid tokens; ``fallback_counts_padding=True`` also counts its padded positions, whose released
    value is −μ_g/(σ_g + eps) (spec B8: spurious fallbacks with continuous rewards).
    """
    _check_inputs(rewards, mask)
    if fallback_threshold <= 0:
        raise ValueError(f"fallback_threshold must be > 0, got {fallback_threshold}")
    with torch.no_grad():
        moments = group_token_moments(rewards, mask, group_ids)
        index, n_groups = moments.index, moments.mean.shape[0]
        r = rewards.detach().to(moments.mean.dtype)
        lengths = mask.bool().sum(-1)
        scale = moments.std + eps if norm_by_std else torch.ones_like(moments.std)
        normed = (r - moments.mean[index]) / scale[index]

        tripped = ((lengths > 0) & (normed.abs() >= fallback_threshold)).to(r.dtype)
        fallback = _scatter_sum(tripped, index, n_groups) > 0
        if fallback_counts_padding:
            has_padding = _scatter_sum((lengths < mask.shape[1]).to(r.dtype), index, n_groups) > 0
            padding_value = -moments.mean / scale
            fallback |= has_padding & (padding_value.abs() >= fallback_threshold)

        grpo = _grpo_per_response(r, index, n_groups, eps, norm_by_std)
        per_response = torch.where(fallback[index], grpo, normed)
        return torch.where(
            mask.bool(), per_response[:, None], torch.zeros((), dtype=r.dtype, device=r.device)
        )
