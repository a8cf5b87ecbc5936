"""SGLang plugin: the entropy-adaptive temperature sampler of HAPO (docs/sampler.md).

Installed with megatron-hapo and discovered by SGLang through the ``sglang.srt.plugins`` entry point
``hapo_adaptive_temperature = sglang_ext:register``; SGLang calls :func:`register` in every process it
starts (server, engine, schedulers). Enable it per server with ``HAPO_SGLANG_SAMPLER=1`` or
``--sampling-backend hapo``. Requests opt in through ``custom_params`` in the wire format that
``megatron_hapo.rollout.sampler_wire`` defines (clients use that module, not this package).

This module stays import-light: SGLang is imported only inside :func:`register`.
"""

from sglang_ext.params import HapoParamsError
from sglang_ext.plugin import BACKEND_NAME, ENV_VAR, register  # plugin.py imports SGLang only when called

__all__ = ["BACKEND_NAME", "ENV_VAR", "HapoParamsError", "register"]
