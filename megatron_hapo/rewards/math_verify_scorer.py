"""The Math-Verify scorer: 1 if the response's answer (``\\boxed{}`` first, else the last expression)
equals the ground truth under Math-Verify, else 0. Registered as ``math_verify``, the default for every
``data_source`` no other scorer claims (docs/hapo_spec.md §7).
"""

from __future__ import annotations

from typing import Any

from megatron_hapo.rewards.mathverify import gold_problem, verify_answer
from megatron_hapo.rewards.registry import DEFAULT_SCORER, register_scorer
from megatron_hapo.rewards.types import Deadline, Score, make_score


@register_scorer(DEFAULT_SCORER, fail_score=0.0, check_ground_truth=gold_problem)
def math_verify_score(
    response: str, ground_truth: str, *, deadline: Deadline, extra: dict[str, Any]
) -> Score:
    """1/0 correctness of ``response`` against ``ground_truth`` (wrapped in ``\\boxed{}`` for parsing)."""
    verdict = verify_answer(f"\\boxed{{{ground_truth}}}", response, deadline)
    if not verdict.gold_parsed:
        return make_score(
            0.0, False, None, error=f"ground truth {str(ground_truth)[:80]!r} could not be parsed"
        )
    return make_score(
        1.0 if verdict.correct else 0.0, verdict.correct, verdict.pred, timed_out=verdict.timed_out
    )
