"""DAPO overlong reward shaping (HAPO_SPEC §7).

With L_max = max_response_length, buffer B and factor f, a response of L tokens gets

    penalty(L) = min(−(L − (L_max − B)) / B · f, 0)

i.e. 0 up to L_max − B tokens, then linearly down to −f at L = L_max. The shaped reward is R + penalty.
"""

from __future__ import annotations

import torch


def overlong_penalty(
    response_lengths: torch.Tensor,
    max_response_length: int,
    buffer_length: int = 4096,
    penalty_factor: float = 1.0,
) -> torch.Tensor:
    """penalty [B] (≤ 0, float32 at least) for integer response lengths [B]; see the module docstring."""
    if not 0 < buffer_length <= max_response_length:
        raise ValueError(
            f"overlong buffer_length must be in (0, max_response_length={max_response_length}], got {buffer_length}"
        )
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    if (response_lengths < 0).any():
        raise ValueError("response lengths must be >= 0")
    work = torch.promote_types(response_lengths.dtype, torch.float32)
    exceed = response_lengths.to(work) - (max_response_length - buffer_length)
    return (-exceed / buffer_length * penalty_factor).clamp_max(0.0)


def apply_overlong_penalty(
    rewards: torch.Tensor,
    response_lengths: torch.Tensor,
    max_response_length: int,
    buffer_length: int = 4096,
    penalty_factor: float = 1.0,
) -> torch.Tensor:
    """rewards [B] + overlong_penalty(response_lengths) [B]."""
    if rewards.shape != response_lengths.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and response_lengths {tuple(response_lengths.shape)} must match"
        )
    penalty = overlong_penalty(response_lengths, max_response_length, buffer_length, penalty_factor)
    return rewards + penalty.to(torch.promote_types(rewards.dtype, penalty.dtype))
