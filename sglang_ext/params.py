"""The plugin's side of the per-request HAPO parameters: one request's ``custom_params`` -> :class:`RowParams`.

The wire format (keys, layout, the per-token output keys) is defined once, in
``megatron_hapo.rollout.sampler_wire``, which the rollout client encodes with; this module decodes with
the same code and adds what only the server needs (the request's ``sampling_seed``).

Row semantics in the sampler (see ``sglang_ext.sampler``):

* no ``"hapo"`` key, or ``enabled`` false: the row is sampled exactly as stock SGLang samples it;
* enabled without statistics (step 1 of training, evaluation): the base temperature;
* enabled with statistics: ``T_t = temperature_from_entropy(H_t, T_base, stats, tau)``.

A server running the HAPO sampler reports ``hapo_temperature`` and ``hapo_entropy`` for every generated
token of every request (T_t = T_base where HAPO did not apply).

Imports neither torch nor SGLang.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from megatron_hapo.rollout.sampler_wire import (  # noqa: F401 (re-exported for the plugin's modules)
    ENTROPY_KEY,
    PARAMS_KEY,
    TEMPERATURE_KEY,
    HapoParamsError,
    decode_request,
)
from megatron_hapo.rollout.types import DEFAULT_TAU


@dataclass(frozen=True)
class RowParams:
    """One request's parsed HAPO parameters. ``stats`` is ``(pivot, sigma, pos_scale, neg_scale)`` or None.

    ``seed`` is the request's standard SGLang ``sampling_seed``: the HAPO sampler honours it without
    SGLang's deterministic-inference mode (sampling then depends only on the seed, the token position and
    the logits; see ``sglang_ext.batch_state``).
    """

    enabled: bool = False
    tau: float = DEFAULT_TAU
    stats: tuple[float, float, float, float] | None = None
    seed: int | None = None


DISABLED = RowParams()


def parse_row(custom_params: Mapping[str, Any] | None) -> RowParams:
    """Parse one request's ``custom_params``; raise :class:`HapoParamsError` with the offending key."""
    adaptive = decode_request(custom_params)
    if adaptive is None:
        return DISABLED
    return RowParams(enabled=True, tau=adaptive.tau, stats=adaptive.stats)
