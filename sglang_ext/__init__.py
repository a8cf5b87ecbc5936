"""SGLang plugin: the entropy-adaptive temperature sampler of HAPO (docs/sampler.md).

Installed with megatron-hapo and discovered by SGLang through the ``sglang.srt.plugins`` entry point
``hapo_adaptive_temperature = sglang_ext:register``; SGLang calls :func:`register` in every process it
starts (server, engine, schedulers). Enable it per server with ``HAPO_SGLANG_SAMPLER=1`` or
``--sampling-backend hapo``, then per request with :func:`hapo_sampling_params`.

This module stays import-light: SGLang is imported only inside :func:`register`, so clients (the
trainer's rollout code) can build request parameters without importing SGLang.
"""

from sglang_ext.params import (
    ENTROPY_KEY,
    PARAMS_KEY,
    TEMPERATURE_KEY,
    HapoParamsError,
    HapoSamplerMissingError,
    hapo_sampling_params,
    require_hapo_outputs,
)
from sglang_ext.plugin import BACKEND_NAME, ENV_VAR, register  # plugin.py imports SGLang only when called

__all__ = [
    "BACKEND_NAME",
    "ENTROPY_KEY",
    "ENV_VAR",
    "PARAMS_KEY",
    "TEMPERATURE_KEY",
    "HapoParamsError",
    "HapoSamplerMissingError",
    "hapo_sampling_params",
    "register",
    "require_hapo_outputs",
]
