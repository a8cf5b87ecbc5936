"""A scorer that rewards every response differently, so that a random policy's first update is never zero (its
advantages are not all 0). Imported by the scoring workers via ``reward.extra_modules``."""

from __future__ import annotations

from megatron_hapo.rewards import make_score, register_scorer


@register_scorer("test_digit_share")
def digit_share_score(response, ground_truth, *, deadline, extra):
    """The share of the response's characters that are digits, in [0, 1]."""
    share = sum(c.isdigit() for c in response) / max(len(response), 1)
    return make_score(share, share > 0.5, f"{share:.2f} digits")
