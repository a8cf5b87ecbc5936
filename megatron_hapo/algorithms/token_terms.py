"""Per-token HAPO terms (HAPO_SPEC §5, §6): adaptive clip bounds, advantage redistribution and the
dual-clip PPO loss. Elementwise on tensors of any shape; this is what the fused vocab-parallel op
(``megatron_hapo/ops``) calls per chunk of tokens.

ĥ, the bounds ε′ and the redistributed advantage A′ are constants (computed without autograd);
gradient flows only through the ratio r = exp(log π_θ − log π_old).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOG_RATIO_CLAMP = 20.0  # |log r| ≤ 20 (r ≤ 4.9e8): keeps r finite so that A′ = 0 never meets r = inf (NaN)


def adaptive_clip_bounds(
    h_hat: torch.Tensor, clip_low: float, clip_high: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric Adaptive Clipping, per token:

    ε′_low  = ε_low  · (1 − α ĥ)   if ĥ ≤ 0   else ε_low      low entropy: more room to push p down
    ε′_high = ε_high · (1 + α ĥ)   if ĥ > 0   else ε_high     high entropy: more room to push p up
    """
    with torch.no_grad():
        eps_low = torch.where(h_hat <= 0, clip_low * (1 - alpha * h_hat), torch.full_like(h_hat, clip_low))
        eps_high = torch.where(h_hat > 0, clip_high * (1 + alpha * h_hat), torch.full_like(h_hat, clip_high))
    return eps_low, eps_high


