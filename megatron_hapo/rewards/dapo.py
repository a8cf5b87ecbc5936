"""The DAPO math scorer with HAPO's Math-Verify fallback (docs/hapo_spec.md §7); registered as ``dapo`` and
routed every ``data_source`` containing ``"math_dapo"``.

1. Keep the last 300 characters of the response (the answer line is at the end; this also bounds the
   work an adversarial response can cause).
2. Take the last ``Answer: ...`` line, normalise it (Minerva), compare with the normalised ground truth:
   +1 if equal.
3. Otherwise, if an answer was found, ask Math-Verify whether ``\\boxed{pred}`` equals ``\\boxed{gt}``
   (HAPO's addition: "0.5" vs "\\frac{1}{2}"); +1 if so, else -1.

Returns score +1/-1, acc = score > 0, pred = the normalised answer (``[INVALID]`` when there is no line).
An answer that normalises to the empty string is wrong (-1), whatever the ground truth.
"""

from __future__ import annotations

from typing import Any

from megatron_hapo.rewards.mathverify import verify_answer
from megatron_hapo.rewards.minerva import INVALID, extract_answer_line, normalize_final_answer
from megatron_hapo.rewards.registry import register_scorer
from megatron_hapo.rewards.types import Deadline, Score, make_score

TAIL_CHARS = 300
CORRECT, WRONG = 1.0, -1.0


def _is_dapo_source(data_source: str) -> bool:
    return "math_dapo" in data_source


def dapo_ground_truth_problem(ground_truth: str) -> str | None:
    """Why ``ground_truth`` cannot be scored by :func:`dapo_score` (None = it can): the scorer compares
    normalised strings, so a ground truth that normalises to nothing (empty, "dollars", "$ $") matches
    no answer a policy could be trained towards."""
    if not normalize_final_answer(str(ground_truth)):
        return (
            f"ground truth {str(ground_truth)[:80]!r} is empty after the DAPO scorer's normalisation "
            "(units and filler words are removed), so no answer could match it"
        )
    return None


@register_scorer(
    "dapo", match=_is_dapo_source, fail_score=WRONG, check_ground_truth=dapo_ground_truth_problem
)
def dapo_score(response: str, ground_truth: str, *, deadline: Deadline, extra: dict[str, Any]) -> Score:
    """Score ``response`` against ``ground_truth`` as described in the module docstring."""
    line = extract_answer_line(response[-TAIL_CHARS:])
    pred = normalize_final_answer(line) if line is not None else INVALID
    gold = normalize_final_answer(str(ground_truth))
    # An answer that normalises to nothing ("Answer: dollars") earns nothing, even against a ground truth
    # that normalises to nothing too ("" == "" would otherwise be +1); datasets refuse such ground truths
    # (dapo_ground_truth_problem), this guards the scorer called directly.
    if pred == INVALID or not pred:
        return make_score(WRONG, False, pred)
    if pred == gold:
        return make_score(CORRECT, True, pred)
    # HAPO compares against the raw ground truth here, not the normalised string.
    verdict = verify_answer(
        f"\\boxed{{{ground_truth}}}", f"\\boxed{{{pred}}}", deadline, answer_targets="latex"
    )
    if verdict.correct:
        return make_score(CORRECT, True, pred)
    return make_score(WRONG, False, pred, timed_out=verdict.timed_out)
