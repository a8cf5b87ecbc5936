"""The HAPO policy loss (HAPO_SPEC §2, §5, §6); its settings are :class:`~.loss_config.HapoLossConfig`.

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

import torch

from megatron_hapo.algorithms._masked import check_same_shape, masked_max, masked_mean, masked_min
from megatron_hapo.algorithms.aggregation import aggregate_loss, check_agg_mode
from megatron_hapo.algorithms.entropy import EntropyStats, hhat_from_stats, normalize_entropy
from megatron_hapo.algorithms.loss_config import HapoLossConfig
from megatron_hapo.algorithms.metric_reduction import MAX, MIN, SUM, TOKEN_MEAN, UPDATE_SUM, MetricReductions
from megatron_hapo.algorithms.registry import register_policy_loss
from megatron_hapo.algorithms.tis import rollout_mismatch
from megatron_hapo.algorithms.token_terms import hapo_token_terms


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


# how hapo_policy_loss's metrics combine over micro-batches, DP ranks and updates (metric_reduction.py)
HAPO_LOSS_METRICS = MetricReductions(
    {
        "pg_loss": UPDATE_SUM,  # micro-batch shares of the update's loss (global normaliser)
        "n_tokens": SUM,
        "dar/scaled_up_count": SUM,
        "dar/scaled_down_count": SUM,
        "h_hat/min": MIN,
        "h_hat/max": MAX,
        "ratio/min": MIN,
        "ratio/max": MAX,
        **dict.fromkeys(
            (
                "clip_frac",
                "clip_frac_low",
                "clip_frac_high",
                "clip_frac_dual",
                "dar/scaled_up_frac",
                "dar/scaled_down_frac",
                "h_hat/mean",
                "clip/eps_low_mean",
                "clip/eps_high_mean",
                "ratio/mean",
                "approx_kl",
                "entropy/*",
                "tis/*",
            ),
            TOKEN_MEAN,
        ),  # fmt: skip
    }
)


@register_policy_loss("hapo", metrics=HAPO_LOSS_METRICS)
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
    config.check()
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
                # a fill kernel: torch.tensor(value, device=cuda) would be a blocking host-to-device copy
                m[f"entropy/{key}"] = torch.full((), value, dtype=f, device=valid.device)
        return m
