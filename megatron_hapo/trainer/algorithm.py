"""Config -> algorithm pieces: the loss settings, the advantage estimator, and the presets of hapo/dapo/grpo.

``algorithm.name`` is a label; the switches below it decide what runs. ``PRESETS`` are the override lists
that turn the base (HAPO) recipe into DAPO or GRPO (`hapo-train --config base.yaml --preset dapo`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from megatron_hapo.algorithms import HapoLossConfig, get_advantage
from megatron_hapo.config import RootConfig

PRESETS: dict[str, list[str]] = {
    "hapo": ["algorithm.name=hapo"],
    "dapo": [
        "algorithm.name=dapo",
        "algorithm.adv_estimator=grpo",
        "algorithm.adaptive_temperature.enable=false",
        "algorithm.dynamic_sampling.enable=true",
        "algorithm.loss.adaptive_clip=false",
        "algorithm.loss.adaptive_advantage=false",
        "algorithm.loss.clip_low=0.2",
        "algorithm.loss.clip_high=0.28",
    ],
    "grpo": [
        "algorithm.name=grpo",
        "algorithm.adv_estimator=grpo",
        "algorithm.adaptive_temperature.enable=false",
        "algorithm.dynamic_sampling.enable=false",
        "algorithm.loss.adaptive_clip=false",
        "algorithm.loss.adaptive_advantage=false",
    ],
}


def loss_config(cfg: RootConfig) -> HapoLossConfig:
    """``algorithm.loss`` as the loss's own dataclass (same fields by construction)."""
    return HapoLossConfig(**dataclasses.asdict(cfg.algorithm.loss))


def needs_entropy_stats(cfg: RootConfig) -> bool:
    """Whether the step must compute global entropy statistics (the sampler or the loss uses them)."""
    return cfg.algorithm.adaptive_temperature.enable or loss_config(cfg).uses_entropy


def compute_advantages(
    cfg: RootConfig, rewards: torch.Tensor, mask: torch.Tensor, group_ids: list[int]
) -> torch.Tensor:
    """Advantages [B, T] (0 at padding) with the configured estimator over the whole step's groups."""
    algo = cfg.algorithm
    estimator = get_advantage(algo.adv_estimator)
    if algo.adv_estimator == "tlga":
        threshold = algo.tlga_fallback_threshold
        return estimator(
            rewards,
            mask,
            group_ids,
            fallback_threshold=math.inf if threshold is None else threshold,
            fallback_counts_padding=algo.tlga_fallback_counts_padding,
            norm_by_std=algo.norm_adv_by_std,
        )
    return estimator(rewards, mask, group_ids, norm_by_std=algo.norm_adv_by_std)
