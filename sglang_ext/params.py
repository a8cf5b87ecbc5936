"""The per-request HAPO sampling parameters: what a client sends, how the server reads it back.

A request opts in through ``sampling_params["custom_params"]``, under one namespaced key::

    {"hapo": {"enabled": True, "tau": 0.05,
              "pivot": m, "sigma": s, "pos_scale": s_pos, "neg_scale": s_neg}}   # the 4 stats: all or none

The inner dict is flat on purpose: SGLang carries ``custom_params`` across its msgpack IPC typed as
``Dict[str, scalar | list[scalar] | dict[str, scalar]]``, so nothing deeper than this survives.

Row semantics in the sampler (see ``sglang_ext.sampler``):

* no ``"hapo"`` key, or ``enabled`` false: the row is sampled exactly as stock SGLang samples it;
* enabled without statistics (step 1 of training, evaluation): the base temperature;
* enabled with statistics: ``T_t = temperature_from_entropy(H_t, T_base, stats, tau)``.

A server running the HAPO sampler reports ``hapo_temperature`` and ``hapo_entropy`` for every generated
token of every request (T_t = T_base where HAPO did not apply).

This module imports torch lazily and never imports SGLang, so clients can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PARAMS_KEY = "hapo"
STATS_FIELDS = ("pivot", "sigma", "pos_scale", "neg_scale")  # EntropyStats field order
_KNOWN_KEYS = frozenset({"enabled", "tau", *STATS_FIELDS})
DEFAULT_TAU = 0.05

# meta_info keys of the per-token outputs (one entry per generated token, aligned with output_token_logprobs)
TEMPERATURE_KEY = "hapo_temperature"
ENTROPY_KEY = "hapo_entropy"


class HapoParamsError(ValueError):
    """A request's ``custom_params["hapo"]`` is malformed."""


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


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HapoParamsError(
            f'custom_params["{PARAMS_KEY}"]["{name}"] must be a finite number, got {value!r}'
        )
    return float(value)


def _check_tau(tau: float) -> float:
    # T = T_base * (1 + tau * h) with h in [-1, 1]: tau >= 1 could give T <= 0.
    if not 0.0 <= tau < 1.0:
        raise HapoParamsError(f'custom_params["{PARAMS_KEY}"]["tau"] must be in [0, 1), got {tau!r}')
    return tau


def parse_row(custom_params: Mapping[str, Any] | None) -> RowParams:
    """Parse one request's ``custom_params``; raise :class:`HapoParamsError` with the offending key."""
    if not custom_params or PARAMS_KEY not in custom_params:
        return DISABLED
    raw = custom_params[PARAMS_KEY]
    if not isinstance(raw, Mapping):
        raise HapoParamsError(f'custom_params["{PARAMS_KEY}"] must be a dict, got {type(raw).__name__}')
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise HapoParamsError(
            f'custom_params["{PARAMS_KEY}"] has unknown keys {sorted(unknown)}; allowed: {sorted(_KNOWN_KEYS)}'
        )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise HapoParamsError(f'custom_params["{PARAMS_KEY}"]["enabled"] must be a bool, got {enabled!r}')
    tau = _check_tau(_finite("tau", raw.get("tau", DEFAULT_TAU)))
    present = [f for f in STATS_FIELDS if raw.get(f) is not None]
    if present and len(present) != len(STATS_FIELDS):
        missing = [f for f in STATS_FIELDS if f not in present]
        raise HapoParamsError(
            f'custom_params["{PARAMS_KEY}"] has statistics {present} but not {missing}: send all four or none'
        )
    stats = tuple(_finite(f, raw[f]) for f in STATS_FIELDS) if present else None
    if stats is not None and stats[1] <= 0.0:
        raise HapoParamsError(f'custom_params["{PARAMS_KEY}"]["sigma"] must be > 0, got {stats[1]!r}')
    return RowParams(enabled=enabled, tau=tau, stats=stats)


def hapo_sampling_params(stats=None, tau: float = DEFAULT_TAU, enabled: bool = True) -> dict:
    """The ``custom_params`` a client puts into a request's sampling params.

    ``stats`` is a ``megatron_hapo.algorithms.EntropyStats`` (the trainer's statistics of the current
    step) or None (no statistics yet: the request samples at its base temperature). Example::

        sampling_params = {"temperature": 1.0, "custom_params": hapo_sampling_params(stats, tau=0.05)}
    """
    out: dict[str, Any] = {"enabled": bool(enabled), "tau": _check_tau(_finite("tau", tau))}
    if stats is not None:
        values = stats.to_dict() if hasattr(stats, "to_dict") else dict(zip(STATS_FIELDS, stats, strict=True))
        for name in STATS_FIELDS:
            out[name] = _finite(name, float(values[name]))  # float(): a 0-d tensor or numpy scalar is fine
    parse_row({PARAMS_KEY: out})  # the same validation the server applies
    return {PARAMS_KEY: out}


class HapoSamplerMissingError(RuntimeError):
    """A response that should carry HAPO outputs does not: the HAPO sampler is not active on that server."""


def require_hapo_outputs(meta_info: Mapping[str, Any]) -> tuple[list, list]:
    """Return ``(temperatures, entropies)`` of one response, checking they align with the log-probs.

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
    return temps, ents
