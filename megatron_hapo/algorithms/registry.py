"""Name -> function registries, so a new advantage estimator or policy loss is one decorated function.

    @register_advantage("my_estimator", options=lambda algo: {"norm_by_std": algo.norm_adv_by_std})
    def my_estimator(rewards, mask, group_ids, norm_by_std=True): ...      # -> advantages [batch, seq]

    @register_policy_loss("my_loss", metrics=MetricReductions({"pg_loss": UPDATE_SUM, "n_tokens": SUM, ...}))
    def my_loss(log_prob, old_log_prob, advantages, entropy, mask, config, **kwargs): ...  # -> (loss, metrics)

``metrics`` maps names to 0-d tensors (left on the device: the trainer copies them to the host once per update)
or plain numbers.

A policy loss declares how each of its metrics combines over micro-batches, DP ranks and updates
(:mod:`.metric_reduction`); the trainer reduces them with ``policy_loss_metrics(name)``. Config files select
them by name (``algorithm.adv_estimator`` -> ``bind_advantage``, ``algorithm.policy_loss`` -> ``get_policy_loss``). ``options`` maps the
``algorithm`` config section (read by attribute: this module never imports the config) to the function's
keyword arguments, so the trainer calls every estimator the same way: ``bind_advantage(name, algo)(...)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from megatron_hapo.algorithms.metric_reduction import MetricReductions

F = TypeVar("F", bound=Callable)


class Registry:
    """A named collection of functions; registering a different function under a taken name raises."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, Callable] = {}
        self._options: dict[str, Callable[[Any], dict[str, Any]]] = {}
        self._meta: dict[str, Any] = {}

    def register(
        self,
        name: str,
        *aliases: str,
        options: Callable[[Any], dict[str, Any]] | None = None,
        meta: Any = None,
    ) -> Callable[[F], F]:
        """``options``: config section -> the function's keyword arguments; ``meta``: what the registry's
        users need to know about the function besides calling it (a policy loss's metric reductions)."""

        def decorator(fn: F) -> F:
            for key in (name, *aliases):
                existing = self._fns.get(key)
                if existing is not None and existing is not fn:
                    raise ValueError(
                        f"{self.kind} {key!r} is already registered to {existing.__module__}.{existing.__qualname__}; "
                        "pick another name"
                    )
                self._fns[key] = fn
                self._options[key] = options or (lambda section: {})
                self._meta[key] = meta
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        try:
            return self._fns[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._fns)}") from None

    def bind(self, name: str, section: Any) -> Callable:
        """``name``'s function with its keyword arguments taken from the config ``section``."""
        fn = self.get(name)
        return functools.partial(fn, **self._options[name](section))

    def meta(self, name: str) -> Any:
        """What ``name`` was registered with as ``meta``."""
        self.get(name)  # the unknown-name error
        return self._meta[name]

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: str) -> bool:
        return name in self._fns


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")


def register_advantage(
    name: str, *aliases: str, options: Callable[[Any], dict[str, Any]] | None = None
) -> Callable[[F], F]:
    """Decorator: register ``fn(rewards[B], mask[B,T], group_ids[B], **kwargs) -> advantages[B,T]``;
    ``options(algorithm_config) -> kwargs`` says which config keys it reads."""
    return ADVANTAGE_ESTIMATORS.register(name, *aliases, options=options)


def register_policy_loss(name: str, *aliases: str, metrics: MetricReductions) -> Callable[[F], F]:
    """Decorator: register ``fn(log_prob, old_log_prob, advantages, entropy, mask, config, **kw) -> (loss,
    metrics)`` with ``metrics``, how each metric it returns combines into a step's value."""
    if not isinstance(metrics, MetricReductions):
        raise TypeError(
            f"register_policy_loss({name!r}): metrics must be a MetricReductions (how each metric combines over "
            f"micro-batches and updates), got {type(metrics).__name__}"
        )
    return POLICY_LOSSES.register(name, *aliases, meta=metrics)


def get_advantage(name: str) -> Callable:
    return ADVANTAGE_ESTIMATORS.get(name)


def bind_advantage(name: str, algorithm_config: Any) -> Callable:
    """The estimator ``name`` with its options read from ``algorithm_config``: ``(rewards, mask, group_ids)``."""
    return ADVANTAGE_ESTIMATORS.bind(name, algorithm_config)


def get_policy_loss(name: str) -> Callable:
    return POLICY_LOSSES.get(name)


def policy_loss_metrics(name: str) -> MetricReductions:
    """How the metrics of the policy loss ``name`` combine (declared when it registered)."""
    return POLICY_LOSSES.meta(name)
