"""Scorers by name, and the rule that routes a ``data_source`` to one.

Routing rule (HAPO's, ``reward_score/__init__.py`` of the reference code, kept explicit here):
  1. ``reward.scorer`` other than ``auto`` forces that scorer for every row;
  2. otherwise the most recently registered scorer whose ``match(data_source)`` is true wins;
     the built-in ``dapo`` scorer matches ``"math_dapo" in data_source``;
  3. otherwise ``math_verify`` (HAPO sends every other source, benchmarks included, to Math-Verify 0/1).

A scorer is ``fn(response, ground_truth, *, deadline, extra) -> Score``. Scorers run inside the worker
processes of ``ScorerPool``, so one registered by user code must live in a module the workers import
(``reward.extra_modules``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from megatron_hapo.rewards.types import Deadline, Score

DEFAULT_SCORER = "math_verify"
AUTO = "auto"


class ScorerFn(Protocol):
    def __call__(
        self, response: str, ground_truth: str, *, deadline: Deadline, extra: dict[str, Any]
    ) -> Score: ...


@dataclass(frozen=True)
class ScorerEntry:
    """A registered scorer. fail_score: the reward it gives a wrong answer (used for timeouts/errors too).
    check_ground_truth: ``fn(ground_truth) -> reason | None``, why a reference answer can never be matched
    (datasets treat such a row as bad); None = the scorer accepts any non-empty ground truth."""

    name: str
    fn: ScorerFn
    match: Callable[[str], bool] | None
    fail_score: float
    check_ground_truth: Callable[[str], str | None] | None = None


_REGISTRY: dict[str, ScorerEntry] = {}


def register_scorer(
    name: str,
    *,
    match: Callable[[str], bool] | None = None,
    fail_score: float = 0.0,
    check_ground_truth: Callable[[str], str | None] | None = None,
) -> Callable[[ScorerFn], ScorerFn]:
    """Decorator registering ``fn`` as scorer ``name``; ``match`` claims data sources for ``auto`` routing;
    ``check_ground_truth`` (optional) says why a ground truth cannot be scored (see ``ScorerEntry``).

    Re-registering a name replaces it (and moves it to the front of the routing order).
    """

    def deco(fn: ScorerFn) -> ScorerFn:
        _REGISTRY.pop(name, None)
        _REGISTRY[name] = ScorerEntry(
            name=name, fn=fn, match=match, fail_score=float(fail_score), check_ground_truth=check_ground_truth
        )
        return fn

    return deco


def get_scorer(name: str) -> ScorerEntry:
    """The scorer registered as ``name``; KeyError naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"no reward scorer named {name!r} (reward.scorer); registered: {sorted(_REGISTRY)}. "
            "Custom scorers must be registered in a module listed in reward.extra_modules"
        ) from None


def resolve_scorer(data_source: str, scorer: str = AUTO) -> ScorerEntry:
    """The scorer for a row from ``data_source`` under ``scorer`` (``auto`` or a name); see the module rule."""
    if scorer != AUTO:
        return get_scorer(scorer)
    for entry in reversed(_REGISTRY.values()):
        if entry.match is not None and entry.match(data_source):
            return entry
    return get_scorer(DEFAULT_SCORER)


def ground_truth_problem(data_source: str, ground_truth: str, scorer: str = AUTO) -> str | None:
    """Why the scorer a row routes to could never match ``ground_truth`` (None = it could).

    Empty or whitespace-only ground truths are refused for every scorer; the routed scorer's own
    ``check_ground_truth`` (DAPO: normalises to nothing; Math-Verify: does not parse) runs after that.
    """
    if not str(ground_truth).strip():
        return f"ground truth is empty ({str(ground_truth)!r}): nothing can be scored against it"
    if scorer != AUTO and scorer not in _REGISTRY:
        # a custom scorer registered only in the pool's workers (reward.extra_modules): the pool names an
        # unknown scorer loudly when it starts; its own ground-truth rule cannot run in this process
        return None
    entry = resolve_scorer(data_source, scorer)
    if entry.check_ground_truth is None:
        return None
    return entry.check_ground_truth(str(ground_truth))


def registered() -> list[str]:
    return list(_REGISTRY)


def extra_module_problem(name: str) -> str | None:
    """Why a module of ``reward.extra_modules`` / ``--reward-extra-modules`` (imported by every scorer worker to
    register custom scorers) cannot be imported here, or None. Found without importing it
    (``importlib.util.find_spec``, which imports its parent packages only)."""
    import importlib.util

    try:
        if importlib.util.find_spec(name) is not None:
            return None
        why = ""
    except Exception as e:  # a parent package that is missing or fails to import, or a malformed name
        why = f" ({type(e).__name__}: {e})"
    return f"module {name!r} cannot be found on this Python's path{why}"
