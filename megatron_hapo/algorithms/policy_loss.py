"""The HAPO policy loss (HAPO_SPEC §2, §5, §6) with its configuration.

    ĥ   from the current entropies: frozen step statistics (stats_scope="step") or this micro-batch's
        own statistics (stats_scope="micro_batch", the released behaviour)
    w   truncated IS weight min(exp(log π_old − log π_rollout), cap) when tis_cap is set, else 1
    ℓ_t per token: adaptive clip ε′(ĥ), redistributed advantage A′(A, ĥ, r, ε′), dual-clip PPO loss
    loss = aggregate(w·ℓ, mask, agg, global_normalizer)

With ``adaptive_clip=False, adaptive_advantage=False`` and clip (0.2, 0.28) this is DAPO's loss; with
``stats_scope="micro_batch", entropy_mode="released"`` and agg token-mean it is the released
``compute_policy_loss`` (tested to float64 precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_hapo.algorithms._masked import check_same_shape, masked_max, masked_mean, masked_min
from megatron_hapo.algorithms.aggregation import AGG_MODES, aggregate_loss, check_agg_mode
from megatron_hapo.algorithms.entropy import (
    ENTROPY_MODES,
    TRAINER_ENTROPY_EPS,
    EntropyStats,
    hhat_from_stats,
    normalize_entropy,
)
from megatron_hapo.algorithms.registry import register_policy_loss
from megatron_hapo.algorithms.tis import rollout_mismatch
from megatron_hapo.algorithms.token_terms import hapo_token_terms

STATS_SCOPES = ("step", "micro_batch")


@dataclass(frozen=True)
class HapoLossConfig:
    """Loss settings; the paper's names are in ``docs/algorithm.md``.

    clip_low, clip_high   base PPO clip ε_low, ε_high (HAPO recipes 0.2/0.2; DAPO 0.2/0.28)
    dual_clip_c           dual-clip bound c on the ratio for A′ < 0 (recipes 10.0); None disables it
    adaptive_clip, clip_alpha            Asymmetric Adaptive Clipping and its α
    adaptive_advantage, adv_beta         Differential Advantage Redistribution and its β (β > 1 flips the
                          sign of A where ĥ < −1/β in signed mode, spec B11: allowed, on purpose)
    pivot_quantile        q of the pivot m (0.8)
    entropy_mode          "signed" (paper's intent) or "released" (ĥ = |·|, the released code)
    stats_scope           "step": ĥ from frozen step statistics passed as ``stats``;
                          "micro_batch": statistics of each call's own tokens (released)
    agg                   loss aggregation, see :mod:`aggregation`
    tis_cap               truncated-IS cap (e.g. 2.0); None: no correction (metrics still reported)
    entropy_eps           floor of H before the log (released trainer: 1e-8)
    token_sum_norm_len    constant L_norm of agg="seq-mean-token-sum-norm" (None: the padded length)
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = 10.0
    adaptive_clip: bool = True
    clip_alpha: float = 1.0
    adaptive_advantage: bool = True
    adv_beta: float = 1.0
    pivot_quantile: float = 0.8
    entropy_mode: str = "signed"
    stats_scope: str = "step"
    agg: str = "token-mean"
    tis_cap: float | None = None
    entropy_eps: float = TRAINER_ENTROPY_EPS
    token_sum_norm_len: int | None = None

    def __post_init__(self) -> None:
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(f"clip_low/clip_high must be >= 0, got {self.clip_low}/{self.clip_high}")
        if self.clip_low >= 1:
            raise ValueError(
                f"clip_low must be < 1 (the lower bound 1 − clip_low must stay > 0), got {self.clip_low}"
            )
        if self.dual_clip_c is not None and not self.dual_clip_c > 1.0:
            raise ValueError(
                f"dual_clip_c must be > 1 (it bounds the ratio from above), got {self.dual_clip_c}"
            )
        if self.clip_alpha < 0 or self.adv_beta < 0:
            raise ValueError(f"clip_alpha and adv_beta must be >= 0, got {self.clip_alpha}/{self.adv_beta}")
        if self.adaptive_clip and self.clip_low * (1 + self.clip_alpha) >= 1:
            raise ValueError(
                f"clip_low·(1 + clip_alpha) = {self.clip_low * (1 + self.clip_alpha)} >= 1 lets the adaptive "
                "lower bound 1 − ε′_low reach 0 or below; lower clip_low or clip_alpha"
            )
        if not 0.0 <= self.pivot_quantile <= 1.0:
            raise ValueError(f"pivot_quantile must be in [0, 1], got {self.pivot_quantile}")
        if self.entropy_mode not in ENTROPY_MODES:
            raise ValueError(f"entropy_mode {self.entropy_mode!r} is unknown; use one of {ENTROPY_MODES}")
        if self.stats_scope not in STATS_SCOPES:
            raise ValueError(f"stats_scope {self.stats_scope!r} is unknown; use one of {STATS_SCOPES}")
        if self.agg not in AGG_MODES:
            raise ValueError(f"agg {self.agg!r} is unknown; use one of {AGG_MODES}")
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0 or None, got {self.tis_cap}")
        if not self.entropy_eps > 0:
            raise ValueError(f"entropy_eps must be > 0, got {self.entropy_eps}")
        if self.token_sum_norm_len is not None and self.token_sum_norm_len <= 0:
            raise ValueError(f"token_sum_norm_len must be > 0 or None, got {self.token_sum_norm_len}")

    @property
    def uses_entropy(self) -> bool:
        """Whether the loss needs ĥ (and therefore the entropies)."""
        return self.adaptive_clip or self.adaptive_advantage


def compute_h_hat(
    entropy: torch.Tensor | None,
    mask: torch.Tensor,
    config: HapoLossConfig,
    stats: EntropyStats | None = None,
) -> tuple[torch.Tensor, EntropyStats | None]:
    """ĥ [mask's shape] for the loss, per ``config.stats_scope``; (zeros, None) when the loss needs no ĥ.

    step:        ĥ = clamp(s(h)·h, −1, 1),  h = (log(max(H, entropy_eps)) − m)/σ   from the given stats
    micro_batch: ĥ = normalize_entropy(H, mask) over this call's tokens (stats must be None)
    """
    if not config.uses_entropy:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device), stats
    if entropy is None:
        raise ValueError(
            "adaptive_clip/adaptive_advantage need the current token entropies: pass entropy "
            "(or disable both for a plain PPO/DAPO loss)"
        )
    check_same_shape("entropy", entropy, mask)
    if config.stats_scope == "micro_batch":
        if stats is not None:
            raise ValueError(
                "stats_scope='micro_batch' computes ĥ from this micro-batch's own entropies, but frozen "
                "stats were passed; pass stats=None, or set stats_scope='step' to use them"
            )
        return normalize_entropy(
            entropy, mask, config.pivot_quantile, config.entropy_mode, eps=config.entropy_eps
        )
    if stats is None:
        raise ValueError(
            "stats_scope='step' needs the step's frozen EntropyStats (normalize_entropy over the step's "
            "tokens in the old-policy pass): pass stats=..., or set stats_scope='micro_batch'"
        )
    if stats.neg_scale != 0 and stats.mode != config.entropy_mode:
        raise ValueError(
            f"the EntropyStats were computed in {stats.mode!r} mode (neg_scale={stats.neg_scale:+.4g}) but "
            f"config.entropy_mode is {config.entropy_mode!r}; recompute the stats with the same mode"
        )
    h_hat = hhat_from_stats(entropy, stats, entropy_eps=config.entropy_eps, sigma_eps=0.0)
    return torch.where(mask.bool(), h_hat, torch.zeros_like(h_hat)), stats


