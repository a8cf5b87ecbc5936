"""The result of scoring one answer, and the budget a scorer works within."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, TypedDict


class Score(TypedDict):
    """One scored answer.

    score: the reward (DAPO scorer: +1/-1; Math-Verify scorer: 1/0; overlong shaping may lower it later).
    acc: whether the answer is judged correct (what dynamic sampling and avg@k use; never shaped).
    pred: the extracted answer as text, None when nothing could be extracted.
    timed_out: the scorer ran out of time (math-verify's timeout, the per-call deadline, or a killed
        worker): counted separately from wrong answers; score is the scorer's failure value then.
    error: None, or why scoring failed (a scorer exception or a crashed worker), also counted separately.
    """

    score: float
    acc: bool
    pred: str | None
    timed_out: bool
    error: str | None


def make_score(
    score: float, acc: bool, pred: str | None, timed_out: bool = False, error: str | None = None
) -> Score:
    return Score(score=float(score), acc=bool(acc), pred=pred, timed_out=bool(timed_out), error=error)


@dataclass
class Deadline:
    """The time budget of one scoring call, measured from the start of its work (not from queue entry).

    budget_s: total seconds the call may take; verify_timeout_s: math-verify's own per-step timeout
    (SIGALRM, whole seconds). ``step_timeout()`` gives the timeout for the next math-verify step so that
    the whole call ends by the deadline; ``expired`` says a step should not even start.
    """

    budget_s: float
    verify_timeout_s: int = 1
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def step_timeout(self) -> int:
        # SIGALRM has whole-second granularity; never less than 1 (0 would disable the timeout).
        return max(1, min(self.verify_timeout_s, math.ceil(self.remaining())))


@dataclass(frozen=True)
class ScoreRequest:
    """One answer to score: which dataset it is from (routes the scorer), the response text, the
    reference answer, per-row extra info (the dataset's ``extra_info``), and optionally a scorer name
    that overrides the routing for this answer."""

    data_source: str
    response: str
    ground_truth: str
    extra: dict[str, Any] = field(default_factory=dict)
    scorer: str | None = None
