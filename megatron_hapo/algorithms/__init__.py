"""HAPO algorithm core: pure torch functions (no Megatron, no SGLang), the spec in code.

Names are exported lazily (PEP 562): importing ``megatron_hapo.algorithms.loss_config`` (the config schema
does) does not import torch; the first exported name used loads every submodule.

See ``docs/algorithm.md`` and ``docs/hapo_spec.md``. Module map:

- :mod:`.entropy`: EntropyStats, normalize_entropy (ĥ), hhat_from_stats
- :mod:`.quantile`: exact nearest-rank quantile, single-process and over a process group
- :mod:`.temperature`: token_entropy (fused_token_entropy: native on CPU, compiled on GPU), temperature_from_entropy, adaptive_temperature (shared with the sampler)
- :mod:`.advantages`: token_level_group_average (TLGA), grpo_advantage
- :mod:`.token_terms`: per-token adaptive clip, advantage redistribution, dual-clip loss
- :mod:`.loss_config`: HapoLossConfig (torch-free: it is also the ``algorithm.loss`` config section)
- :mod:`.policy_loss`: hapo_policy_loss
- :mod:`.aggregation`: loss aggregation modes and global normalisers
- :mod:`.tis`: truncated importance sampling and rollout mismatch metrics
- :mod:`.sampling_filters`: DAPO dynamic-sampling group filter (on accuracy)
- :mod:`.reward_shaping`: DAPO overlong penalty
- :mod:`.metric_reduction`: MetricReductions (how a loss's metrics combine), reduce_metrics
- :mod:`.registry`: register_advantage / register_policy_loss, policy_loss_metrics
"""

from __future__ import annotations

import importlib
from typing import Any

# exported name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "ADVANTAGE_ESTIMATORS": "registry",
    "AGG_MODES": "loss_config",
    "ENTROPY_MODES": "loss_config",
    "EntropyStats": "entropy",
    "GroupFilterResult": "sampling_filters",
    "GroupTokenMoments": "advantages",
    "HAPO_LOSS_METRICS": "policy_loss",
    "HapoLossConfig": "loss_config",
    "HapoTokenTerms": "token_terms",
    "MetricReductions": "metric_reduction",
    "POLICY_LOSSES": "registry",
    "SAMPLER_ENTROPY_EPS": "entropy",
    "SAMPLER_SIGMA_EPS": "entropy",
    "STATS_SCOPES": "loss_config",
    "StatsLike": "entropy",
    "TRAINER_ENTROPY_EPS": "loss_config",
    "adaptive_clip_bounds": "token_terms",
    "adaptive_temperature": "temperature",
    "aggregate_loss": "aggregation",
    "apply_overlong_penalty": "reward_shaping",
    "bind_advantage": "registry",
    "compute_h_hat": "policy_loss",
    "dual_clip_loss": "token_terms",
    "dynamic_sampling_filter": "sampling_filters",
    "get_advantage": "registry",
    "get_policy_loss": "registry",
    "group_token_moments": "advantages",
    "grpo_advantage": "advantages",
    "hapo_policy_loss": "policy_loss",
    "hapo_token_terms": "token_terms",
    "hhat_from_stats": "entropy",
    "loss_normalizer": "aggregation",
    "nearest_rank_index": "quantile",
    "nearest_rank_quantile": "quantile",
    "normalize_entropy": "entropy",
    "overlong_penalty": "reward_shaping",
    "policy_loss_metrics": "registry",
    "redistribute_advantage": "token_terms",
    "reduce_metrics": "metric_reduction",
    "register_advantage": "registry",
    "register_policy_loss": "registry",
    "rollout_mismatch": "tis",
    "temperature_from_entropy": "temperature",
    "token_entropy": "temperature",
    "fused_token_entropy": "temperature",
    "fused_sampler_temperatures": "temperature",
    "sampler_temperatures": "temperature",
    "entropy_kernel": "temperature",
    "token_level_group_average": "advantages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # The first exported name asked for loads every submodule, as an eager package would: the estimators and
    # losses register themselves on import, so a registry lookup finds them all.
    for module in sorted(set(_EXPORTS.values())):
        loaded = importlib.import_module(f"{__name__}.{module}")
        globals().update({n: getattr(loaded, n) for n, m in _EXPORTS.items() if m == module})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
