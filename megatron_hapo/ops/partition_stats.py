"""Merge per-partition softmax statistics: vocab shards (tensor parallel) or vocab splits (one kernel).

Every implementation reduces a row of tempered logits ``z = logits / T`` over *its part* P of the vocabulary
to a few numbers per row, and this module combines the parts. For a part P:

    m_P     = max_{v∈P} z_v                              (-inf if P is all -inf)
    log s_P = log Σ_{v∈P} exp(z_v - m_P)                 (in [0, log |P|]; the part's log-partition is m_P + log s_P)
    H_P     = -Σ_{v∈P} q_v log q_v,   q_v = exp(z_v - m_P) / s_P   (entropy of the softmax restricted to P)
    zt_P    = z_t if the target t lies in P else 0

The maximum and log s are kept apart on purpose: for huge logits (|m| ≫ 1) their fp32 sum m + log s would
round log s away, and log p_v = (z_v - m) - log s would lose all precision.

With M = max_P m_P, b_P = s_P exp(m_P - M) (mass of part P relative to exp(M)) and S = Σ_P b_P, the whole
row has (grouping rule of entropy, a_P = b_P / S being the probability of part P):

    log Σ_v exp(z_v) = M + log S
    H  = Σ_P a_P H_P - Σ_P a_P log a_P  =  log S + (Σ_P b_P (H_P - log b_P)) / S
    log_prob = (zt - M) - log S,     zt = Σ_P zt_P

Across tensor-parallel ranks that is two all-reduces of O(N) numbers: MAX of ``m`` [N], then SUM of
``(b, b·(H - log b), zt)`` [3, N]. A part with b_P = 0 (all -inf, or negligible mass) contributes nothing:
its term is forced to 0 because ``0 · (-inf)`` would be NaN. A row whose logits are all -inf (no
distribution at all) yields NaN log-prob and entropy: there is nothing sensible to return.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist


class RowStats(NamedTuple):
    """What backward needs per token ``[N]``: the merged row statistics and this shard's share of the mass.

    z_max           M, the row maximum of z over the whole vocabulary
    log_s           log S, so that log Σ_v exp(z_v) = M + log S
    entropy         H
    shard_log_mass  log a_P = (m_P - M) + (log s_P - log S): log of the probability mass on this rank's
                    shard (0 without TP; -inf when the shard is all -inf)
    """

    z_max: torch.Tensor
    log_s: torch.Tensor
    entropy: torch.Tensor
    shard_log_mass: torch.Tensor


def _weighted_terms(
    m: torch.Tensor, log_s: torch.Tensor, ent: torch.Tensor, m_max: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b, b·(H - log b))`` of each part against the row maximum ``m_max`` (broadcastable to ``m``)."""
    # Every part of the row at -inf: shift by 0 instead of -inf, so m - shift is -inf (b = 0), not NaN.
    shift = torch.where(torch.isneginf(m_max), torch.zeros_like(m_max), m_max)
    log_b = log_s + (m - shift)
    b = torch.exp(log_b)
    # b == 0 exactly when the part has no mass: drop the term instead of computing 0 · (-inf) = NaN.
    # NaN inputs keep b = NaN (NaN == 0 is False), so a NaN row stays NaN.
    q = torch.where(b == 0, torch.zeros_like(b), b * (ent - log_b))
    return b, q


def merge_partitions(
    m: torch.Tensor, log_s: torch.Tensor, ent: torch.Tensor, dim: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine the parts stacked along ``dim`` (e.g. vocab splits ``[splits, N]``) into ``(M, log S, H)``."""
    m_max = m.amax(dim=dim, keepdim=True)
    b, q = _weighted_terms(m, log_s, ent, m_max)
    s = b.sum(dim)
    log_big_s = torch.log(s)
    return m_max.squeeze(dim), log_big_s, log_big_s + q.sum(dim) / s


def allreduce_partitions(
    m: torch.Tensor, log_s: torch.Tensor, ent: torch.Tensor, zt: torch.Tensor, group: dist.ProcessGroup
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine this rank's shard statistics ``[N]`` with the other ranks of ``group``: ``(M, log S, H, zt)``."""
    m_max = m.clone()
    dist.all_reduce(m_max, op=dist.ReduceOp.MAX, group=group)
    b, q = _weighted_terms(m, log_s, ent, m_max)
    packed = torch.stack([b, q, zt])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    s, q_sum, zt_sum = packed.unbind(0)
    log_big_s = torch.log(s)
    return m_max, log_big_s, log_big_s + q_sum / s, zt_sum
