"""Truncated importance sampling (TIS) between the rollout engine and the trainer's old policy.

The rollout engine samples from π_rollout (its own kernels, precision and, here, an adaptive
temperature); the PPO ratio is taken against π_old recomputed by the trainer. TIS corrects the
mismatch with a per-token weight (idea from verl's TIS, verl#2953), detached from the graph:

    Δ_t = log π_old(y_t) − log π_rollout(y_t)
    w_t = min(exp(Δ_t), cap)

Mismatch metrics (masked means over valid tokens):
    tis/abs_log_prob_diff = mean |Δ|
    tis/kl_k1             = mean(−Δ)                 estimates KL(π_rollout ‖ π_old) from rollout samples
    tis/kl_k3             = mean(e^Δ − 1 − Δ)        same KL, low-variance and ≥ 0 (Schulman's k3)
    tis/truncated_frac    = mean(exp(Δ) > cap)
    tis/weight_mean       = mean(w)
"""

from __future__ import annotations

import torch

from megatron_hapo.algorithms._masked import check_same_shape, masked_mean
from megatron_hapo.algorithms.token_terms import LOG_RATIO_CLAMP


def rollout_mismatch(
    old_log_prob: torch.Tensor,
    rollout_log_prob: torch.Tensor,
    mask: torch.Tensor,
    cap: float | None = None,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Returns (w or None when ``cap`` is None, metrics). w is 1 at padding; every metric is a 0-d tensor."""
    check_same_shape("rollout_log_prob", rollout_log_prob, mask)
    check_same_shape("old_log_prob", old_log_prob, mask)
    if cap is not None and not cap > 0:
        raise ValueError(f"tis_cap must be > 0 (e.g. 2.0) or None to disable TIS, got {cap}")
    with torch.no_grad():
        work = torch.promote_types(
            torch.promote_types(old_log_prob.dtype, rollout_log_prob.dtype), torch.float32
        )
        valid = mask.bool()
        delta = old_log_prob.detach().to(work) - rollout_log_prob.detach().to(work)
        delta = torch.where(valid, delta, torch.zeros_like(delta)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        raw = torch.exp(delta)
        metrics = {
            "tis/abs_log_prob_diff": masked_mean(delta.abs(), valid),
            "tis/kl_k1": masked_mean(-delta, valid),
            "tis/kl_k3": masked_mean(raw - 1 - delta, valid),
        }
        if cap is None:
            return None, metrics
        weight = raw.clamp_max(cap)
        metrics["tis/truncated_frac"] = masked_mean((raw > cap).to(work), valid)
        metrics["tis/weight_mean"] = masked_mean(weight, valid)
        return weight, metrics
