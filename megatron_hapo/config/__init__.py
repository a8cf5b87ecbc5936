"""Typed configuration: schema dataclasses, YAML loading with ``defaults:`` inheritance, interpolation
and ``key.sub=value`` overrides, cross-field validation, and the key reference.

Entry points::

    cfg = load_config("examples/configs/cpu_demo.yaml", ["trainer.total_steps=3"], world_size=1)
    save_resolved(cfg, cfg.trainer.run_dir)      # rank 0 prints + writes resolved_config.yaml
    print(help_config())                         # every key, its default and meaning

See docs/config.md for the guide and the full key reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from megatron_hapo.config.environment import EnvProbe
from megatron_hapo.config.errors import ConfigError, ConfigIssue, HapoError
from megatron_hapo.config.loader import LoadedConfig, compose, to_yaml
from megatron_hapo.config.record import RESOLVED_NAME, save_resolved
from megatron_hapo.config.reference import help_config, render_markdown
from megatron_hapo.config.schema import (
    AlgorithmConfig,
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    EvalConfig,
    HapoLossConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    OverlongConfig,
    ParallelConfig,
    PrecisionConfig,
    RewardConfig,
    RolloutConfig,
    RootConfig,
    SamplingConfig,
    SamplingParams,
    TrainerConfig,
)
from megatron_hapo.config.validate import collect_issues, data_parallel_size, validate

__all__ = [
    "RESOLVED_NAME",
    "AlgorithmConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "ConfigError",
    "ConfigIssue",
    "DataConfig",
    "EnvProbe",
    "EvalConfig",
    "HapoError",
    "LoadedConfig",
    "LoggingConfig",
    "HapoLossConfig",
    "ModelConfig",
    "OptimConfig",
    "OverlongConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "RewardConfig",
    "RolloutConfig",
    "RootConfig",
    "SamplingConfig",
    "SamplingParams",
    "TrainerConfig",
    "collect_issues",
    "data_parallel_size",
    "help_config",
    "load_config",
    "load_with_origins",
    "render_markdown",
    "save_resolved",
    "to_yaml",
    "validate",
]


def load_with_origins(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    world_size: int | None = None,
    *,
    check_env: bool = True,
    probe: EnvProbe | None = None,
) -> LoadedConfig:
    """Like :func:`load_config`, also returning where each value was set (files, overrides)."""
    loaded = compose(path, overrides)
    validate(loaded.cfg, world_size=world_size, origins=loaded.origins, check_env=check_env, probe=probe)
    return loaded


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    world_size: int | None = None,
    *,
    check_env: bool = True,
    probe: EnvProbe | None = None,
) -> RootConfig:
    """Load, type-check and validate a config.

    path: the YAML file (its ``defaults:`` parents are merged first); None = schema defaults only.
    overrides: ``key.sub=value`` strings applied last, in order (values parsed as YAML).
    world_size: the launcher's world size; None = cluster.nodes x cluster.gpus_per_node (dry run).
    check_env: also check the machine and file system (FP8 needs TE + GPU, paths exist, the model's
        config.json fits the layout). Turn off to validate a cluster config on a laptop.
    Raises ConfigError naming every bad key and the file or override that set it.
    """
    return load_with_origins(path, overrides, world_size, check_env=check_env, probe=probe).cfg
