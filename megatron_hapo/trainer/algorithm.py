"""Config -> algorithm pieces: the loss settings, the advantage estimator, and the presets of hapo/dapo/grpo.

``algorithm.name`` is a label; the switches below it decide what runs. ``PRESETS`` are the override lists
that turn the base (HAPO) recipe into DAPO or GRPO (`hapo-train --config base.yaml --preset dapo`).
"""

from __future__ import annotations

import dataclasses

import torch

from megatron_hapo.algorithms import HapoLossConfig, bind_advantage
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


def compute_advantages(
    cfg: RootConfig, rewards: torch.Tensor, mask: torch.Tensor, group_ids: list[int]
) -> torch.Tensor:
    """Advantages [B, T] (0 at padding) with the configured estimator over the whole step's groups."""
    return bind_advantage(cfg.algorithm.adv_estimator, cfg.algorithm)(rewards, mask, group_ids)
