"""Name -> function registries, so a new advantage estimator or policy loss is one decorated function.

    @register_advantage("my_estimator", options=lambda algo: {"norm_by_std": algo.norm_adv_by_std})
    def my_estimator(rewards, mask, group_ids, norm_by_std=True): ...      # -> advantages [batch, seq]

    @register_policy_loss("my_loss")
    def my_loss(log_prob, old_log_prob, advantages, entropy, mask, config, **kwargs): ...  # -> (loss, metrics)

Config files select them by name (``get_advantage(name)``, ``get_policy_loss(name)``). ``options`` maps the
``algorithm`` config section (read by attribute: this module never imports the config) to the function's
keyword arguments, so the trainer calls every estimator the same way: ``bind_advantage(name, algo)(...)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable)


class Registry:
    """A named collection of functions; registering a different function under a taken name raises."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, Callable] = {}
        self._options: dict[str, Callable[[Any], dict[str, Any]]] = {}

    def register(
        self, name: str, *aliases: str, options: Callable[[Any], dict[str, Any]] | None = None
    ) -> Callable[[F], F]:
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


def register_policy_loss(name: str, *aliases: str) -> Callable[[F], F]:
    """Decorator: register ``fn(log_prob, old_log_prob, advantages, entropy, mask, config, **kw) -> (loss, metrics)``."""
    return POLICY_LOSSES.register(name, *aliases)


def get_advantage(name: str) -> Callable:
    return ADVANTAGE_ESTIMATORS.get(name)


def bind_advantage(name: str, algorithm_config: Any) -> Callable:
    """The estimator ``name`` with its options read from ``algorithm_config``: ``(rewards, mask, group_ids)``."""
    return ADVANTAGE_ESTIMATORS.bind(name, algorithm_config)


def get_policy_loss(name: str) -> Callable:
    return POLICY_LOSSES.get(name)
