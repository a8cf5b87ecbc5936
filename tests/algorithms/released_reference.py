"""REFERENCE, for tests only: a float64 re-implementation of the *released* HAPO code's behaviour as
described in HAPO_SPEC §2 (compute_entropy_h), §4 (TLGA + GRPO fallback), §5 (ada_advantage),
§6 (ada_clip, compute_policy_loss, token-mean) and the §13 pseudo-code.

It is written independently of ``megatron_hapo.algorithms`` and deliberately in the released code's
shape (full padded tensors, a Python loop over groups, padding included where the release includes
it), so that agreement between the two is evidence, not tautology. ``mode="signed"`` flips only the
sign of the negative scale (the spec's "intended" variant).
"""

from __future__ import annotations

import math

import torch

EPS = 1e-8


def nearest_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def entropy_h(entropy: torch.Tensor, mask: torch.Tensor, q: float, mode: str):
    """Released compute_entropy_h: ĥ over the full padded tensor (padding is garbage there) + stats."""
    m_bool = mask.bool()
    ell = torch.log(entropy.clamp_min(EPS))
    pivot = nearest_quantile(ell[m_bool].tolist(), q)
    h = ell - pivot
    n = m_bool.sum().clamp_min(1).to(ell.dtype)
    var = (h.pow(2).masked_fill(~m_bool, 0.0).sum() / n).clamp_min(EPS)
    std = var.sqrt()
    h = h / std
    pos_max = h.masked_fill(~(m_bool & (h > 0)), 0.0).max().clamp_min(EPS)
    neg_min = h.masked_fill(~(m_bool & (h < 0)), 0.0).min().clamp_max(-EPS)
    scale_pos = 1.0 / pos_max
    scale_neg = 1.0 / neg_min if mode == "released" else 1.0 / neg_min.abs()
    h_hat = torch.where(h > 0, h * scale_pos, h * scale_neg)
    return h_hat, (pivot, float(std), float(scale_pos), float(scale_neg))


def ada_clip(h_hat, clip_low, clip_high, alpha):
    low = torch.full_like(h_hat, clip_low)
    high = torch.full_like(h_hat, clip_high)
    low_ent = low * (1 - h_hat * alpha)
    high_ent = high * (1 + h_hat * alpha)
    low[h_hat <= 0] = low_ent[h_hat <= 0]
    high[h_hat > 0] = high_ent[h_hat > 0]
    return low, high


def ada_advantage(adv, h_hat, ratio, low, high, beta):
    adv_ent = adv * (1 + beta * h_hat)
    inside = (ratio > 1.0 - low / 2) & (ratio < 1.0 + high / 2)
    pos = torch.where(inside, adv, adv_ent)
    neg = torch.where(inside, adv_ent, adv)
    return torch.where(h_hat > 0, pos, neg)


def policy_loss(
    log_prob,
    old_log_prob,
    advantages,
    entropy,
    mask,
    *,
    clip_low=0.2,
    clip_high=0.2,
    clip_ratio_c=10.0,
    q=0.8,
    adaptive_clip=True,
    alpha=1.0,
    adaptive_advantage=True,
    beta=1.0,
    mode="released",
    h_hat=None,
):
    """Released compute_policy_loss with loss_agg_mode='token-mean'. ``h_hat`` overrides the micro-batch ĥ."""
    ratio = torch.exp(log_prob - old_log_prob)
    low, high = clip_low, clip_high
    with torch.no_grad():
        if h_hat is None:
            h_hat, _ = entropy_h(entropy, mask, q, mode)
        if adaptive_clip:
            low, high = ada_clip(h_hat, clip_low, clip_high, alpha)
        else:
            low, high = torch.full_like(h_hat, clip_low), torch.full_like(h_hat, clip_high)
        if adaptive_advantage:
            advantages = ada_advantage(advantages, h_hat, ratio, low, high, beta)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    lc = torch.maximum(l1, l2)
    l3 = -advantages * clip_ratio_c
    loss_mat = torch.where(advantages < 0, torch.min(l3, lc), lc)
    m = mask.to(loss_mat.dtype)
    return (loss_mat * m).sum() / (m.sum() + 1e-8)


def grpo(rewards: list[float], groups: list, eps=1e-6, norm_by_std=True) -> list[float]:
    out = []
    for i, r in enumerate(rewards):
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(members) / len(members)
            std = math.sqrt(sum((x - mean) ** 2 for x in members) / (len(members) - 1))
        out.append((r - mean) / (std + eps) if norm_by_std else r - mean)
    return out


def tlga(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    groups: list,
    eps=1e-6,
    norm_by_std=True,
    threshold=5.0,
    count_padding=True,
):
    """Released TLGA on the padded [B, T] matrix; returns (advantages [B,T] incl. padding values, fell_back{g})."""
    scores = rewards[:, None] * mask
    grpo_vals = torch.tensor(grpo(rewards.tolist(), groups, eps, norm_by_std), dtype=rewards.dtype)
    out = torch.zeros_like(scores)
    fell_back = {}
    for g in dict.fromkeys(groups):
        rows = [i for i, x in enumerate(groups) if x == g]
        s, m = scores[rows], mask[rows].bool()
        valid = s[m]
        mean = valid.mean()
        std = valid.std(unbiased=False)
        normed = (s - mean) / (std + eps) if norm_by_std else s - mean
        check = normed if count_padding else normed[m]
        fell_back[g] = bool((check.abs() >= threshold).any())
        out[rows] = grpo_vals[rows][:, None] * mask[rows] if fell_back[g] else normed
    return out, fell_back
