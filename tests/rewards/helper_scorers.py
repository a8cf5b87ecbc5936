"""Misbehaving scorers for the pool tests. Imported by the pool's workers via ``extra_modules``."""

from __future__ import annotations

import os
import time

from megatron_hapo.rewards import make_score, register_scorer


@register_scorer("test_sleep", fail_score=-1.0)
def sleep_score(response, ground_truth, *, deadline, extra):
    """Ignores its deadline: only the parent's kill can stop it."""
    time.sleep(float(extra.get("seconds", 60)))
    return make_score(1.0, True, "slept")


@register_scorer("test_crash")
def crash_score(response, ground_truth, *, deadline, extra):
    os._exit(3)  # the worker dies mid-answer


@register_scorer("test_raise")
def raise_score(response, ground_truth, *, deadline, extra):
    raise ZeroDivisionError("boom")


@register_scorer("test_malformed")
def malformed_score(response, ground_truth, *, deadline, extra):
    return 1.0  # not a Score dict


@register_scorer("test_echo", match=lambda source: source.startswith("echo"))
def echo_score(response, ground_truth, *, deadline, extra):
    return make_score(float(response == ground_truth), response == ground_truth, response)
