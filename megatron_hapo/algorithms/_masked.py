"""Masked reductions shared by the algorithm modules.

Every reduction here ignores padding and returns 0 (never NaN) when nothing is selected.
"""

from __future__ import annotations

import torch


def check_same_shape(name: str, tensor: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise ``ValueError`` when ``tensor`` does not have the shape of ``mask``."""
    if tuple(tensor.shape) != tuple(mask.shape):
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but mask has shape {tuple(mask.shape)}; "
            "every per-token tensor must have the mask's shape ([batch, seq] or flattened [tokens])"
        )


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_{M} values, as a 0-d tensor. Values at padding are dropped with ``where`` so inf/NaN there cannot leak."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_M values / max(ΣM, 1): the mean over valid tokens, 0 when there are none."""
    count = mask.bool().sum().clamp_min(1).to(values.dtype)
    return masked_sum(values, mask) / count


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """max_M values, 0 when no token is valid."""
    valid = mask.bool()
    if values.numel() == 0:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    filled = torch.where(
        valid, values, torch.full((), float("-inf"), dtype=values.dtype, device=values.device)
    )
    out = filled.max()
    return torch.where(valid.any(), out, torch.zeros_like(out))


def masked_min(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """min_M values, 0 when no token is valid."""
    return -masked_max(-values, mask)
