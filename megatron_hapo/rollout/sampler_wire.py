"""The HAPO sampler plugin's wire format: the one definition both sides use.

The client (the rollout engines, through ``GenerationParams.to_sglang``) encodes an
:class:`~megatron_hapo.rollout.types.AdaptiveTemperature` into a request's ``sampling_params
["custom_params"]``; the plugin (``sglang_ext.params``) decodes it with :func:`decode_request`, and the
sampler reports per generated token under :data:`TEMPERATURE_KEY` and :data:`ENTROPY_KEY`, which
:func:`decode_outputs` reads back from ``meta_info``. No other client-side code knows these keys.

Request layout, one namespaced flat dict::

    {"hapo": {"enabled": True, "tau": 0.05,
              "pivot": m, "sigma": s, "pos_scale": s_pos, "neg_scale": s_neg}}   # the 4 stats: all or none

Flat on purpose: SGLang carries ``custom_params`` across its msgpack IPC typed as
``Dict[str, scalar | list[scalar] | dict[str, scalar]]``, so nothing deeper survives. ``"enabled": False``
(or no ``"hapo"`` key) means the row is sampled exactly as stock SGLang samples it.

Imports neither torch nor SGLang.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from megatron_hapo.config.errors import HapoError
from megatron_hapo.rollout.types import STATS_FIELDS, AdaptiveTemperature

PARAMS_KEY = "hapo"  # the key of custom_params
TEMPERATURE_KEY = (
    "hapo_temperature"  # meta_info: T_t per generated token (aligned with output_token_logprobs)
)
ENTROPY_KEY = "hapo_entropy"  # meta_info: H_t = entropy of softmax(z_t) at T = 1, per generated token
_KNOWN_KEYS = frozenset({"enabled", "tau", *STATS_FIELDS})


class HapoParamsError(ValueError):
    """A request's ``custom_params["hapo"]`` is malformed."""


class HapoSamplerMissingError(HapoError, RuntimeError):
    """A response that should carry HAPO outputs does not: the HAPO sampler is not active on that server."""


def encode_request(adaptive: AdaptiveTemperature) -> dict[str, Any]:
    """The ``custom_params`` of a request sampled with ``adaptive`` (JSON- and msgpack-safe)."""
    inner: dict[str, Any] = {"enabled": True, "tau": adaptive.tau}
    if adaptive.stats is not None:
        inner.update(zip(STATS_FIELDS, adaptive.stats, strict=True))
    return {PARAMS_KEY: inner}


def decode_request(custom_params: Mapping[str, Any] | None) -> AdaptiveTemperature | None:
    """A request's adaptive temperature, or None when it does not ask for one (stock sampling).

    Raises :class:`HapoParamsError` naming the offending key (``AdaptiveTemperature`` checks the values).
    """
    if not custom_params or PARAMS_KEY not in custom_params:
        return None
    where = f'custom_params["{PARAMS_KEY}"]'
    raw = custom_params[PARAMS_KEY]
    if not isinstance(raw, Mapping):
        raise HapoParamsError(f"{where} must be a dict, got {type(raw).__name__}")
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise HapoParamsError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(_KNOWN_KEYS)}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise HapoParamsError(f'{where}["enabled"] must be a bool, got {enabled!r}')
    present = [f for f in STATS_FIELDS if raw.get(f) is not None]
    if present and len(present) != len(STATS_FIELDS):
        missing = [f for f in STATS_FIELDS if f not in present]
        raise HapoParamsError(f"{where} has statistics {present} but not {missing}: send all four or none")
    kwargs = {"tau": raw["tau"]} if "tau" in raw else {}
    try:
        adaptive = AdaptiveTemperature(stats=tuple(raw[f] for f in present) or None, **kwargs)
    except ValueError as exc:
        raise HapoParamsError(f"{where}: {exc}") from exc
    return adaptive if enabled else None


def decode_outputs(meta_info: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """``(temperatures, entropies)`` of one response, one per generated token.

    Raises :class:`HapoSamplerMissingError` when the keys are absent (the server runs the stock sampler:
    plugin not installed, or ``--sampling-backend``/``HAPO_SGLANG_SAMPLER`` not set) and ``ValueError``
    when their lengths differ from ``output_token_logprobs``.
    """
    if TEMPERATURE_KEY not in meta_info or ENTROPY_KEY not in meta_info:
        raise HapoSamplerMissingError(
            f"response meta_info has no {TEMPERATURE_KEY!r}/{ENTROPY_KEY!r}: the SGLang server is not running "
            "the HAPO sampler. Install megatron-hapo into the server's environment (entry point "
            "sglang.srt.plugins:hapo_adaptive_temperature) and start it with HAPO_SGLANG_SAMPLER=1 or "
            "--sampling-backend hapo."
        )
    temps, ents = meta_info[TEMPERATURE_KEY], meta_info[ENTROPY_KEY]
    n = len(meta_info.get("output_token_logprobs") or temps)
    if len(temps) != n or len(ents) != n:
        raise ValueError(
            f"HAPO outputs misaligned: {len(temps)} temperatures, {len(ents)} entropies, {n} tokens"
        )
    return [float(t) for t in temps], [float(h) for h in ents]
