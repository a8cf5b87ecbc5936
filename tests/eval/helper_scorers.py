"""A deterministic test scorer with mixed outcomes on a random model's text, so that avg@k / pass@k
are non-trivial. Registered on import; the pool's workers import it via ``extra_modules``."""

from __future__ import annotations

from megatron_hapo.rewards import make_score, register_scorer

SOURCE = "eval_checksum"


def checksum_correct(response: str) -> bool:
    """ "Correct" when the sum of the response's code points is even (about half of random texts)."""
    return sum(map(ord, response)) % 2 == 0


@register_scorer("eval_checksum", match=lambda source: source.startswith(SOURCE), fail_score=-1.0)
def checksum_score(response, ground_truth, *, deadline, extra):
    ok = checksum_correct(response)
    # The shaped-reward-like score is deliberately not 0/1, so that using it as accuracy would show.
    return make_score(1.0 if ok else -1.0, ok, str(sum(map(ord, response)) % 2))
