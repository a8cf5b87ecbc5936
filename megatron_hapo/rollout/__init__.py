"""Rollout engines: SGLang in-process (colocated) behind one small protocol.

Names are exported lazily (PEP 562): the SGLang plugin and the config validation import
``megatron_hapo.rollout.sampler_wire`` / ``.types`` without loading the engines (and torch).
"""

from __future__ import annotations

import importlib
from typing import Any

# exported name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "AdaptiveTemperature": "types",
    "EngineError": "types",
    "GenerationParams": "types",
    "InProcessSGLangEngine": "inprocess",
    "RolloutCancelled": "types",
    "RolloutEngine": "types",
    "RolloutSample": "types",
    "cpu_server_args": "inprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
