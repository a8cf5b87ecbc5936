"""Rewards: verifiers routed by ``data_source``, scored in a process pool with per-answer deadlines,
and overlong shaping.

* ``compute_score(data_source, response, ground_truth, **extra)`` scores one answer in this process
  (main thread only: math-verify's timeouts use SIGALRM) and returns a :class:`Score` dict with keys
  ``score``, ``acc``, ``pred``, ``timed_out`` (and ``error``).
* ``ScorerPool(...).score([ScoreRequest, ...])`` scores many in worker processes; nothing can hang it.
  Training uses this one.
* Routing (``registry``): ``"math_dapo" in data_source`` -> the DAPO scorer (+1/-1 on the last
  "Answer:" line, Math-Verify fallback); any other source -> Math-Verify (1/0); ``register_scorer`` adds
  more.
* ``overlong_penalty`` / ``apply_overlong``: DAPO's length shaping of ``score`` (never of ``acc``).
"""

from __future__ import annotations

from typing import Any

# The built-in scorers register themselves on import (registry.py imports no scorer: no import cycle);
# the package imports them, so every process that reaches a scorer by name has them.
from megatron_hapo.rewards import dapo, math_verify_scorer  # noqa: F401
from megatron_hapo.rewards.overlong import apply_overlong, overlong_penalty
from megatron_hapo.rewards.pool import BatchScores, ScorerPool, run_scorer
from megatron_hapo.rewards.registry import (
    AUTO,
    DEFAULT_SCORER,
    ScorerEntry,
    extra_module_problem,
    get_scorer,
    ground_truth_problem,
    register_scorer,
    registered,
    resolve_scorer,
)
from megatron_hapo.rewards.types import Deadline, Score, ScoreRequest, make_score

__all__ = [
    "AUTO",
    "DEFAULT_SCORER",
    "BatchScores",
    "Deadline",
    "Score",
    "ScoreRequest",
    "ScorerEntry",
    "ScorerPool",
    "apply_overlong",
    "extra_module_problem",
    "compute_score",
    "get_scorer",
    "ground_truth_problem",
    "make_score",
    "overlong_penalty",
    "register_scorer",
    "registered",
    "resolve_scorer",
]


def compute_score(
    data_source: str,
    response: str,
    ground_truth: str,
    *,
    scorer: str = AUTO,
    timeout_s: float = 5.0,
    verify_timeout_s: int = 1,
    **extra: Any,
) -> Score:
    """Score one answer in this process; ``extra`` is the row's extra info, passed to the scorer.

    scorer: ``auto`` routes by ``data_source``; a name forces one. timeout_s: the call's deadline from
    now. Runs in the calling thread, which must be the main thread; for untrusted batches use
    :class:`ScorerPool`, whose workers can be killed (C code can outlast a signal).
    """
    entry = resolve_scorer(data_source, scorer)
    return run_scorer(
        entry.name, response, str(ground_truth), dict(extra), Deadline(timeout_s, verify_timeout_s)
    )
