"""HAPO algorithm core: pure torch functions (no Megatron, no SGLang), the spec in code.

See ``docs/algorithm.md`` and ``docs/hapo_spec.md``. Module map:

- :mod:`.entropy`: EntropyStats, normalize_entropy (ĥ), hhat_from_stats
- :mod:`.quantile`: exact nearest-rank quantile, single-process and over a process group
- :mod:`.temperature`: token_entropy, temperature_from_entropy, adaptive_temperature (shared with the sampler)
- :mod:`.advantages`: token_level_group_average (TLGA), grpo_advantage
- :mod:`.token_terms`: per-token adaptive clip, advantage redistribution, dual-clip loss
- :mod:`.policy_loss`: HapoLossConfig, hapo_policy_loss
- :mod:`.aggregation`: loss aggregation modes and global normalisers
- :mod:`.tis`: truncated importance sampling and rollout mismatch metrics
- :mod:`.sampling_filters`: DAPO dynamic-sampling group filter (on accuracy)
- :mod:`.reward_shaping`: DAPO overlong penalty
- :mod:`.registry`: register_advantage / register_policy_loss
"""

from megatron_hapo.algorithms.advantages import (
    GroupTokenMoments,
    group_token_moments,
    grpo_advantage,
    token_level_group_average,
)
from megatron_hapo.algorithms.aggregation import AGG_MODES, aggregate_loss, loss_normalizer
from megatron_hapo.algorithms.entropy import (
    ENTROPY_MODES,
    SAMPLER_ENTROPY_EPS,
    SAMPLER_SIGMA_EPS,
    TRAINER_ENTROPY_EPS,
    EntropyStats,
    StatsLike,
    hhat_from_stats,
    normalize_entropy,
)
from megatron_hapo.algorithms.policy_loss import STATS_SCOPES, HapoLossConfig, compute_h_hat, hapo_policy_loss
from megatron_hapo.algorithms.quantile import nearest_rank_index, nearest_rank_quantile
from megatron_hapo.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    bind_advantage,
    get_advantage,
    get_policy_loss,
    register_advantage,
    register_policy_loss,
)
from megatron_hapo.algorithms.reward_shaping import apply_overlong_penalty, overlong_penalty
from megatron_hapo.algorithms.sampling_filters import GroupFilterResult, dynamic_sampling_filter
from megatron_hapo.algorithms.temperature import adaptive_temperature, temperature_from_entropy, token_entropy
from megatron_hapo.algorithms.tis import rollout_mismatch
from megatron_hapo.algorithms.token_terms import (
    HapoTokenTerms,
    adaptive_clip_bounds,
    dual_clip_loss,
    hapo_token_terms,
    redistribute_advantage,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "ENTROPY_MODES",
    "POLICY_LOSSES",
    "bind_advantage",
    "SAMPLER_ENTROPY_EPS",
    "SAMPLER_SIGMA_EPS",
    "STATS_SCOPES",
    "StatsLike",
    "TRAINER_ENTROPY_EPS",
    "EntropyStats",
    "GroupFilterResult",
    "GroupTokenMoments",
    "HapoLossConfig",
    "HapoTokenTerms",
    "adaptive_clip_bounds",
    "adaptive_temperature",
    "aggregate_loss",
    "apply_overlong_penalty",
    "compute_h_hat",
    "dual_clip_loss",
    "dynamic_sampling_filter",
    "get_advantage",
    "get_policy_loss",
    "group_token_moments",
    "grpo_advantage",
    "hapo_policy_loss",
    "hapo_token_terms",
    "hhat_from_stats",
    "loss_normalizer",
    "nearest_rank_index",
    "nearest_rank_quantile",
    "normalize_entropy",
    "overlong_penalty",
    "redistribute_advantage",
    "register_advantage",
    "register_policy_loss",
    "rollout_mismatch",
    "temperature_from_entropy",
    "token_entropy",
    "token_level_group_average",
]