def redistribute_advantage(
    advantages: torch.Tensor,
    h_hat: torch.Tensor,
    ratio: torch.Tensor,
    eps_low: torch.Tensor,
    eps_high: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differential Advantage Redistribution. Returns (A′, scaled) where ``scaled`` marks the tokens
    whose advantage was multiplied by (1 + βĥ):

        Z  = { 1 − ε′_low/2 < r < 1 + ε′_high/2 }                 neutral (conservative) ratio zone
        A′ = A·(1 + βĥ)   if (ĥ > 0 and r ∉ Z) or (ĥ ≤ 0 and r ∈ Z)
           = A            otherwise
    """
    with torch.no_grad():
        in_zone = (ratio > 1 - eps_low / 2) & (ratio < 1 + eps_high / 2)
        scaled = torch.where(h_hat > 0, ~in_zone, in_zone)
        return torch.where(scaled, advantages * (1 + beta * h_hat), advantages), scaled


def dual_clip_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: torch.Tensor,
    eps_high: torch.Tensor,
    dual_clip_c: float | None,
) -> torch.Tensor:
    """Per-token PPO loss with per-token bounds and dual clip (A = A′, constant):

    ℓ_c = max(−A r, −A clip(r, 1 − ε′_low, 1 + ε′_high))
    ℓ   = min(ℓ_c, −A c)   if A < 0 and c is not None   else ℓ_c
    """
    surrogate = torch.maximum(
        -advantages * ratio, -advantages * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    )
    if dual_clip_c is None:
        return surrogate
    return torch.where(advantages < 0, torch.minimum(surrogate, -advantages * dual_clip_c), surrogate)


@dataclass
class HapoTokenTerms:
    """Everything :func:`hapo_token_terms` computes per token (all of the inputs' shape).

    ``loss`` is differentiable through log_prob; every other field is detached.
    ``grad_log_prob`` = ∂loss/∂log_prob in closed form: −w·A′·r on the unclipped branch, else 0.
    """

    loss: torch.Tensor
    grad_log_prob: torch.Tensor
    ratio: torch.Tensor
    log_ratio: torch.Tensor
    advantages: torch.Tensor  # A′ after redistribution
    eps_low: torch.Tensor
    eps_high: torch.Tensor
    scaled_up: torch.Tensor  # bool: A′ = A(1+βĥ) with ĥ > 0
    scaled_down: torch.Tensor  # bool: A′ = A(1+βĥ) with ĥ < 0
    clipped_high: torch.Tensor  # bool: A′ > 0 and r > 1 + ε′_high (no gradient)
    clipped_low: torch.Tensor  # bool: A′ < 0 and r < 1 − ε′_low (no gradient)
    dual_clipped: torch.Tensor  # bool: A′ < 0 and the dual bound −A′c is the loss (no gradient)


def hapo_token_terms(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    h_hat: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip_c: float | None = 10.0,
    adaptive_clip: bool = True,
    clip_alpha: float = 1.0,
    adaptive_advantage: bool = True,
    adv_beta: float = 1.0,
    tis_weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> HapoTokenTerms:
    """Per-token HAPO loss, in the order of the released ``compute_policy_loss``:

        r   = exp(clamp(log π_θ − log π_old, −20, 20))
        ε′  = adaptive_clip_bounds(ĥ)           (constant ε if not adaptive_clip)
        A′  = redistribute_advantage(A, ĥ, r, ε′) (A if not adaptive_advantage)
        ℓ   = w · dual_clip_loss(r, A′, ε′, c)    (w = truncated IS weight, 1 if None)

    Positions where ``mask`` is False get r = 1, A′ = 0, ℓ = 0 and zero gradient, whatever the
    inputs hold there (even NaN). Computes in fp32 at least.
    """
    work = torch.promote_types(log_prob.dtype, torch.float32)
    lp = log_prob.to(work)
    old = old_log_prob.detach().to(work)
    with torch.no_grad():
        adv = advantages.detach().to(work)
        hh = h_hat.detach().to(work)
        if mask is not None:
            valid = mask.bool()
            adv = torch.where(valid, adv, torch.zeros_like(adv))
            hh = torch.where(valid, hh, torch.zeros_like(hh))
    log_ratio = lp - old
    if mask is not None:
        # where(), not a product: its backward writes zeros, so NaN at padding never reaches the gradient
        log_ratio = torch.where(valid, log_ratio, torch.zeros_like(log_ratio))
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)

    with torch.no_grad():
        r = ratio.detach()
        if adaptive_clip:
            eps_low, eps_high = adaptive_clip_bounds(hh, clip_low, clip_high, clip_alpha)
        else:
            eps_low, eps_high = torch.full_like(hh, clip_low), torch.full_like(hh, clip_high)
        if adaptive_advantage:
            adv, scaled = redistribute_advantage(adv, hh, r, eps_low, eps_high, adv_beta)
        else:
            scaled = torch.zeros_like(hh, dtype=torch.bool)

    loss = dual_clip_loss(ratio, adv, eps_low, eps_high, dual_clip_c)
    weight = None
    if tis_weight is not None:
        weight = tis_weight.detach().to(work)
        loss = loss * weight

    with torch.no_grad():
        clipped_high = (adv > 0) & (r > 1 + eps_high)
        clipped_low = (adv < 0) & (r < 1 - eps_low)
        if dual_clip_c is None:
            dual_clipped = torch.zeros_like(clipped_low)
        else:
            surrogate = torch.maximum(-adv * r, -adv * torch.clamp(r, 1 - eps_low, 1 + eps_high))
            dual_clipped = (adv < 0) & (surrogate > -adv * dual_clip_c)
        raw = lp.detach() - old
        if mask is not None:
            raw = torch.where(valid, raw, torch.zeros_like(raw))
        active = (adv != 0) & ~clipped_high & ~clipped_low & ~dual_clipped & (raw.abs() <= LOG_RATIO_CLAMP)
        grad = torch.where(active, -adv * r, torch.zeros_like(r))
        if weight is not None:
            grad = grad * weight
        log_ratio_out = log_ratio.detach()

    return HapoTokenTerms(
        loss=loss,
        grad_log_prob=grad,
        ratio=r,
        log_ratio=log_ratio_out,
        advantages=adv,
        eps_low=eps_low,
        eps_high=eps_high,
        scaled_up=scaled & (hh > 0),
        scaled_down=scaled & (hh < 0),
        clipped_high=clipped_high,
        clipped_low=clipped_low,
        dual_clipped=dual_clipped,
    )
