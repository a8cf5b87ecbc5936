"""Loss aggregation with an explicit normaliser, so that the step's gradient does not depend on how
the step is split into micro-batches and data-parallel ranks.

For per-token losses ℓ [batch, seq] and mask M, each mode is a numerator over a normaliser:

    mode                      numerator (this micro-batch)          normaliser N (the whole step)
    token-mean                Σ_{i,t} M ℓ                           valid tokens
    seq-mean-token-mean       Σ_i (Σ_t M ℓ / Σ_t M)                 sequences with ≥ 1 valid token
    seq-mean-token-sum        Σ_i Σ_t M ℓ                           sequences with ≥ 1 valid token
    seq-mean-token-sum-norm   Σ_i Σ_t M ℓ / L_norm                  sequences with ≥ 1 valid token

    loss = numerator / N

L_norm (Dr. GRPO's constant) is ``token_sum_norm_len``, or the padded length ``mask.shape[-1]``
when None; keep it constant for a split-independent loss.

With ``global_normalizer`` = N counted over all micro-batches and data-parallel ranks of the step
(:func:`loss_normalizer` gives a micro-batch's share: sum them, then all-reduce), the micro-batch
losses simply add up: Σ_micro Σ_rank loss = loss of the whole step, so gradients summed (not
averaged) over micro-batches and ranks equal the whole-step gradient. Without it, N is this
micro-batch's own count; token-mean then uses ΣM + 1e-8, verl's ``masked_mean``, so the released
loss is reproduced exactly.

Deviations from verl's ``agg_loss`` (only token-mean is used by HAPO): sequences without valid
tokens are not counted, and seq-mean-token-sum-norm divides by the sequence count as Dr. GRPO does
(verl omits it, a constant factor).
"""

from __future__ import annotations

import torch

from megatron_hapo.algorithms._masked import check_same_shape
from megatron_hapo.algorithms.loss_config import AGG_MODES


def check_agg_mode(mode: str, mask: torch.Tensor) -> None:
    """Raise ``ValueError`` for an unknown mode, or a seq-mean mode on flattened [tokens] input."""
    if mode not in AGG_MODES:
        raise ValueError(f"loss aggregation mode {mode!r} is unknown; use one of {AGG_MODES}")
    if mode != "token-mean" and mask.dim() != 2:
        raise ValueError(
            f"agg={mode!r} needs per-sequence structure, mask [batch, seq]; got shape {tuple(mask.shape)}. "
            "Flattened [tokens] inputs support agg='token-mean' only."
        )


def loss_normalizer(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """This micro-batch's share of the normaliser N: valid tokens (token-mean) or sequences with ≥ 1 valid
    token (seq-mean-*), as a 0-d int64 tensor. Sum over micro-batches and all-reduce over DP ranks."""
    check_agg_mode(mode, mask)
    valid = mask.bool()
    if mode == "token-mean":
        return valid.sum()
    return valid.any(dim=-1).sum()


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    global_normalizer: float | torch.Tensor | None = None,
    token_sum_norm_len: int | None = None,
) -> torch.Tensor:
    """Scalar loss = numerator / N as in the module docstring. Never NaN: an empty micro-batch gives 0.

    ``global_normalizer``: a count (Python number > 0, or a tensor; a tensor below 1 counts as 1).
    """
    check_same_shape("per_token_loss", per_token_loss, mask)
    check_agg_mode(mode, mask)
    valid = mask.bool()
    zero = torch.zeros((), dtype=per_token_loss.dtype, device=per_token_loss.device)
    masked = torch.where(valid, per_token_loss, zero)

    if mode == "token-mean":
        numerator = masked.sum()
        local = valid.sum().to(per_token_loss.dtype) + 1e-8
    else:
        seq_sum = masked.sum(dim=-1)
        seq_len = valid.sum(dim=-1)
        if mode == "seq-mean-token-mean":
            seq_value = seq_sum / seq_len.clamp_min(1).to(per_token_loss.dtype)
        elif mode == "seq-mean-token-sum":
            seq_value = seq_sum
        else:
            norm_len = token_sum_norm_len if token_sum_norm_len is not None else mask.shape[-1]
            if norm_len <= 0:
                raise ValueError(f"token_sum_norm_len must be > 0, got {norm_len}")
            seq_value = seq_sum / norm_len
        numerator = seq_value.sum()
        local = (seq_len > 0).sum().clamp_min(1).to(per_token_loss.dtype)

    if global_normalizer is None:
        return numerator / local
    if isinstance(global_normalizer, torch.Tensor):
        denom = global_normalizer.detach().to(per_token_loss.dtype).clamp_min(1.0)
    else:
        if not global_normalizer > 0:
            raise ValueError(
                f"global_normalizer must be > 0 (the step's token or sequence count), got {global_normalizer}"
            )
        denom = float(global_normalizer)
    return numerator / denom
