"""Imperfect scratchpads for the SFT warm-up of the demo policy (``megatron_hapo.demo.task``).

The warm-up imitates a weak reasoner so that RL has something to fix: it starts well above zero but far
from solved. Each trace is the reference solution with three kinds of noise, drawn independently:

- **skipped steps**: with probability ``skip`` a line adds two terms at once (``46+57+21=124``); the sum
  shown is right, but a small model that learns to write such lines cannot compute them reliably;
- **arithmetic errors**: with probability ``error`` a line's result is off by a small amount
  (+-1, +-2, +-10); the error propagates to the later lines and the answer;
- **missing answer line**: with probability ``no_answer`` the trace stops after the last line, so the
  DAPO scorer finds no ``Answer:`` (reward -1 even when the arithmetic is right).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from megatron_hapo.demo.task import render

ERROR_DELTAS = (-10, -2, -1, 1, 2, 10)


@dataclass(frozen=True)
class TraceNoise:
    """Probabilities of the three kinds of noise (per line for ``skip`` / ``error``, per trace for
    ``no_answer``); each in [0, 1]."""

    skip: float = 0.0
    error: float = 0.0
    no_answer: float = 0.0

    def __post_init__(self) -> None:
        for name in ("skip", "error", "no_answer"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"TraceNoise.{name} must be a probability in [0, 1], got {p}")


def noisy_solution(terms: list[int], noise: TraceNoise, rng: random.Random) -> str:
    """A scratchpad for ``terms`` with ``noise`` applied (see the module docstring); ``noise=TraceNoise()``
    gives the reference solution."""
    if len(terms) < 2:
        raise ValueError(f"a sum needs at least 2 terms, got {terms}")
    steps: list[tuple[list[int], int]] = []
    shown = terms[0]  # the running total as written (errors included)
    i = 1
    while i < len(terms):
        take = 2 if i + 1 < len(terms) and rng.random() < noise.skip else 1
        added = terms[i : i + take]
        result = shown + sum(added)
        if rng.random() < noise.error:
            result = max(0, result + rng.choice(ERROR_DELTAS))
        steps.append(([shown, *added], result))
        shown = result
        i += take
    answer = None if rng.random() < noise.no_answer else shown
    return render(steps, answer)
