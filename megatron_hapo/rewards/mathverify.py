"""Math-Verify, wrapped: timeouts within a call's deadline, timeouts told apart from wrong answers,
parsed golds cached, and the library's logger quietened.

math-verify's own timeouts use SIGALRM, so these functions must run in a process's main thread (the
ScorerPool workers do). ``math_verify`` is imported on first use: the trainer process that only routes
requests never pays for sympy.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from megatron_hapo.rewards.types import Deadline

_GOLD_CACHE_SIZE = 4096
_gold_cache: OrderedDict[str, list[Any]] = OrderedDict()


def quiet_math_verify() -> None:
    """math-verify logs the whole input at WARNING on every timeout: keep only errors."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _check_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "math-verify's timeouts use SIGALRM, which only works in a process's main thread; "
            "score from the main thread or through megatron_hapo.rewards.ScorerPool"
        )


@dataclass(frozen=True)
class Verdict:
    """Outcome of comparing an answer with a gold answer.

    correct: math-verify judged them equal. pred: the extracted answer text (None if nothing parsed).
    timed_out: some step ran out of time (parse or compare), or the deadline expired before a step.
    gold_parsed: False when the gold answer itself could not be parsed (a data problem).
    """

    correct: bool
    pred: str | None
    timed_out: bool
    gold_parsed: bool = True


def _pred_text(parsed: list[Any]) -> str | None:
    # parse() returns [sympy_expr, source_text] on success, [source_text] when only a string matched.
    if not parsed:
        return None
    text = parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0])
    return text


def _parse(text: str, targets: tuple, timeout: int) -> list[Any]:
    from math_verify import parse

    return parse(text, list(targets), parsing_timeout=timeout, raise_on_error=True)


def _parse_gold(gold_latex: str, deadline: Deadline) -> list[Any]:
    from math_verify import LatexExtractionConfig

    hit = _gold_cache.get(gold_latex)
    if hit is not None:
        _gold_cache.move_to_end(gold_latex)
        return hit
    parsed = _parse(gold_latex, (LatexExtractionConfig(),), deadline.step_timeout())
    _gold_cache[gold_latex] = parsed
    if len(_gold_cache) > _GOLD_CACHE_SIZE:
        _gold_cache.popitem(last=False)
    return parsed


GOLD_CHECK_TIMEOUT_S = 5
_PLAIN_NUMBER = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")  # parses for sure: no need to pay sympy (~5 ms a row)


def gold_problem(ground_truth: str) -> str | None:
    """Why Math-Verify cannot use ``ground_truth`` as a reference (None = it parses): checked when a
    dataset is loaded, so a gold that would score every answer 0 is a bad row, not a silent zero reward.
    Main thread only (SIGALRM); imports math-verify (sympy) on first use. Plain numbers (most golds) skip
    the parse; each other distinct gold costs one parse (cached)."""
    if _PLAIN_NUMBER.match(ground_truth):
        return None
    from math_verify.errors import TimeoutException

    _check_main_thread()
    quiet_math_verify()
    try:
        parsed = _parse_gold(
            f"\\boxed{{{ground_truth}}}", Deadline(GOLD_CHECK_TIMEOUT_S, GOLD_CHECK_TIMEOUT_S)
        )
    except TimeoutException:
        return f"Math-Verify could not parse the ground truth {ground_truth[:80]!r} within {GOLD_CHECK_TIMEOUT_S} s"
    except Exception as e:
        return f"Math-Verify cannot parse the ground truth {ground_truth[:80]!r} ({type(e).__name__})"
    if not parsed:
        return f"Math-Verify cannot parse the ground truth {ground_truth[:80]!r} as a math answer"
    return None


def verify_answer(
    gold_latex: str, answer: str, deadline: Deadline, *, answer_targets: str = "expr+latex"
) -> Verdict:
    """Compare ``answer`` with ``gold_latex`` (already wrapped, e.g. ``\\boxed{7}``) within ``deadline``.

    answer_targets: ``expr+latex`` extracts plain expressions and LaTeX (boxed first) from free text;
    ``latex`` only LaTeX (for an answer already wrapped in ``\\boxed{}``).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, verify
    from math_verify.errors import TimeoutException

    _check_main_thread()
    quiet_math_verify()
    if deadline.expired:
        return Verdict(False, None, True)
    try:
        gold = _parse_gold(gold_latex, deadline)
    except TimeoutException:
        return Verdict(False, None, True)
    except Exception:
        gold = []
    if not gold:
        return Verdict(False, None, False, gold_parsed=False)

    targets = (
        (LatexExtractionConfig(),)
        if answer_targets == "latex"
        else (ExprExtractionConfig(), LatexExtractionConfig())
    )
    if deadline.expired:
        return Verdict(False, None, True)
    try:
        pred = _parse(answer, targets, deadline.step_timeout())
    except TimeoutException:
        return Verdict(False, None, True)
    except Exception:  # unparsable answer: a wrong answer, not an error
        return Verdict(False, None, False)
    pred_text = _pred_text(pred)
    timed_out = False
    for g in gold:
        for p in pred:
            if deadline.expired:
                return Verdict(False, pred_text, True)
            try:
                if verify(g, p, timeout_seconds=deadline.step_timeout(), raise_on_error=True):
                    return Verdict(True, pred_text, False)
            except TimeoutException:
                timed_out = True  # this pair ran out of time; another pair may still match
            except Exception:
                continue
    return Verdict(False, pred_text, timed_out)
