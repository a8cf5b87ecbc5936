"""DAPO's overlong reward shaping (docs/hapo_spec.md §7): a linear penalty over the last ``buffer_len`` tokens
before the response limit.

    penalty(L) = min(-(L - (L_max - B)) / B * f, 0)

0 for L <= L_max - B, falling linearly to -f at L = L_max. It lowers ``score`` only; ``acc`` stays the
verifier's verdict (dynamic sampling filters on acc, never on the shaped score).
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_hapo.rewards.types import Score


def overlong_penalty(length: int, max_length: int, buffer_len: int, penalty_factor: float = 1.0) -> float:
    """The (non-positive) penalty for a response of ``length`` tokens; see the module docstring."""
    if buffer_len <= 0 or buffer_len > max_length:
        raise ValueError(f"buffer_len must be in [1, max_length={max_length}], got {buffer_len}")
    expected = max_length - buffer_len
    return min(-(length - expected) / buffer_len * penalty_factor, 0.0)


def apply_overlong(
    scores: Sequence[Score],
    lengths: Sequence[int],
    max_length: int,
    buffer_len: int,
    penalty_factor: float = 1.0,
) -> list[Score]:
    """New Score dicts with ``score`` lowered by the overlong penalty and the penalty under ``overlong_penalty``.

    lengths: response lengths in tokens, one per score.
    """
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores but {len(lengths)} lengths")
    out = []
    for s, n in zip(scores, lengths, strict=True):
        pen = overlong_penalty(int(n), max_length, buffer_len, penalty_factor)
        out.append({**s, "score": s["score"] + pen, "overlong_penalty": pen})
    return out  # type: ignore[return-value]
