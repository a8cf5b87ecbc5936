"""Rollout engines: SGLang in-process (colocated) behind one small protocol."""

from megatron_hapo.rollout.inprocess import InProcessSGLangEngine, cpu_server_args
from megatron_hapo.rollout.types import EngineError, GenerationParams, RolloutEngine, RolloutSample

__all__ = [
    "EngineError",
    "GenerationParams",
    "InProcessSGLangEngine",
    "RolloutEngine",
    "RolloutSample",
    "cpu_server_args",
]
