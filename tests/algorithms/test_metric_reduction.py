"""Metric reduction: a fixed set of micro-batch metrics over two updates against hand-computed values, the
HAPO loss's declarations against what it returns, and the registry's requirement that a loss declares them."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest
import torch

from megatron_hapo.algorithms import (
    HAPO_LOSS_METRICS,
    POLICY_LOSSES,
    EntropyStats,
    HapoLossConfig,
    MetricReductions,
    hapo_policy_loss,
    policy_loss_metrics,
    reduce_metrics,
)
from megatron_hapo.algorithms.metric_reduction import MAX, MIN, SUM, TOKEN_MEAN, UPDATE_SUM
from megatron_hapo.algorithms.registry import Registry, register_policy_loss
from megatron_hapo.config.schema import AlgorithmConfig

# update 1: two micro-batches (one from each of two DP ranks) and an all-padding one; update 2: one
UPDATES = [
    [
        {
            "pg_loss": 0.25,
            "n_tokens": 3.0,
            "clip_frac": 0.5,
            "ratio/min": 0.9,
            "ratio/max": 1.1,
            "tis/kl_k1": 0.1,
        },
        {
            "pg_loss": -0.5,
            "n_tokens": 1.0,
            "clip_frac": 1.0,
            "ratio/min": 0.7,
            "ratio/max": 1.3,
            "tis/kl_k1": 0.3,
        },
        {
            "pg_loss": 9.0,
            "n_tokens": 0.0,
            "clip_frac": 9.0,
            "ratio/min": -9.0,
            "ratio/max": 9.0,
            "tis/kl_k1": 9.0,
        },
    ],
    [{"pg_loss": 1.0, "n_tokens": 4.0, "clip_frac": 0.25, "ratio/min": 0.8, "ratio/max": 1.5}],
]


def test_reduced_metrics_equal_hand_computed_values():
    got = reduce_metrics(UPDATES, HAPO_LOSS_METRICS)
    assert got == pytest.approx(
        {
            "pg_loss": ((0.25 - 0.5) + 1.0) / 2,  # each update's micro-batch losses sum; mean over updates
            "n_tokens": 3.0 + 1.0 + 4.0,  # summed over everything (the all-padding one adds nothing)
            "clip_frac": ((0.5 * 3 + 1.0 * 1) / 4 + 0.25) / 2,  # token-weighted per update, mean of updates
            "ratio/min": 0.7,
            "ratio/max": 1.5,
            "tis/kl_k1": (0.1 * 3 + 0.3 * 1) / 4 / 2,  # a prefix rule; absent in update 2 = 0 there
        },
        abs=0,
        rel=1e-15,
    )


def test_every_reduction_and_rule_precedence():
    rules = MetricReductions(
        {"n_tokens": SUM, "a/*": TOKEN_MEAN, "a/b/*": MAX, "a/b/exact": MIN, "loss": UPDATE_SUM}
    )
    assert [rules.of(k) for k in ("a/x", "a/b/y", "a/b/exact", "loss")] == [TOKEN_MEAN, MAX, MIN, UPDATE_SUM]
    with pytest.raises(KeyError, match=r"metric 'other' has no declared reduction"):
        rules.of("other")
    with pytest.raises(KeyError, match="no declared reduction"):
        reduce_metrics([[{"n_tokens": 1.0, "other": 1.0}]], rules)
    assert reduce_metrics([[], [{"n_tokens": 0.0, "loss": 5.0}]], rules) == {}  # nothing with tokens
    with pytest.raises(ValueError, match="unknown reduction"):
        MetricReductions({"n_tokens": "median"})
    with pytest.raises(ValueError, match="weight metric 'n_tokens' has no rule"):
        MetricReductions({"loss": SUM})


def test_the_hapo_loss_declares_every_metric_it_returns():
    g = torch.Generator().manual_seed(0)
    lp, old, rollout = (-torch.rand(2, 5, generator=g, dtype=torch.float64) for _ in range(3))
    adv, ent = (
        torch.randn(2, 5, generator=g, dtype=torch.float64),
        torch.rand(2, 5, generator=g, dtype=torch.float64),
    )
    mask = torch.ones(2, 5, dtype=torch.bool)
    stats = EntropyStats(-1.0, 1.0, 1.0, 1.0)
    _, metrics = hapo_policy_loss(lp, old, adv, ent, mask, HapoLossConfig(tis_cap=2.0), stats, rollout)
    assert {k: HAPO_LOSS_METRICS.of(k) for k in metrics}  # every key has a rule (of raises otherwise)
    assert HAPO_LOSS_METRICS.of("entropy/pivot") == TOKEN_MEAN and HAPO_LOSS_METRICS.of("h_hat/min") == MIN


def test_policy_losses_register_with_their_reductions():
    assert policy_loss_metrics("hapo") is HAPO_LOSS_METRICS
    # every choice of algorithm.policy_loss is a registered loss
    choices = get_args(get_type_hints(AlgorithmConfig)["policy_loss"])
    assert choices and set(choices) <= set(POLICY_LOSSES.names())
    with pytest.raises(TypeError, match="metrics must be a MetricReductions"):
        register_policy_loss("undeclared", metrics={"pg_loss": SUM})
    with pytest.raises(KeyError, match="unknown policy loss 'ppo'"):
        policy_loss_metrics("ppo")
    reg = Registry("thing")
    reg.register("x", meta="m")(lambda: 1)
    assert reg.meta("x") == "m"
