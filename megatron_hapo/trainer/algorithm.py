"""Config -> the advantage estimator (the policy loss is the policy's: ``trainer/policy.py``).

``algorithm.name`` is a label; the switches below it decide what runs. The presets that turn the base (HAPO)
recipe into DAPO or GRPO are YAML files (``megatron_hapo/config/presets/``, ``hapo-train --preset dapo``).
"""

from __future__ import annotations

import torch

from megatron_hapo.algorithms import bind_advantage
from megatron_hapo.config import RootConfig


def compute_advantages(
    cfg: RootConfig, rewards: torch.Tensor, mask: torch.Tensor, group_ids: list[int]
) -> torch.Tensor:
    """Advantages [B, T] (0 at padding) with the configured estimator over the whole step's groups."""
    return bind_advantage(cfg.algorithm.adv_estimator, cfg.algorithm)(rewards, mask, group_ids)