@register_policy_loss("hapo")
def hapo_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor | None,
    mask: torch.Tensor,
    config: HapoLossConfig,
    stats: EntropyStats | None = None,
    rollout_log_prob: torch.Tensor | None = None,
    global_normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HAPO loss of one micro-batch and its metrics.

    Shapes: every per-token input has the mask's shape, [batch, seq] or flattened [tokens] (flattened
    inputs support agg="token-mean" only). Gradient flows only through ``log_prob``; ``entropy`` is
    the current policy's token entropy (used without gradient; None is allowed when neither
    adaptive_clip nor adaptive_advantage is on).

        ℓ_t  = w_t · ℓ^{dual-clip}(r_t, A′_t, ε′_t)            (see :func:`hapo_token_terms`)
        loss = numerator(ℓ) / N                                (see :mod:`aggregation`)

    N = ``global_normalizer`` when given (the step's token or sequence count over all micro-batches
    and DP ranks: the losses of the step's micro-batches then sum to the step loss), else this
    micro-batch's own count.

    Metrics (0-d detached tensors; fractions and means are over this call's valid tokens):
    ``pg_loss``, ``n_tokens``, ``clip_frac`` (any clip, verl's pg_clipfrac) and ``clip_frac_low``,
    ``clip_frac_high``, ``clip_frac_dual``; ``dar/scaled_up_count``, ``dar/scaled_down_count`` (and
    ``_frac``); ``h_hat/mean``, ``h_hat/min``, ``h_hat/max``; ``clip/eps_low_mean``,
    ``clip/eps_high_mean``; ``ratio/mean``, ``ratio/min``, ``ratio/max``; ``approx_kl`` (mean of
    log π_old − log π_θ, verl's ppo_kl); ``entropy/mean`` and ``entropy/pivot|sigma|pos_scale|neg_scale``
    of the statistics used; ``tis/*`` when ``rollout_log_prob`` is given (see :mod:`tis`).
    """
    for name, t in (("log_prob", log_prob), ("old_log_prob", old_log_prob), ("advantages", advantages)):
        check_same_shape(name, t, mask)
    check_agg_mode(config.agg, mask)
    h_hat, used_stats = compute_h_hat(entropy, mask, config, stats)

    tis_weight, metrics = None, {}
    if rollout_log_prob is not None:
        tis_weight, metrics = rollout_mismatch(old_log_prob, rollout_log_prob, mask, config.tis_cap)
    elif config.tis_cap is not None:
        raise ValueError(
            "tis_cap is set but rollout_log_prob was not passed; pass the rollout engine's log-probs"
        )

    terms = hapo_token_terms(
        log_prob,
        old_log_prob,
        advantages,
        h_hat,
        clip_low=config.clip_low,
        clip_high=config.clip_high,
        dual_clip_c=config.dual_clip_c,
        adaptive_clip=config.adaptive_clip,
        clip_alpha=config.clip_alpha,
        adaptive_advantage=config.adaptive_advantage,
        adv_beta=config.adv_beta,
        tis_weight=tis_weight,
        mask=mask,
    )
    loss = aggregate_loss(terms.loss, mask, config.agg, global_normalizer, config.token_sum_norm_len)
    metrics.update(_loss_metrics(loss, terms, h_hat, entropy, mask, used_stats))
    return loss, metrics


def _loss_metrics(loss, terms, h_hat, entropy, mask, stats) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        valid = mask.bool()
        f = terms.ratio.dtype

        def frac(flag: torch.Tensor) -> torch.Tensor:
            return masked_mean(flag.to(f), valid)

        def count(flag: torch.Tensor) -> torch.Tensor:
            return (flag & valid).sum().to(f)

        m = {
            "pg_loss": loss.detach(),
            "n_tokens": valid.sum().to(f),
            "clip_frac": frac(terms.clipped_high | terms.clipped_low),
            "clip_frac_low": frac(terms.clipped_low),
            "clip_frac_high": frac(terms.clipped_high),
            "clip_frac_dual": frac(terms.dual_clipped),
            "dar/scaled_up_count": count(terms.scaled_up),
            "dar/scaled_down_count": count(terms.scaled_down),
            "dar/scaled_up_frac": frac(terms.scaled_up),
            "dar/scaled_down_frac": frac(terms.scaled_down),
            "h_hat/mean": masked_mean(h_hat.to(f), valid),
            "h_hat/min": masked_min(h_hat.to(f), valid),
            "h_hat/max": masked_max(h_hat.to(f), valid),
            "clip/eps_low_mean": masked_mean(terms.eps_low, valid),
            "clip/eps_high_mean": masked_mean(terms.eps_high, valid),
            "ratio/mean": masked_mean(terms.ratio, valid),
            "ratio/min": masked_min(terms.ratio, valid),
            "ratio/max": masked_max(terms.ratio, valid),
            "approx_kl": masked_mean(-terms.log_ratio, valid),
        }
        if entropy is not None:
            m["entropy/mean"] = masked_mean(entropy.detach().to(f), valid)
        if stats is not None:
            for key, value in stats.to_dict().items():
                m[f"entropy/{key}"] = torch.tensor(value, dtype=f, device=valid.device)
        return m
